package lsmt

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// maxFuzzData bounds the live data a fuzz iteration copies, so hostile
// indexes pointing many records at the same bytes cannot make it slow.
const maxFuzzData = 16 << 20

// exerciseLayer reads l the ways a stack and a commit do and checks the index
// invariants; it returns the first problem found.
func exerciseLayer(l Layer) error {
	segs := l.Segments()
	var live uint64
	for i, s := range segs {
		if s.Length == 0 || (i > 0 && s.Offset < segs[i-1].End()) {
			return fmt.Errorf("segment %d %+v empty, unsorted or overlapping", i, s)
		}
		if !s.Zeroed {
			live += uint64(s.Length) * SectorSize
		}
	}
	buf := make([]byte, 64<<10)
	offsets := []int64{0, l.VirtualSize() - 1, l.VirtualSize() / 3}
	for i, s := range segs {
		if i < 16 {
			offsets = append(offsets, int64(s.Offset)*SectorSize-100)
		}
	}
	for _, off := range offsets {
		if off < 0 || off >= l.VirtualSize() {
			continue
		}
		if _, err := l.ReadAt(buf, off); err != nil && err != io.EOF {
			return fmt.Errorf("ReadAt(%d): %w", off, err)
		}
	}
	if live > maxFuzzData {
		return nil
	}
	var out bytes.Buffer
	if _, err := Commit(l, &out, CommitOptions{}); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	f, err := Open(bytes.NewReader(out.Bytes()), int64(out.Len()))
	if err != nil {
		return fmt.Errorf("open the commit: %w", err)
	}
	got := make([]byte, len(buf))
	for _, off := range offsets {
		if off < 0 || off >= l.VirtualSize() {
			continue
		}
		n1, _ := l.ReadAt(buf, off)
		n2, _ := f.ReadAt(got, off)
		if n1 != n2 || !bytes.Equal(buf[:n1], got[:n2]) {
			return fmt.Errorf("commit reads differently at %d", off)
		}
	}
	return nil
}

func FuzzOpen(f *testing.F) {
	for _, name := range []string{goldenPath, filepath.Join(refDir, "A.commit.plain.lsmt")} {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		l, err := Open(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("error without ErrFormat: %v", err)
			}
			return
		}
		if err := exerciseLayer(l); err != nil {
			t.Fatal(err)
		}
	})
}

func FuzzOpenWritableIndex(f *testing.F) {
	b, err := os.ReadFile(filepath.Join(refDir, "A.rw.index"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	dir := f.TempDir()
	copyFile(f, filepath.Join(refDir, "A.rw.data"), filepath.Join(dir, DataFileName))
	indexPath := filepath.Join(dir, IndexFileName)
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(indexPath, data, 0o644); err != nil {
			t.Fatal(err)
		}
		w, err := OpenWritable(dir)
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("error without ErrFormat: %v", err)
			}
			return
		}
		defer w.Close()
		if err := exerciseLayer(w); err != nil {
			t.Fatal(err)
		}
	})
}

// TestFuzzSeedCorpus keeps the seed corpora under testdata/fuzz in step with
// the files they are made from (rewritten with -update).
func TestFuzzSeedCorpus(t *testing.T) {
	w := goldenLayer(t)
	var small bytes.Buffer
	if _, err := w.Commit(&small, CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := w.Seal(); err != nil {
		t.Fatal(err)
	}
	sealed, err := os.ReadFile(filepath.Join(w.dir, DataFileName))
	if err != nil {
		t.Fatal(err)
	}
	indexLog, err := os.ReadFile(filepath.Join(w.dir, IndexFileName))
	if err != nil {
		t.Fatal(err)
	}
	seeds := map[string][]byte{
		"FuzzOpen/small-commit":                small.Bytes(),
		"FuzzOpen/sealed":                      sealed,
		"FuzzOpen/truncated":                   small.Bytes()[:small.Len()-HeaderSize/2],
		"FuzzOpenWritableIndex/small-log":      indexLog,
		"FuzzOpenWritableIndex/partial-record": append(bytes.Clone(indexLog), 1, 2, 3),
		"FuzzOpenWritableIndex/header-only":    indexLog[:HeaderSize],
	}
	for name, data := range seeds {
		path := filepath.Join("testdata/fuzz", name)
		want := []byte("go test fuzz v1\n[]byte(" + strconv.Quote(string(data)) + ")\n")
		if *update {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, want, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale; run the test with -update", path)
		}
	}
}
