package rangetable

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"testing"
)

func blob(n int) []byte {
	r := rand.New(rand.NewPCG(1, uint64(n)))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// build writes data to a Builder in pieces of step bytes.
func build(t testing.TB, data []byte, chunk int64, step int) []byte {
	b, err := NewBuilder(chunk)
	if err != nil {
		t.Fatal(err)
	}
	for p := data; len(p) > 0; {
		k := min(step, len(p))
		b.Write(p[:k])
		p = p[k:]
	}
	return b.Table()
}

func TestBuildParseCheck(t *testing.T) {
	for _, n := range []int{0, 1, 4095, 4096, 4097, 3*4096 + 17, 16 << 10} {
		data := blob(n)
		raw := build(t, data, MinChunk, 1000)
		if again := build(t, data, MinChunk, 4096); !bytes.Equal(raw, again) {
			t.Fatalf("n=%d: the table depends on how the bytes were written", n)
		}
		tbl, err := Parse(raw)
		if err != nil {
			t.Fatalf("n=%d: %v", n, err)
		}
		if tbl.Covered() != int64(n) || tbl.Chunk() != MinChunk || int64(len(raw)) != Size(int64(n), MinChunk) {
			t.Fatalf("n=%d: covered %d chunk %d size %d", n, tbl.Covered(), tbl.Chunk(), len(raw))
		}
		for i := 0; i < tbl.Chunks(); i++ {
			off, end := tbl.ChunkRange(int64(i) * MinChunk)
			if err := tbl.Check(off, data[off:end]); err != nil {
				t.Fatalf("n=%d chunk %d: %v", n, i, err)
			}
			bad := bytes.Clone(data[off:end])
			bad[len(bad)/2] ^= 1
			if err := tbl.Check(off, bad); !errors.Is(err, ErrMismatch) {
				t.Fatalf("n=%d chunk %d: a changed byte gave %v", n, i, err)
			}
		}
	}
}

func TestCheckRefusesNonChunks(t *testing.T) {
	data := blob(3 * MinChunk)
	tbl, err := Parse(build(t, data, MinChunk, len(data)))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ off, n int64 }{{1, MinChunk}, {0, MinChunk - 1}, {0, 2 * MinChunk}, {3 * MinChunk, 0}, {-MinChunk, MinChunk}} {
		if err := tbl.Check(c.off, make([]byte, c.n)); !errors.Is(err, ErrFormat) {
			t.Errorf("%d bytes at %d: %v, want ErrFormat", c.n, c.off, err)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	good := build(t, blob(10000), MinChunk, 10000)
	mod := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	cases := map[string][]byte{
		"short":         good[:HeaderSize-1],
		"magic":         mod(func(b []byte) []byte { b[0] = 'x'; return b }),
		"chunk not pow": mod(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[8:], 5000); return b }),
		"chunk small":   mod(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[8:], 2048); return b }),
		"chunk large":   mod(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[8:], 2<<20); return b }),
		"reserved":      mod(func(b []byte) []byte { b[13] = 1; return b }),
		"reserved2":     mod(func(b []byte) []byte { b[31] = 1; return b }),
		"covered huge":  mod(func(b []byte) []byte { binary.LittleEndian.PutUint64(b[16:], 1<<62); return b }),
		"covered more":  mod(func(b []byte) []byte { binary.LittleEndian.PutUint64(b[16:], 20000); return b }),
		"truncated":     good[:len(good)-1],
		"extra":         append(bytes.Clone(good), 0),
	}
	for name, b := range cases {
		if _, err := Parse(b); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: %v, want ErrFormat", name, err)
		}
	}
}

func TestNewBuilderRefusesChunk(t *testing.T) {
	for _, c := range []int64{0, 1000, MinChunk / 2, MaxChunk * 2, 3 * MinChunk} {
		if _, err := NewBuilder(c); err == nil {
			t.Errorf("chunk %d accepted", c)
		}
	}
}

// FuzzParse feeds arbitrary bytes to Parse: it must never panic, and a table it accepts must
// check its chunks without panicking and be exactly as long as its header says.
func FuzzParse(f *testing.F) {
	f.Add(build(f, blob(10000), MinChunk, 10000))
	f.Add(build(f, nil, MinChunk, 1))
	f.Add([]byte(Magic))
	f.Fuzz(func(t *testing.T, b []byte) {
		tbl, err := Parse(b)
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("error %v does not wrap ErrFormat", err)
			}
			return
		}
		if int64(len(b)) != Size(tbl.Covered(), tbl.Chunk()) {
			t.Fatalf("accepted %d bytes for a table of %d", len(b), Size(tbl.Covered(), tbl.Chunk()))
		}
		if tbl.Chunks() > 0 {
			off, end := tbl.ChunkRange(tbl.Covered() - 1)
			if err := tbl.Check(off, make([]byte, end-off)); err != nil && !errors.Is(err, ErrMismatch) {
				t.Fatalf("checking the last chunk: %v", err)
			}
		}
	})
}
