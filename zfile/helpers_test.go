package zfile

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
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

var words = []string{"overlaybd", "block", "layer", "the", "container", "image", "registry",
	"lazy", "fetch", "ext4", "inode", "zfile", "lsmt", "index", "of", "and", "a", "to"}

// sampleData returns n deterministic bytes that compress about 2.5x with LZ4 (4 KiB blocks):
// text-like lines drawn from a small set, with runs of random bytes between them.
func sampleData(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 42))
	lines := make([]string, 32)
	for i := range lines {
		var l bytes.Buffer
		for range 3 + r.IntN(10) {
			l.WriteString(words[r.IntN(len(words))])
			l.WriteByte(' ')
		}
		l.WriteByte('\n')
		lines[i] = l.String()
	}
	var b bytes.Buffer
	for b.Len() < n {
		if r.IntN(40) == 0 {
			for range 64 + r.IntN(256) {
				b.WriteByte(byte(r.Uint32()))
			}
			continue
		}
		b.WriteString(lines[r.IntN(len(lines))])
	}
	return b.Bytes()[:n]
}

func randomData(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// compress writes data as a ZFile through a plain io.Writer (header flags 0x13).
func compress(t testing.TB, data []byte, opts Options) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, err := NewWriter(&buf, opts)
	if err != nil {
		t.Fatalf("NewWriter(%+v): %v", opts, err)
	}
	if _, err := zw.Write(data); err != nil {
		t.Fatalf("Write: %v", err)
	}
	if err := zw.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if st := zw.Stats(); st.StoredBytes != buf.Len() || st.RawBytes != len(data) {
		t.Fatalf("Stats %+v for %d raw bytes, %d stored", st, len(data), buf.Len())
	}
	return buf.Bytes()
}

func open(t testing.TB, z []byte, opts ...OpenOption) *Reader {
	t.Helper()
	zr, err := Open(bytes.NewReader(z), int64(len(z)), opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return zr
}

// readAll reads the whole original content through ReadAt.
func readAll(t testing.TB, zr *Reader) []byte {
	t.Helper()
	got := make([]byte, zr.Size())
	n, err := zr.ReadAt(got, 0)
	if n != len(got) || (err != nil) {
		t.Fatalf("ReadAt whole file: n=%d of %d, err=%v", n, len(got), err)
	}
	return got
}
