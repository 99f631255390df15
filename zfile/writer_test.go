package zfile

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func TestWriterMatchesUpstreamLZ4(t *testing.T) {
	raw := readRef(t, "input-300007.bin")
	want := readRef(t, "input-300007.lz4.bs4k.zfile")
	for _, conc := range []int{1, 2, 5} {
		if got := compress(t, raw, Options{Concurrency: conc}); !bytes.Equal(got, want) {
			t.Fatalf("concurrency %d: %d bytes differ from overlaybd-zfile's %d", conc, len(got), len(want))
		}
	}
}

func TestWriterDeterministic(t *testing.T) {
	raw := sampleData(3<<20+5, 4)
	for _, opts := range []Options{{Algorithm: ZSTD}, {Algorithm: ZSTD, Level: 9, BlockSize: 65536}, {BlockSize: 16384}} {
		one := opts
		one.Concurrency = 1
		many := opts
		many.Concurrency = 7
		if !bytes.Equal(compress(t, raw, one), compress(t, raw, many)) {
			t.Fatalf("%+v: output depends on concurrency", opts)
		}
	}
}

func TestWriterSmallWrites(t *testing.T) {
	raw := sampleData(100000, 8)
	var buf bytes.Buffer
	zw, err := NewWriter(&buf, Options{Algorithm: ZSTD, BlockSize: 8192})
	if err != nil {
		t.Fatal(err)
	}
	for p := raw; len(p) > 0; {
		n := min(len(p), 1+len(p)%777)
		if _, err := zw.Write(p[:n]); err != nil {
			t.Fatal(err)
		}
		p = p[n:]
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), compress(t, raw, Options{Algorithm: ZSTD, BlockSize: 8192})) {
		t.Fatal("small writes give other bytes than one large write")
	}
	if _, err := zw.Write([]byte{1}); err == nil {
		t.Fatal("Write after Close succeeded")
	}
}

// compressToFile writes raw as a ZFile into a file after prefix bytes and returns the file's
// bytes.
func compressToFile(t *testing.T, raw, prefix []byte, opts Options) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "z")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(prefix); err != nil {
		t.Fatal(err)
	}
	zw, err := NewWriter(f, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := zw.Write(raw); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestWriterRewritesHeaderOfWriterAt(t *testing.T) {
	raw := sampleData(150000, 6)
	prefix := []byte("tar headers would go here")
	file := compressToFile(t, raw, prefix, Options{Algorithm: ZSTD, BlockSize: 16384})
	if !bytes.HasPrefix(file, prefix) {
		t.Fatal("the bytes before the ZFile were overwritten")
	}
	z := file[len(prefix):]
	plain := compress(t, raw, Options{Algorithm: ZSTD, BlockSize: 16384})
	if !bytes.Equal(z[structSize:], plain[structSize:]) {
		t.Fatal("body differs between the WriterAt and the plain Writer output")
	}
	zr := open(t, z)
	info := zr.Info()
	if info.HeaderFlags != 0x1B || !info.HeaderHasInfo || info.TrailerFlags != 0 {
		t.Fatalf("Info %+v: want header flags 0x1B with info", info)
	}
	if !bytes.Equal(readAll(t, zr), raw) {
		t.Fatal("content differs")
	}
	// The final header equals the trailer but for the flags and the digest.
	hdr, err := parseStructure(z[:structSize])
	if err != nil {
		t.Fatal(err)
	}
	tr, err := parseStructure(z[len(z)-structSize:])
	if err != nil {
		t.Fatal(err)
	}
	if tr.flags != 0x16 {
		t.Fatalf("trailer flags %#x, want 0x16", tr.flags)
	}
	hdr.flags = tr.flags
	if hdr != tr {
		t.Fatalf("header %+v and trailer %+v disagree", hdr, tr)
	}
	// A 0x1B header is used on its own: a damaged trailer does not matter.
	damaged := bytes.Clone(z)
	damaged[len(damaged)-structSize] ^= 0xff
	if !bytes.Equal(readAll(t, open(t, damaged)), raw) {
		t.Fatal("content differs with a damaged trailer")
	}
}

func TestWriterKeepsHeaderOnPipe(t *testing.T) {
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	got := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(pr)
		got <- b
	}()
	raw := sampleData(20000, 3)
	zw, err := NewWriter(pw, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := zw.Write(raw); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatalf("Close on a pipe: %v", err)
	}
	pw.Close()
	z := <-got
	zr := open(t, z)
	if zr.Info().HeaderFlags != 0x13 || !bytes.Equal(readAll(t, zr), raw) {
		t.Fatalf("pipe output: Info %+v", zr.Info())
	}
}

func TestWriterWarnsOnExpanded64K(t *testing.T) {
	var logs bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&logs, nil)))
	defer slog.SetDefault(old)

	raw := randomData(3*65536+100, 1)
	var buf bytes.Buffer
	zw, err := NewWriter(&buf, Options{BlockSize: 65536})
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(raw)
	if err := zw.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if st := zw.Stats(); st.Expanded64K != 3 || st.Blocks != 4 {
		t.Fatalf("Stats %+v: want 3 of 4 blocks expanded past 64 KiB", st)
	}
	if !strings.Contains(logs.String(), "upstream overlaybd cannot read") {
		t.Fatalf("no warning logged: %q", logs.String())
	}
	if !bytes.Equal(readAll(t, open(t, buf.Bytes())), raw) {
		t.Fatal("expanded file does not read back")
	}
	logs.Reset()
	compress(t, sampleData(200000, 1), Options{BlockSize: 65536})
	if logs.Len() != 0 {
		t.Fatalf("warning for a compressible file: %q", logs.String())
	}
}

func TestWriterOptionErrors(t *testing.T) {
	for _, opts := range []Options{{BlockSize: 1000}, {BlockSize: 131072}, {Algorithm: 9}, {Algorithm: ZSTD, Level: 23}, {Algorithm: ZSTD, Level: -1}} {
		if _, err := NewWriter(io.Discard, opts); err == nil {
			t.Errorf("NewWriter(%+v) succeeded", opts)
		}
	}
	for s, want := range map[string]Algorithm{"lz4": LZ4, "zstd": ZSTD} {
		if a, err := ParseAlgorithm(s); err != nil || a != want || a.String() != s {
			t.Errorf("ParseAlgorithm(%q) = %v, %v", s, a, err)
		}
	}
	if _, err := ParseAlgorithm("gzip"); err == nil {
		t.Error("ParseAlgorithm(gzip) succeeded")
	}
}

// failingWriter accepts limit bytes, then fails.
type failingWriter struct{ limit int }

var errDiskFull = errors.New("disk full")

func (f *failingWriter) Write(p []byte) (int, error) {
	if len(p) > f.limit {
		n := f.limit
		f.limit = 0
		return n, errDiskFull
	}
	f.limit -= len(p)
	return len(p), nil
}

func TestWriterReportsWriteErrors(t *testing.T) {
	if _, err := NewWriter(&failingWriter{limit: 10}, Options{}); !errors.Is(err, errDiskFull) {
		t.Fatalf("NewWriter on a failing writer: %v", err)
	}
	zw, err := NewWriter(&failingWriter{limit: 5000}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, werr := zw.Write(sampleData(3<<20, 1))
	cerr := zw.Close()
	if !errors.Is(werr, errDiskFull) || !errors.Is(cerr, errDiskFull) {
		t.Fatalf("Write error %v, Close error %v: want both to wrap the disk error", werr, cerr)
	}
}

// TestGolden pins the format: a small zstd ZFile with a final (0x1B) header must come out
// byte for byte as checked in. Run with -update after an intended format change.
func TestGolden(t *testing.T) {
	golden := filepath.Join("testdata", "golden-zstd-bs8k.zfile")
	raw := sampleData(40000, 11)
	got := compressToFile(t, raw, nil, Options{Algorithm: ZSTD, BlockSize: 8192, Concurrency: 3})
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("golden file: %v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("output (%d bytes) differs from %s (%d bytes)", len(got), golden, len(want))
	}
	if !bytes.Equal(readAll(t, open(t, want)), raw) {
		t.Fatal("golden file does not read back")
	}
}
