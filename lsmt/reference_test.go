package lsmt

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const refDir = "../testdata/reference/lsmt"

// expectedRange is one line of A.expected.txt.
type expectedRange struct {
	off, n int64
	digest string
}

// loadExpected parses A.expected.txt: the virtual size and whole-disk digest,
// then the listed ranges.
func loadExpected(t testing.TB) (int64, string, []expectedRange) {
	t.Helper()
	f, err := os.Open(filepath.Join(refDir, "A.expected.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var vsize int64
	var whole string
	var ranges []expectedRange
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if line == 1 {
			if len(fields) != 3 {
				t.Fatalf("line 1: %q", sc.Text())
			}
			vsize = mustInt(t, fields[1])
			whole = fields[2]
			continue
		}
		if len(fields) != 4 {
			t.Fatalf("line %d: %q", line, sc.Text())
		}
		ranges = append(ranges, expectedRange{mustInt(t, fields[1]), mustInt(t, fields[2]), fields[3]})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(ranges) == 0 {
		t.Fatal("no ranges in A.expected.txt")
	}
	return vsize, whole, ranges
}

func mustInt(t testing.TB, s string) int64 {
	t.Helper()
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// checkScenarioA reads the whole disk and every listed range of scenario A through r.
func checkScenarioA(t *testing.T, r io.ReaderAt, vsize int64) {
	t.Helper()
	wantSize, whole, ranges := loadExpected(t)
	if vsize != wantSize {
		t.Fatalf("virtual size %d, want %d", vsize, wantSize)
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(r, 0, vsize)); err != nil {
		t.Fatalf("read whole disk: %v", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != whole {
		t.Fatalf("whole disk sha256 %s, want %s", got, whole)
	}
	for _, e := range ranges {
		buf := make([]byte, e.n)
		if n, err := r.ReadAt(buf, e.off); n != len(buf) || (err != nil && err != io.EOF) {
			t.Fatalf("ReadAt(%d, %d) = %d, %v", e.off, e.n, n, err)
		}
		sum := sha256.Sum256(buf)
		if got := hex.EncodeToString(sum[:]); got != e.digest {
			t.Errorf("range [%d, +%d): sha256 %s, want %s", e.off, e.n, got, e.digest)
		}
	}
}

func openRefFile(t *testing.T, name string) *File {
	t.Helper()
	osf, err := os.Open(filepath.Join(refDir, name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { osf.Close() })
	st, err := osf.Stat()
	if err != nil {
		t.Fatal(err)
	}
	f, err := Open(osf, st.Size(), WithName(name))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestReferenceCommitted(t *testing.T) {
	f := openRefFile(t, "A.commit.plain.lsmt")
	checkScenarioA(t, f, f.VirtualSize())
	h := f.Header()
	if h.Flags != FlagHeader|FlagDataFile|FlagSealed || h.UUID != "" || h.ParentUUID != "11111111-2222-3333-4444-555555555555" {
		t.Errorf("header = %+v", h)
	}
	if len(f.Segments()) != 11 {
		t.Errorf("%d segments, want 11", len(f.Segments()))
	}
}

// TestReferenceUnalignedReads reads odd byte ranges and compares them with
// whole-disk bytes, so byte-granular ReadAt is checked, not only sector reads.
func TestReferenceUnalignedReads(t *testing.T) {
	f := openRefFile(t, "A.commit.plain.lsmt")
	disk := make([]byte, f.VirtualSize())
	if _, err := f.ReadAt(disk, 0); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ off, n int64 }{{1, 1}, {60927, 1027}, {2167295, 3}, {1048063, 9000}, {67108860, 4}} {
		buf := make([]byte, c.n)
		if _, err := f.ReadAt(buf, c.off); err != nil {
			t.Fatalf("ReadAt(%d,%d): %v", c.off, c.n, err)
		}
		if string(buf) != string(disk[c.off:c.off+c.n]) {
			t.Errorf("ReadAt(%d,%d) differs from the whole-disk read", c.off, c.n)
		}
	}
	buf := make([]byte, 10)
	if n, err := f.ReadAt(buf, f.VirtualSize()-4); n != 4 || err != io.EOF {
		t.Errorf("read across the end = %d, %v; want 4, EOF", n, err)
	}
}
