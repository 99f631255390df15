package lsmt

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	refUUID   = "0A1B2C3D-4E5F-6071-8293-A4B5C6D7E8F9"
	refParent = "11111111-2222-3333-4444-555555555555"
	refVSize  = 64 << 20
)

// copyFile copies src to dst (writable, unlike the read-only reference files).
func copyFile(t testing.TB, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// refWritableDir copies A.rw.data and A.rw.index into a fresh writable layer directory.
func refWritableDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	copyFile(t, filepath.Join(refDir, "A.rw.data"), filepath.Join(dir, DataFileName))
	copyFile(t, filepath.Join(refDir, "A.rw.index"), filepath.Join(dir, IndexFileName))
	return dir
}

func TestReferenceWritable(t *testing.T) {
	w, err := OpenWritable(refWritableDir(t))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	checkScenarioA(t, w, w.VirtualSize())
	if h := w.Header(); h.UUID != refUUID || h.ParentUUID != refParent {
		t.Errorf("header uuids %q %q", h.UUID, h.ParentUUID)
	}
}

// applyOps replays A.ops into w: W writes a chunk file, D discards.
func applyOps(t testing.TB, w interface {
	WriteAt([]byte, int64) (int, error)
	Discard(int64, int64) error
}) {
	t.Helper()
	f, err := os.Open(filepath.Join(refDir, "A.ops"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	ops := 0
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if len(fields) != 3 {
			t.Fatalf("A.ops line %q", sc.Text())
		}
		off := mustInt(t, fields[1])
		switch fields[0] {
		case "W":
			data, err := os.ReadFile(filepath.Join(refDir, fields[2]))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.WriteAt(data, off); err != nil {
				t.Fatalf("%s: %v", sc.Text(), err)
			}
		case "D":
			if err := w.Discard(off, mustInt(t, fields[2])); err != nil {
				t.Fatalf("%s: %v", sc.Text(), err)
			}
		default:
			t.Fatalf("A.ops line %q", sc.Text())
		}
		ops++
	}
	if ops != 12 {
		t.Fatalf("applied %d ops, want 12", ops)
	}
}

// TestReplayOpsMatchesUpstream applies A.ops to a fresh layer: its data and
// index logs must equal upstream's byte for byte, and so must its commit.
func TestReplayOpsMatchesUpstream(t *testing.T) {
	dir := t.TempDir()
	w, err := Create(dir, CreateOptions{VirtualSize: refVSize, UUID: refUUID, ParentUUID: refParent})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	applyOps(t, w)
	checkScenarioA(t, w, w.VirtualSize())
	for _, pair := range [][2]string{{DataFileName, "A.rw.data"}, {IndexFileName, "A.rw.index"}} {
		assertSameFile(t, filepath.Join(dir, pair[0]), filepath.Join(refDir, pair[1]))
	}
	var out bytes.Buffer
	st, err := w.Commit(&out, CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(filepath.Join(refDir, "A.commit.plain.lsmt"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), want) {
		t.Fatalf("commit differs from A.commit.plain.lsmt (%d vs %d bytes, first difference at %d)", out.Len(), len(want), firstDiff(out.Bytes(), want))
	}
	if st.Records != 11 || st.Size != int64(len(want)) || st.DataBytes != 408*SectorSize {
		t.Errorf("stats %+v", st)
	}
}

func assertSameFile(t *testing.T, got, want string) {
	t.Helper()
	g, err := os.ReadFile(got)
	if err != nil {
		t.Fatal(err)
	}
	w, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(g, w) {
		t.Errorf("%s differs from %s (%d vs %d bytes, first difference at %d)", got, want, len(g), len(w), firstDiff(g, w))
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestWritablePartialRecord reopens a layer whose index log ends with half a
// record, as after a crash mid-append; the next write must land cleanly.
func TestWritablePartialRecord(t *testing.T) {
	dir := refWritableDir(t)
	indexPath := filepath.Join(dir, IndexFileName)
	f, err := os.OpenFile(indexPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte{1, 2, 3, 4, 5, 6, 7}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	// The data log may end with a torn, unlogged write too.
	dataPath := filepath.Join(dir, DataFileName)
	if f, err = os.OpenFile(dataPath, os.O_APPEND|os.O_WRONLY, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	w, err := OpenWritable(dir)
	if err != nil {
		t.Fatal(err)
	}
	checkScenarioA(t, w, w.Size())
	sector := bytes.Repeat([]byte{0xAB}, SectorSize)
	if _, err := w.WriteAt(sector, 40<<20); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(indexPath); err != nil || (st.Size()-HeaderSize)%RecordSize != 0 {
		t.Fatalf("index log size after write: %v %v", st, err)
	}
	if st, err := os.Stat(dataPath); err != nil || st.Size()%SectorSize != 0 {
		t.Fatalf("data log size after write: %v %v (the new write must start sector aligned)", st, err)
	}
	w, err = OpenWritable(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	got := make([]byte, SectorSize)
	if _, err := w.ReadAt(got, 40<<20); err != nil || !bytes.Equal(got, sector) {
		t.Fatalf("sector written after recovery reads %x..., %v", got[:4], err)
	}
}

func TestWritableErrors(t *testing.T) {
	w, err := Create(t.TempDir(), CreateOptions{VirtualSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for _, c := range []struct {
		name string
		err  error
		want error
	}{
		{"unaligned offset", discardErr(w.WriteAt(make([]byte, 512), 100)), ErrUnaligned},
		{"unaligned length", discardErr(w.WriteAt(make([]byte, 100), 0)), ErrUnaligned},
		{"past the end", discardErr(w.WriteAt(make([]byte, 1024), 1<<20-512)), ErrRange},
		{"negative", w.Discard(-512, 512), ErrRange},
		{"discard unaligned", w.Discard(0, 1), ErrUnaligned},
	} {
		if !errors.Is(c.err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, c.err, c.want)
		}
	}
	if _, err := Create(t.TempDir(), CreateOptions{VirtualSize: 1000}); err == nil {
		t.Error("virtual size 1000 accepted")
	}
	if _, err := Create(t.TempDir(), CreateOptions{VirtualSize: 4096, UUID: "nope"}); err == nil {
		t.Error("bad UUID accepted")
	}
	if _, err := OpenWritable(t.TempDir()); err == nil {
		t.Error("empty directory opened")
	}
}

func discardErr(_ int, err error) error { return err }

// TestLargeWriteSplits checks that a write over 4 MiB becomes records of at
// most 4 MiB and reads back, also after reopening.
func TestLargeWriteSplits(t *testing.T) {
	dir := t.TempDir()
	w, err := Create(dir, CreateOptions{VirtualSize: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 9<<20+512)
	for i := range data {
		data[i] = byte(i * 7 / 512)
	}
	if _, err := w.WriteAt(data, 512); err != nil {
		t.Fatal(err)
	}
	segs := w.Segments()
	if len(segs) != 3 || segs[0].Length != maxRecordSectors || segs[2].Length != 2<<10+1 {
		t.Fatalf("segments %+v", segs)
	}
	w.Close()
	w, err = OpenWritable(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	got := make([]byte, len(data))
	if _, err := w.ReadAt(got, 512); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back after reopen: %v, equal %v", err, bytes.Equal(got, data))
	}
}

// TestReplayStopsAtFirstBadRecord: after a power loss the index log may end in records whose
// data never reached the data file (or in garbage). Opening keeps every record before the
// first bad one, drops it and the rest, and cuts the log there, so that later appends do
// not bring dropped records back to life at the next open.
func TestReplayStopsAtFirstBadRecord(t *testing.T) {
	dir := refWritableDir(t)
	path := filepath.Join(dir, IndexFileName)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	torn := make([]byte, 3*RecordSize)
	EncodeSegment(Segment{Offset: 8, Length: 8, MOffset: 1 << 40}, torn)                       // data never written
	EncodeSegment(Segment{Offset: 16, Length: 8, MOffset: HeaderSize / SectorSize}, torn[16:]) // valid, but after it
	if err := os.WriteFile(path, append(bytes.Clone(good), torn...), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := OpenWritable(dir)
	if err != nil {
		t.Fatalf("OpenWritable with a torn log: %v", err)
	}
	if n := w.DroppedRecords(); n != 3 {
		t.Errorf("DroppedRecords = %d, want 3", n)
	}
	checkScenarioA(t, w, w.VirtualSize())
	if _, err := w.WriteAt(bytes.Repeat([]byte{7}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(good)+RecordSize || !bytes.Equal(after[:len(good)], good) {
		t.Fatalf("index log of %d bytes after one write, want the %d good bytes and one record", len(after), len(good))
	}
	w, err = OpenWritable(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if n := w.DroppedRecords(); n != 0 {
		t.Errorf("DroppedRecords after the cut = %d, want 0", n)
	}
}
