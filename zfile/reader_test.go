package zfile

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/obdproject/obd/tarblob"
)

func TestReadReferenceFiles(t *testing.T) {
	want := readRef(t, "input-300007.bin")
	cases := []struct {
		file  string
		algo  Algorithm
		bs    int
		tared bool
	}{
		{"input-300007.lz4.bs4k.zfile", LZ4, 4096, false},
		{"input-300007.zstd.bs64k.zfile", ZSTD, 65536, false},
		{"input-300007.lz4.bs4k.tar.zfile", LZ4, 4096, true},
	}
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			blob := readRef(t, c.file)
			var r io.ReaderAt = bytes.NewReader(blob)
			size := int64(len(blob))
			if c.tared {
				sec, err := tarblob.Open(r, size)
				if err != nil {
					t.Fatalf("tarblob.Open: %v", err)
				}
				r, size = sec, sec.Size()
			}
			if !HasMagic(r) {
				t.Fatal("HasMagic = false")
			}
			zr, err := Open(r, size, WithName(c.file))
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			info := zr.Info()
			wantInfo := Info{Algorithm: c.algo, BlockSize: c.bs, Blocks: (len(want) + c.bs - 1) / c.bs,
				OriginalSize: int64(len(want)), StoredSize: size, HeaderFlags: 0x13, TrailerFlags: 0x16, Verify: true}
			if info != wantInfo {
				t.Errorf("Info = %+v, want %+v", info, wantInfo)
			}
			if !bytes.Equal(readAll(t, zr), want) {
				t.Fatal("content differs from input-300007.bin")
			}
			if err := zr.Verify(context.Background()); err != nil {
				t.Fatalf("Verify: %v", err)
			}
			checkRandomReads(t, zr, want, 300)
		})
	}
}

// checkRandomReads compares random ReadAt calls (inside, across and past the end) with raw.
func checkRandomReads(t *testing.T, zr *Reader, raw []byte, n int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(uint64(len(raw)), 3))
	size := int64(len(raw))
	for range n {
		off := rng.Int64N(size + 10)
		length := rng.IntN(3 * zr.Info().BlockSize)
		if rng.IntN(8) == 0 {
			length = rng.IntN(40 * zr.Info().BlockSize)
		}
		p := make([]byte, length)
		got, err := zr.ReadAt(p, off)
		wantN := int(max(0, min(int64(length), size-off)))
		if got != wantN {
			t.Fatalf("ReadAt(%d bytes at %d) = %d, want %d (err %v)", length, off, got, wantN, err)
		}
		if wantN < length && err != io.EOF {
			t.Fatalf("ReadAt(%d bytes at %d) short read without io.EOF: %v", length, off, err)
		}
		if wantN == length && err != nil {
			t.Fatalf("ReadAt(%d bytes at %d): %v", length, off, err)
		}
		if wantN > 0 && !bytes.Equal(p[:got], raw[off:off+int64(got)]) {
			t.Fatalf("ReadAt(%d bytes at %d) returned wrong bytes", length, off)
		}
	}
}

func TestBadBlockChecksum(t *testing.T) {
	want := readRef(t, "input-300007.bin")
	zr := open(t, readRef(t, "BAD-crc-block5.zfile"), WithName("BAD-crc-block5.zfile"))
	good := make([]byte, 5*4096)
	if n, err := zr.ReadAt(good, 0); n != len(good) || err != nil || !bytes.Equal(good, want[:len(good)]) {
		t.Fatalf("blocks 0-4: n=%d err=%v", n, err)
	}
	if _, err := zr.ReadAt(make([]byte, 4096*30), 0); !isBlock5(t, zr, err) {
		t.Fatalf("reading across block 5: %v", err)
	}
	if _, err := zr.ReadAt(make([]byte, 10), 5*4096+100); !isBlock5(t, zr, err) {
		t.Fatalf("reading inside block 5: %v", err)
	}
	if err := zr.Verify(context.Background()); !isBlock5(t, zr, err) {
		t.Fatalf("Verify: %v", err)
	}
	tail := make([]byte, 4096)
	if _, err := zr.ReadAt(tail, 6*4096); err != nil || !bytes.Equal(tail, want[6*4096:7*4096]) {
		t.Fatalf("block 6 after the bad one: %v", err)
	}
}

func isBlock5(t *testing.T, zr *Reader, err error) bool {
	t.Helper()
	var be *BlockError
	if !errors.As(err, &be) || !errors.Is(err, ErrChecksum) {
		return false
	}
	msg := err.Error()
	return be.Block == 5 && be.Offset == zr.blockStart(5) && be.Name == "BAD-crc-block5.zfile" &&
		strings.Contains(msg, "BAD-crc-block5.zfile") && strings.Contains(msg, "block 5 at offset")
}

func TestRoundTrip(t *testing.T) {
	for _, algo := range []Algorithm{LZ4, ZSTD} {
		for _, bs := range []int{4096, 8192, 16384, 32768, 65536} {
			for _, n := range []int{0, 1, bs - 1, bs, bs + 1, 3*bs + 17, 200003} {
				raw := sampleData(n, uint64(n+bs))
				z := compress(t, raw, Options{Algorithm: algo, BlockSize: bs})
				zr := open(t, z)
				info := zr.Info()
				if info.Algorithm != algo || info.BlockSize != bs || info.Blocks != (n+bs-1)/bs || zr.Size() != int64(n) {
					t.Fatalf("%v bs %d size %d: Info %+v", algo, bs, n, info)
				}
				if got := readAll(t, zr); !bytes.Equal(got, raw) {
					t.Fatalf("%v bs %d size %d: content differs", algo, bs, n)
				}
				if n > 0 {
					checkRandomReads(t, zr, raw, 40)
				}
			}
		}
	}
}

func TestReadAtEdges(t *testing.T) {
	raw := sampleData(10000, 1)
	zr := open(t, compress(t, raw, Options{}))
	if _, err := zr.ReadAt(make([]byte, 1), -1); err == nil {
		t.Error("negative offset accepted")
	}
	if n, err := zr.ReadAt(make([]byte, 1), 10000); n != 0 || err != io.EOF {
		t.Errorf("read at end = %d, %v; want 0, io.EOF", n, err)
	}
	if n, err := zr.ReadAt(nil, 10000); n != 0 || err != nil {
		t.Errorf("empty read at end = %d, %v", n, err)
	}
	p := make([]byte, 100)
	if n, err := zr.ReadAt(p, 9900); n != 100 || err != nil || !bytes.Equal(p, raw[9900:]) {
		t.Errorf("read ending exactly at the end = %d, %v", n, err)
	}
	empty := open(t, compress(t, nil, Options{Algorithm: ZSTD}))
	if n, err := empty.ReadAt(make([]byte, 1), 0); n != 0 || err != io.EOF || empty.Size() != 0 {
		t.Errorf("empty file read = %d, %v", n, err)
	}
	if err := empty.Verify(context.Background()); err != nil {
		t.Errorf("Verify of an empty file: %v", err)
	}
}

// countingReaderAt counts ReadAt calls on the underlying file.
type countingReaderAt struct {
	r     io.ReaderAt
	calls atomic.Int64
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	c.calls.Add(1)
	return c.r.ReadAt(p, off)
}

func TestLargeReadIsOneFetch(t *testing.T) {
	raw := sampleData(2<<20, 5)
	z := compress(t, raw, Options{})
	cr := &countingReaderAt{r: bytes.NewReader(z)}
	zr, err := Open(cr, int64(len(z)))
	if err != nil {
		t.Fatal(err)
	}
	cr.calls.Store(0)
	p := make([]byte, 1<<20+1000)
	if _, err := zr.ReadAt(p, 3000); err != nil || !bytes.Equal(p, raw[3000:3000+len(p)]) {
		t.Fatalf("ReadAt: %v", err)
	}
	if n := cr.calls.Load(); n != 1 {
		t.Fatalf("a 258-block ReadAt made %d underlying reads, want 1", n)
	}
}

func TestConcurrentReaders(t *testing.T) {
	raw := sampleData(1<<20, 9)
	zr := open(t, compress(t, raw, Options{Algorithm: ZSTD, BlockSize: 8192}))
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range 50 {
				off, n := rng.IntN(len(raw)), rng.IntN(100000)
				p := make([]byte, n)
				got, _ := zr.ReadAt(p, int64(off))
				if !bytes.Equal(p[:got], raw[off:off+got]) {
					t.Errorf("goroutine %d: wrong bytes at %d", g, off)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestVerifyHonoursContext(t *testing.T) {
	zr := open(t, compress(t, sampleData(100000, 2), Options{}))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := zr.Verify(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Verify with a cancelled context: %v", err)
	}
}

func TestHasMagic(t *testing.T) {
	if HasMagic(bytes.NewReader([]byte("ZFile"))) || HasMagic(bytes.NewReader(make([]byte, 600))) {
		t.Fatal("HasMagic accepted a non-ZFile")
	}
}

// withoutCRCs rebuilds a ZFile with the verify flag clear: the same blocks minus their CRCs.
func withoutCRCs(t *testing.T, z []byte) []byte {
	zr := open(t, z)
	out := append([]byte(nil), z[:structSize]...)
	var table []byte
	for i, l := range zr.lengths {
		start := zr.blockStart(i)
		out = append(out, z[start:start+int64(l)-crcSize]...)
		table = binary.LittleEndian.AppendUint32(table, l-crcSize)
	}
	tr, err := parseStructure(z[len(z)-structSize:])
	if err != nil {
		t.Fatal(err)
	}
	tr.verify, tr.indexOffset, tr.indexCRC = false, uint64(len(out)), crc(0, table)
	hdr, _ := parseStructure(z[:structSize])
	hdr.verify = false
	copy(out, hdr.marshal())
	return append(append(out, table...), tr.marshal()...)
}

func TestReadWithoutCRCs(t *testing.T) {
	raw := readRef(t, "input-300007.bin")
	z := withoutCRCs(t, readRef(t, "input-300007.zstd.bs64k.zfile"))
	zr := open(t, z)
	if zr.Info().Verify {
		t.Fatal("verify flag still set")
	}
	if !bytes.Equal(readAll(t, zr), raw) {
		t.Fatal("content differs")
	}
}
