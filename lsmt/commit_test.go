package lsmt

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite lsmt/testdata golden files")

const goldenPath = "testdata/golden-small.lsmt"

// goldenLayer builds the small writable layer behind the golden file: data
// writes that merge at commit, an overwrite, a discard inside data and a
// discard of a hole.
func goldenLayer(t testing.TB) *Writable {
	t.Helper()
	w, err := Create(t.TempDir(), CreateOptions{VirtualSize: 1 << 20, ParentUUID: "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	pattern := func(n int, seed byte) []byte {
		p := make([]byte, n)
		for i := range p {
			p[i] = seed + byte(i/SectorSize) + byte(i%251)
		}
		return p
	}
	steps := []func() error{
		func() error { _, err := w.WriteAt(pattern(8192, 1), 0); return err },
		func() error { _, err := w.WriteAt(pattern(4096, 50), 8192); return err }, // contiguous: merges at commit
		func() error { _, err := w.WriteAt(pattern(1536, 90), 2560); return err }, // overwrite inside
		func() error { return w.Discard(5120, 1024) },
		func() error { return w.Discard(512<<10, 64<<10) }, // never written
		func() error { _, err := w.WriteAt(pattern(512, 200), 1<<20-512); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	return w
}

func TestCommitGolden(t *testing.T) {
	w := goldenLayer(t)
	var out bytes.Buffer
	if _, err := w.Commit(&out, CommitOptions{UUID: "C0FFEE00-1234-4567-89AB-CDEF01234567", Message: "obd golden"}); err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile(goldenPath, out.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(goldenPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), want) {
		t.Fatalf("commit differs from %s at byte %d (run with -update after checking why)", goldenPath, firstDiff(out.Bytes(), want))
	}
	f, err := Open(bytes.NewReader(want), int64(len(want)))
	if err != nil {
		t.Fatal(err)
	}
	assertSameDisk(t, f, w)
	h := f.Header()
	if h.UUID != "C0FFEE00-1234-4567-89AB-CDEF01234567" || h.ParentUUID != "0A1B2C3D-4E5F-6071-8293-A4B5C6D7E8F9" || h.Tag != "obd golden" {
		t.Errorf("header %+v", h)
	}
	// 0-16 KiB is one data run split by the zeroed discard; plus the zeroed
	// hole discard and the last sector.
	var zeroed, data int
	for _, s := range f.Segments() {
		if s.Zeroed {
			zeroed++
		} else {
			data++
		}
	}
	if zeroed != 2 || data != 3 {
		t.Errorf("segments %+v: want 3 data and 2 zeroed", f.Segments())
	}
}

// assertSameDisk compares two layers' whole virtual disks.
func assertSameDisk(t *testing.T, got, want Layer) {
	t.Helper()
	if got.VirtualSize() != want.VirtualSize() {
		t.Fatalf("virtual size %d, want %d", got.VirtualSize(), want.VirtualSize())
	}
	g := make([]byte, got.VirtualSize())
	w := make([]byte, want.VirtualSize())
	if _, err := got.ReadAt(g, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := want.ReadAt(w, 0); err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(g, w); i < len(g) {
		t.Fatalf("disks differ at byte %d", i)
	}
}

func TestCommitMergeLimit(t *testing.T) {
	// Contiguous writes of 8192, 100, 8000 and 100 sectors: greedy merging
	// stops before a record would reach MaxSegmentLength.
	w, err := Create(t.TempDir(), CreateOptions{VirtualSize: 32 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var off int64
	for _, sectors := range []int64{8192, 100, 8000, 100} {
		if _, err := w.WriteAt(bytes.Repeat([]byte{7}, int(sectors*SectorSize)), off); err != nil {
			t.Fatal(err)
		}
		off += sectors * SectorSize
	}
	index, dataSectors := compact(w.Segments())
	want := []Segment{{Offset: 0, Length: 16292, MOffset: 8}, {Offset: 16292, Length: 100, MOffset: 8 + 16292}}
	if len(index) != 2 || index[0] != want[0] || index[1] != want[1] || dataSectors != 16392 {
		t.Fatalf("compacted index %+v (%d data sectors), want %+v", index, dataSectors, want)
	}
}

func TestSeal(t *testing.T) {
	dir := t.TempDir()
	w, err := Create(dir, CreateOptions{VirtualSize: refVSize, UUID: refUUID, ParentUUID: refParent})
	if err != nil {
		t.Fatal(err)
	}
	applyOps(t, w)
	if err := w.Seal(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt(make([]byte, SectorSize), 0); !errors.Is(err, ErrReadOnly) {
		t.Errorf("write after seal: %v", err)
	}
	checkScenarioA(t, w, w.VirtualSize()) // still readable
	w.Close()
	if _, err := OpenWritable(dir); !errors.Is(err, ErrSealed) {
		t.Errorf("OpenWritable of a sealed layer: %v", err)
	}
	osf, err := os.Open(filepath.Join(dir, DataFileName))
	if err != nil {
		t.Fatal(err)
	}
	f := openFile(t, osf)
	checkScenarioA(t, f, f.VirtualSize())
	if h := f.Header(); h.Flags != FlagHeader|FlagDataFile || h.UUID != refUUID || h.IndexOffset != 245248 {
		t.Errorf("sealed header %+v", h)
	}
	// The sealed layer commits to the same bytes as upstream's commit.
	var out bytes.Buffer
	if _, err := Commit(f, &out, CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(filepath.Join(refDir, "A.commit.plain.lsmt"))
	if !bytes.Equal(out.Bytes(), want) {
		t.Errorf("commit of the sealed layer differs from A.commit.plain.lsmt at %d", firstDiff(out.Bytes(), want))
	}
}
