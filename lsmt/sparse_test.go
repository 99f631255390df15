package lsmt

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestSparseScenarioA(t *testing.T) {
	dir := t.TempDir()
	w, err := Create(dir, CreateOptions{VirtualSize: refVSize, Sparse: true, UUID: refUUID, ParentUUID: refParent})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, IndexFileName)); !os.IsNotExist(err) {
		t.Errorf("sparse layer has an index file: %v", err)
	}
	applyOps(t, w)
	checkScenarioA(t, w, w.VirtualSize())
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if w, err = OpenWritable(dir); err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if !w.Sparse() || w.Header().Flags != FlagHeader|FlagDataFile|FlagSparse {
		t.Fatalf("reopened layer: sparse %v, flags %#x", w.Sparse(), w.Header().Flags)
	}
	checkScenarioA(t, w, w.VirtualSize())
	// Data extents come from the file: the 1 MiB never-written discard is a hole.
	for _, s := range w.Segments() {
		if s.Zeroed || s.MOffset != s.Offset+8 {
			t.Fatalf("sparse segment %+v: want data at its own LBA", s)
		}
		if s.Offset < 65536+2048 && s.End() > 65536 {
			t.Fatalf("segment %+v inside the discarded 1 MiB at sector 65536", s)
		}
	}
	var out bytes.Buffer
	if _, err := w.Commit(&out, CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	f, err := Open(bytes.NewReader(out.Bytes()), int64(out.Len()))
	if err != nil {
		t.Fatal(err)
	}
	checkScenarioA(t, f, f.VirtualSize())
	if err := w.Seal(); err == nil {
		t.Error("sealing a sparse layer succeeded")
	}
}

// TestSparseHoleFallsThrough documents the sparse mode's discard: a punched
// hole is a hole, so in a stack the lower layer shows through (as upstream).
func TestSparseHoleFallsThrough(t *testing.T) {
	s, w := stackWithNewUpper(t, buildLayers(t, 1), true) // lower: sectors 0 and 1 hold byte 1
	if _, err := s.WriteAt(bytes.Repeat([]byte{9}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, SectorSize)
	if _, err := s.ReadAt(got, 0); err != nil || got[0] != 9 {
		t.Fatalf("after write: %d, %v", got[0], err)
	}
	if err := s.Discard(0, 4096); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadAt(got, 0); err != nil || got[0] != 1 {
		t.Fatalf("after discard: sector 0 reads %d, %v; want the lower layer's 1", got[0], err)
	}
	if _, err := w.ReadAt(got, 0); err != nil || !isZero(got) {
		t.Fatalf("the upper alone reads %d, %v after discard; want zeros", got[0], err)
	}
}

// TestSparseSubBlockWrite checks that a write smaller than a file system
// block presents the same index before and after a reopen.
func TestSparseSubBlockWrite(t *testing.T) {
	dir := t.TempDir()
	w, err := Create(dir, CreateOptions{VirtualSize: 1 << 20, Sparse: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt(bytes.Repeat([]byte{5}, SectorSize), 9*SectorSize); err != nil {
		t.Fatal(err)
	}
	before := w.Segments()
	w.Close()
	if w, err = OpenWritable(dir); err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	after := w.Segments()
	if len(before) != 1 || len(after) != 1 || before[0] != after[0] || before[0].Offset > 9 || before[0].End() < 10 {
		t.Fatalf("segments before reopen %+v, after %+v", before, after)
	}
	got := make([]byte, 2*SectorSize)
	if _, err := w.ReadAt(got, 8*SectorSize); err != nil || !isZero(got[:SectorSize]) || got[SectorSize] != 5 {
		t.Fatalf("read back: %v %x %x", err, got[0], got[SectorSize])
	}
}
