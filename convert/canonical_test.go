package convert

import (
	"bytes"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/obdproject/obd/lsmt"
)

// TestCanonicalCommitIgnoresWriteSplitting writes the same bytes into two
// writable layers cut into different request sizes and orders (as the kernel
// does from run to run) and checks their canonical commits are identical,
// with free blocks left out.
func TestCanonicalCommitIgnoresWriteSplitting(t *testing.T) {
	const vsize = 64 << 20
	rng := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 12<<20)
	for i := range data {
		data[i] = byte(rng.IntN(7)) // compressible, never a whole zero block
	}
	base := int64(3<<20 + 4096)
	free := func(off int64) bool { return off == base+8192 || off == base+10<<20 }
	commit := func(seed uint64, maxPiece int) []byte {
		dir := t.TempDir()
		opts := lsmt.CreateOptions{VirtualSize: vsize, UUID: "11111111-2222-3333-4444-555555555555"}
		w, err := lsmt.Create(filepath.Join(dir, "upper"), opts)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		r := rand.New(rand.NewPCG(seed, seed))
		type piece struct{ off, n int64 }
		var pieces []piece
		for off := int64(0); off < int64(len(data)); {
			n := min(int64(len(data))-off, int64(1+r.IntN(maxPiece))*512)
			pieces = append(pieces, piece{off, n})
			off += n
		}
		r.Shuffle(len(pieces), func(i, j int) { pieces[i], pieces[j] = pieces[j], pieces[i] })
		for _, p := range pieces {
			if _, err := w.WriteAt(data[p.off:p.off+p.n], base+p.off); err != nil {
				t.Fatal(err)
			}
		}
		canon, err := canonicalize(w, dir, opts, free)
		if err != nil {
			t.Fatal(err)
		}
		defer canon.Close()
		var out bytes.Buffer
		if _, err := canon.Commit(&out, lsmt.CommitOptions{UUID: opts.UUID}); err != nil {
			t.Fatal(err)
		}
		return out.Bytes()
	}
	a, b := commit(1, 8), commit(2, 9000)
	if !bytes.Equal(a, b) {
		t.Fatal("canonical commits of the same content differ")
	}
	l, err := lsmt.Open(bytes.NewReader(a), int64(len(a)))
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if _, err := l.ReadAt(got, base); err != nil {
		t.Fatal(err)
	}
	for i := range data {
		off := base + int64(i)
		if blk := off / 4096 * 4096; free(blk) {
			if got[i] != 0 {
				t.Fatalf("free block at %d kept its data", blk)
			}
			continue
		}
		if got[i] != data[i] {
			t.Fatalf("byte at %d differs", off)
		}
	}
}
