package bdd_test

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/obdproject/obd/layerblob"
	"github.com/obdproject/obd/lsmt"
	"github.com/obdproject/obd/zfile"
)

// splitChunk is the granularity at which an image is dealt out to layers.
const splitChunk = 64 << 10

// splitImage turns the disk image at img into n committed layers (bottom first)
// whose stack reads back as the image. Layer 0 holds every non-zero chunk, but the
// chunks that belong to a higher layer hold garbage there, so a stack that let a
// lower layer win would corrupt files. Each layer is written by lsmt and, when
// zopts is set, compressed by ZFile; tarred wraps it as a registry blob.
func splitImage(t testing.TB, img string, n int, zopts *zfile.Options, tarred bool) []string {
	t.Helper()
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(7, 11))
	garbage := make([]byte, splitChunk)
	var paths []string
	for level := range n {
		w, err := lsmt.Create(filepath.Join(dir, "w", string(rune('a'+level))), lsmt.CreateOptions{VirtualSize: int64(len(data))})
		if err != nil {
			t.Fatal(err)
		}
		for off := 0; off < len(data); off += splitChunk {
			chunk := data[off:min(off+splitChunk, len(data))]
			if isZero(chunk) {
				continue
			}
			owner := (off / splitChunk) % n
			var p []byte
			switch {
			case owner == level:
				p = chunk
			case level == 0:
				for i := range garbage {
					garbage[i] = byte(rng.Uint32())
				}
				p = garbage[:len(chunk)]
			default:
				continue
			}
			if _, err := w.WriteAt(p, int64(off)); err != nil {
				t.Fatal(err)
			}
		}
		path := filepath.Join(dir, "layer"+string(rune('0'+level)))
		out, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		err = layerblob.Write(out, layerblob.WriteOptions{ZFile: zopts, Tar: tarred, TempDir: dir}, func(dst io.Writer) error {
			_, err := w.Commit(dst, lsmt.CommitOptions{})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := out.Close(); err != nil {
			t.Fatal(err)
		}
		w.Close()
		paths = append(paths, path)
	}
	return paths
}

func isZero(p []byte) bool {
	return bytes.Count(p, []byte{0}) == len(p)
}
