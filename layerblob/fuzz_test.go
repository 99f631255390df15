package layerblob

import (
	"bytes"
	"io"
	"testing"

	"github.com/obdproject/obd/lsmt"
	"github.com/obdproject/obd/zfile"
)

// smallLayer is a committed layer of a 1 MiB disk with a few written ranges, wrapped as
// opts say: the shape of a registry blob, small enough to mutate quickly.
func smallLayer(t testing.TB, opts WriteOptions) []byte {
	t.Helper()
	w, err := lsmt.Create(t.TempDir(), lsmt.CreateOptions{VirtualSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for i, off := range []int64{0, 4096, 64 << 10, 1<<20 - 4096} {
		if _, err := w.WriteAt(bytes.Repeat([]byte{byte('a' + i)}, 4096), off); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Discard(8192, 4096); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	opts.TempDir = t.TempDir()
	err = Write(&out, opts, func(dst io.Writer) error {
		_, err := w.Commit(dst, lsmt.CommitOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// FuzzOpen feeds the composed opener (layer tar, ZFile and LSMT together, as bdd opens a
// registry blob) arbitrary bytes: it must refuse them with an error or open a layer whose
// reads return errors or bytes, never panic, and never allocate more than a bounded
// multiple of the blob's size.
func FuzzOpen(f *testing.F) {
	f.Add(smallLayer(f, WriteOptions{}))
	f.Add(smallLayer(f, WriteOptions{ZFile: &zfile.Options{Algorithm: zfile.LZ4}}))
	f.Add(smallLayer(f, WriteOptions{ZFile: &zfile.Options{Algorithm: zfile.ZSTD, BlockSize: 16 << 10}, Tar: true}))
	f.Add(claimingLayer(f, 1<<20))
	f.Fuzz(func(t *testing.T, blob []byte) {
		b, err := Inspect(bytes.NewReader(blob), int64(len(blob)), "fuzz")
		if err != nil {
			return
		}
		buf := make([]byte, 64<<10)
		for _, off := range []int64{0, b.VirtualSize() / 2, b.VirtualSize() - 1} {
			if off >= 0 {
				b.ReadAt(buf, off)
			}
		}
		for i, s := range b.Segments() {
			if i == 8 {
				break
			}
			b.ReadAt(buf[:min(len(buf), int(s.Length)*lsmt.SectorSize)], int64(s.Offset)*lsmt.SectorSize)
		}
		b.Verify(t.Context())
	})
}
