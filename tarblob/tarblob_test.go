package tarblob

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/obdproject/obd/internal/facility"
	"github.com/obdproject/obd/zfile"
)

const refDir = "../testdata/reference/zfile"

func readRef(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(refDir, name))
	if err != nil {
		t.Fatalf("reference file: %v", err)
	}
	return b
}

func sectionBytes(t *testing.T, s *io.SectionReader) []byte {
	t.Helper()
	b, err := io.ReadAll(io.NewSectionReader(s, 0, s.Size()))
	if err != nil {
		t.Fatalf("read member: %v", err)
	}
	return b
}

func TestOpenReference(t *testing.T) {
	blob := readRef(t, "input-300007.lz4.bs4k.tar.zfile")
	want := readRef(t, "input-300007.lz4.bs4k.zfile")
	if !HasMagic(bytes.NewReader(blob)) {
		t.Fatal("HasMagic = false for the reference tar")
	}
	sec, err := Open(bytes.NewReader(blob), int64(len(blob)))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	_, off, _ := sec.Outer()
	if off != 1536 {
		t.Errorf("payload offset %d, want 1536", off)
	}
	if got := sectionBytes(t, sec); !bytes.Equal(got, want) {
		t.Fatalf("payload (%d bytes) differs from the plain ZFile (%d bytes)", len(got), len(want))
	}
	zr, err := zfile.Open(sec, sec.Size(), zfile.WithName("input-300007.lz4.bs4k.tar.zfile"))
	if err != nil {
		t.Fatalf("zfile.Open on the member: %v", err)
	}
	got := make([]byte, zr.Size())
	if _, err := zr.ReadAt(got, 0); err != nil || !bytes.Equal(got, readRef(t, "input-300007.bin")) {
		t.Fatalf("member's ZFile content differs from input-300007.bin (err %v)", err)
	}
}

func TestHasMagic(t *testing.T) {
	if HasMagic(bytes.NewReader(readRef(t, "input-300007.lz4.bs4k.zfile"))) {
		t.Error("HasMagic = true for a ZFile")
	}
	if HasMagic(bytes.NewReader(make([]byte, 100))) {
		t.Error("HasMagic = true for a short blob")
	}
}

func writeTar(t *testing.T, payload []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Write(&buf, bytes.NewReader(payload), int64(len(payload))); err != nil {
		t.Fatalf("Write: %v", err)
	}
	return buf.Bytes()
}

// randomBytes returns n bytes that differ per seed and do not repeat with period 512, so
// a payload at a wrong offset cannot match.
func randomBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(uint64(i)*(2*seed+1) + uint64(i)>>9 + seed)
	}
	return b
}

func TestWriteOpenRoundTrip(t *testing.T) {
	for _, n := range []int{0, 1, 511, 512, 513, 4096, 100003} {
		payload := randomBytes(n, uint64(n))
		blob := writeTar(t, payload)
		if len(blob)%blockSize != 0 {
			t.Fatalf("size %d: tar length %d not a multiple of 512", n, len(blob))
		}
		if !bytes.Equal(blob[len(blob)-1024:], make([]byte, 1024)) {
			t.Fatalf("size %d: tar does not end with two zero blocks", n)
		}
		sec, err := Open(bytes.NewReader(blob), int64(len(blob)))
		if err != nil {
			t.Fatalf("size %d: Open: %v", n, err)
		}
		if _, off, _ := sec.Outer(); off != 1536 {
			t.Errorf("size %d: payload at %d, want 1536", n, off)
		}
		if got := sectionBytes(t, sec); !bytes.Equal(got, payload) {
			t.Fatalf("size %d: payload differs after round trip", n)
		}
	}
}

func TestWriteMatchesUpstreamLayout(t *testing.T) {
	ref := readRef(t, "input-300007.lz4.bs4k.tar.zfile")
	payload := readRef(t, "input-300007.lz4.bs4k.zfile")
	blob := writeTar(t, payload)
	if len(blob) != len(ref) {
		t.Fatalf("tar length %d, upstream's %d", len(blob), len(ref))
	}
	// The PAX record and everything from the payload on are byte-identical to upstream's.
	if !bytes.Equal(blob[512:1024], ref[512:1024]) {
		t.Errorf("PAX record block differs: %q vs %q", blob[512:540], ref[512:540])
	}
	if !bytes.Equal(blob[1536:], ref[1536:]) {
		t.Error("payload, padding or end blocks differ from upstream's")
	}
}

func TestWriteShortPayload(t *testing.T) {
	err := Write(io.Discard, bytes.NewReader(make([]byte, 10)), 20)
	if err == nil || !errors.Is(err, io.EOF) {
		t.Fatalf("Write with a short payload: %v, want an EOF error", err)
	}
	if err := Write(io.Discard, bytes.NewReader(nil), -1); err == nil {
		t.Fatal("Write with a negative size succeeded")
	}
}

func TestArchiveTarAcceptsWrite(t *testing.T) {
	payload := randomBytes(70000, 7)
	tr := tar.NewReader(bytes.NewReader(writeTar(t, payload)))
	hdr, err := tr.Next()
	if err != nil {
		t.Fatalf("archive/tar Next: %v", err)
	}
	if hdr.Name != MemberName || hdr.Typeflag != tar.TypeReg || hdr.Size != int64(len(payload)) ||
		hdr.Mode&0o777 != 0o644 || hdr.Uid != 0 || hdr.Gid != 0 || hdr.Uname != "root" ||
		hdr.Gname != "root" || hdr.ModTime.Unix() != 0 {
		t.Errorf("archive/tar header %+v", hdr)
	}
	got, err := io.ReadAll(tr)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("archive/tar content: %v, equal=%v", err, bytes.Equal(got, payload))
	}
	if _, err := tr.Next(); err != io.EOF {
		t.Fatalf("archive/tar second Next: %v, want io.EOF", err)
	}
}

func TestGNUTarAcceptsWrite(t *testing.T) {
	tarBin, err := exec.LookPath("tar")
	if err != nil {
		facility.Missing(t, "GNU tar not installed: cannot cross-check the writer")
	}
	payload := randomBytes(12345, 9)
	path := filepath.Join(t.TempDir(), "layer.tar")
	if err := os.WriteFile(path, writeTar(t, payload), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(tarBin, "-tvf", path).CombinedOutput()
	if err != nil {
		t.Fatalf("tar -tvf: %v\n%s", err, out)
	}
	fields := strings.Fields(string(out))
	if len(fields) < 6 || fields[0] != "-rw-r--r--" || fields[1] != "root/root" ||
		fields[2] != "12345" || fields[len(fields)-1] != MemberName || strings.Count(string(out), "\n") != 1 {
		t.Errorf("tar -tvf listed %q", out)
	}
	content, err := exec.Command(tarBin, "-xOf", path, MemberName).Output()
	if err != nil || !bytes.Equal(content, payload) {
		t.Fatalf("tar -xOf: %v, content equal=%v", err, bytes.Equal(content, payload))
	}
}

// archiveTar builds a tar with archive/tar from the given headers; each regular entry gets
// Size bytes of content.
func archiveTar(t *testing.T, hdrs ...*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("WriteHeader: %v", err)
		}
		if h.Size > 0 {
			if _, err := tw.Write(randomBytes(int(h.Size), 3)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func reg(name string, size int64, format tar.Format) *tar.Header {
	return &tar.Header{Name: name, Typeflag: tar.TypeReg, Size: size, Mode: 0o644, Format: format}
}

func TestOpenAcceptsOtherValidTars(t *testing.T) {
	cases := map[string][]byte{
		"ustar":           archiveTar(t, reg(MemberName, 1000, tar.FormatUSTAR)),
		"gnu":             archiveTar(t, reg(MemberName, 1000, tar.FormatGNU)),
		"pax with xattr":  archiveTar(t, &tar.Header{Name: MemberName, Typeflag: tar.TypeReg, Size: 1000, PAXRecords: map[string]string{"SCHILY.xattr.user.a": "b"}, Format: tar.FormatPAX}),
		"dot slash":       archiveTar(t, reg("./"+MemberName, 1000, tar.FormatUSTAR)),
		"no end blocks":   archiveTar(t, reg(MemberName, 1000, tar.FormatUSTAR))[:1536],
		"one end block":   archiveTar(t, reg(MemberName, 1000, tar.FormatUSTAR))[:2048],
		"trailing extras": append(archiveTar(t, reg(MemberName, 1000, tar.FormatUSTAR)), randomBytes(700, 1)...),
	}
	for name, blob := range cases {
		sec, err := Open(bytes.NewReader(blob), int64(len(blob)))
		if err != nil {
			t.Errorf("%s: Open: %v", name, err)
			continue
		}
		if sec.Size() != 1000 || !bytes.Equal(sectionBytes(t, sec), randomBytes(1000, 3)) {
			t.Errorf("%s: wrong payload (size %d)", name, sec.Size())
		}
	}
}

func TestOpenRejectsHostileTars(t *testing.T) {
	good := writeTar(t, randomBytes(5000, 5))
	badChecksum := bytes.Clone(good)
	badChecksum[1024+10] ^= 1
	cases := map[string][]byte{
		"two members":      archiveTar(t, reg(MemberName, 10, tar.FormatUSTAR), reg("other", 10, tar.FormatUSTAR)),
		"member twice":     archiveTar(t, reg(MemberName, 10, tar.FormatUSTAR), reg(MemberName, 10, tar.FormatUSTAR)),
		"wrong name":       archiveTar(t, reg("overlaybd.commitx", 10, tar.FormatUSTAR)),
		"directory":        archiveTar(t, &tar.Header{Name: MemberName + "/", Typeflag: tar.TypeDir, Mode: 0o755}),
		"dir then member":  archiveTar(t, &tar.Header{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o755}, reg(MemberName, 10, tar.FormatUSTAR)),
		"symlink":          archiveTar(t, &tar.Header{Name: MemberName, Typeflag: tar.TypeSymlink, Linkname: "x"}),
		"empty archive":    archiveTar(t),
		"zero bytes":       nil,
		"bad checksum":     badChecksum,
		"size past end":    paxTar(10, "size", "999999"),
		"bad pax size":     paxTar(10, "size", "-5"),
		"garbage":          randomBytes(4096, 11),
		"sparse pax":       paxTar(10, "GNU.sparse.major", "1"),
		"pax renames":      paxTar(10, "path", "etc/passwd"),
		"truncated member": good[:1536+4000],
	}
	for i := 1; i < len(good)-1024; i += 97 {
		if i >= 1536 && i < 1536+5000 || i == 1536+5120 {
			continue
		}
		cases["truncated at "+strconv.Itoa(i)] = good[:i]
	}
	for name, blob := range cases {
		_, err := Open(bytes.NewReader(blob), int64(len(blob)))
		if !errors.Is(err, ErrNotLayerTar) {
			t.Errorf("%s: Open error %v, want ErrNotLayerTar", name, err)
		}
	}
}

// paxTar builds a layer tar whose PAX header holds the given record (key, value pairs),
// followed by the member with a payload of n bytes.
func paxTar(n int, kv ...string) []byte {
	var rec []byte
	for i := 0; i+1 < len(kv); i += 2 {
		rec = append(rec, paxRecord(kv[i], kv[i+1])...)
	}
	blob := newHeader(paxHeaderName, typePAX, 0o644, int64(len(rec)))
	blob = append(blob, pad(rec)...)
	blob = append(blob, newHeader(MemberName, typeRegular, 0o644, int64(n))...)
	blob = append(blob, pad(make([]byte, n))...)
	return append(blob, make([]byte, 2*blockSize)...)
}

// countingReaderAt records how many bytes are read through it.
type countingReaderAt struct {
	r     io.ReaderAt
	bytes atomic.Int64
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	c.bytes.Add(int64(len(p)))
	return c.r.ReadAt(p, off)
}

func TestOpenReadsOnlyHeaders(t *testing.T) {
	blob := writeTar(t, randomBytes(1<<20, 13))
	cr := &countingReaderAt{r: bytes.NewReader(blob)}
	if _, err := Open(cr, int64(len(blob))); err != nil {
		t.Fatal(err)
	}
	if n := cr.bytes.Load(); n > 4*blockSize {
		t.Fatalf("Open read %d bytes of a 1 MiB blob, want only header blocks", n)
	}
}

func TestOpenHonoursPAXRecords(t *testing.T) {
	blob := paxTar(700, "comment", "hello", "size", "600", "path", MemberName)
	sec, err := Open(bytes.NewReader(blob), int64(len(blob)))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if sec.Size() != 600 {
		t.Fatalf("member size %d, want the PAX size 600", sec.Size())
	}
	if got := paxRecord("size", "98269"); string(got) != "14 size=98269\n" {
		t.Errorf("paxRecord = %q", got)
	}
	if got := paxRecord("k", "12345"); string(got) != "11 k=12345\n" {
		t.Errorf("paxRecord with a length that gains a digit = %q", got)
	}
}

func TestOpenAcceptsGNUTarOutput(t *testing.T) {
	tarBin, err := exec.LookPath("tar")
	if err != nil {
		facility.Missing(t, "GNU tar not installed: cannot check tars it writes")
	}
	dir := t.TempDir()
	payload := randomBytes(70001, 4)
	if err := os.WriteFile(filepath.Join(dir, MemberName), payload, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"gnu", "posix", "ustar", "v7"} {
		path := filepath.Join(dir, format+".tar")
		if out, err := exec.Command(tarBin, "-C", dir, "--format="+format, "-cf", path, MemberName).CombinedOutput(); err != nil {
			t.Fatalf("tar --format=%s: %v\n%s", format, err, out)
		}
		blob, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		sec, err := Open(bytes.NewReader(blob), int64(len(blob)))
		if err != nil {
			t.Errorf("%s tar: Open: %v", format, err)
			continue
		}
		if !bytes.Equal(sectionBytes(t, sec), payload) {
			t.Errorf("%s tar: wrong payload", format)
		}
	}
}
