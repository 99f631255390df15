package lsmt_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/obdproject/obd/lsmt"
	"github.com/obdproject/obd/zfile"
)

// TestReferenceZFileCommit reads upstream's `overlaybd-commit -z` output: an
// LSMT committed file inside a ZFile (lz4, 4 KiB blocks), opened over the
// zfile.Reader as docs/DESIGN.md's read path composes them.
func TestReferenceZFileCommit(t *testing.T) {
	f, err := os.Open(filepath.Join(lsmt.RefDir, "A.commit.lz4-bs4k.zfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	zr, err := zfile.Open(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	l, err := lsmt.Open(zr, zr.Size(), lsmt.WithName("A.commit.lz4-bs4k.zfile"))
	if err != nil {
		t.Fatal(err)
	}
	lsmt.CheckScenarioA(t, l, l.VirtualSize())
	if h := l.Header(); h.UUID != "C0FFEE00-1234-4567-89AB-CDEF01234567" {
		t.Errorf("uuid %q", h.UUID)
	}
}

// TestCommitThroughZFileWriter commits the reference writable layer straight
// into a zfile.Writer and reads the result back through zfile and lsmt.
func TestCommitThroughZFileWriter(t *testing.T) {
	dir := lsmt.RefWritableDir(t)
	w, err := lsmt.OpenWritable(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	out, err := os.Create(filepath.Join(dir, "commit.zfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	zw, err := zfile.NewWriter(out, zfile.Options{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := w.Commit(zw, lsmt.CommitOptions{UUID: "C0FFEE00-1234-4567-89AB-CDEF01234567"})
	if err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	size, err := out.Seek(0, 2)
	if err != nil {
		t.Fatal(err)
	}
	zr, err := zfile.Open(out, size)
	if err != nil {
		t.Fatal(err)
	}
	if zr.Size() != st.Size {
		t.Fatalf("zfile holds %d bytes, commit wrote %d", zr.Size(), st.Size)
	}
	l, err := lsmt.Open(zr, zr.Size())
	if err != nil {
		t.Fatal(err)
	}
	lsmt.CheckScenarioA(t, l, l.VirtualSize())
}
