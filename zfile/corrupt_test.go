package zfile

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// openErr opens z and returns the error.
func openErr(z []byte) error {
	_, err := Open(bytes.NewReader(z), int64(len(z)), WithName("corrupt"))
	return err
}

// editTrailer returns a copy of z whose trailer was changed by edit (digest recomputed).
func editTrailer(t *testing.T, z []byte, edit func(*structure)) []byte {
	t.Helper()
	tr, err := parseStructure(z[len(z)-structSize:])
	if err != nil {
		t.Fatal(err)
	}
	edit(&tr)
	out := bytes.Clone(z)
	copy(out[len(out)-structSize:], tr.marshal())
	return out
}

func TestCorruptHeaderTrailerTable(t *testing.T) {
	z := readRef(t, "input-300007.lz4.bs4k.zfile")
	zr := open(t, z)
	tableStart := int(zr.blockStart(len(zr.lengths)))
	regions := map[string][2]int{
		"header":     {0, structSize},
		"jump table": {tableStart, len(z) - structSize},
		"trailer":    {len(z) - structSize, len(z)},
	}
	for name, r := range regions {
		for i := r[0]; i < r[1]; i++ {
			bad := bytes.Clone(z)
			bad[i] ^= 0x20
			if err := openErr(bad); !errors.Is(err, ErrFormat) {
				t.Fatalf("%s byte %d flipped: Open error %v, want ErrFormat", name, i, err)
			}
		}
	}
}

func TestCorruptBlocksNeverReturnWrongBytes(t *testing.T) {
	raw := readRef(t, "input-300007.bin")
	for _, file := range []string{"input-300007.lz4.bs4k.zfile", "input-300007.zstd.bs64k.zfile"} {
		z := readRef(t, file)
		zr := open(t, z)
		tableStart := int(zr.blockStart(len(zr.lengths)))
		for i := structSize; i < tableStart; i += 101 {
			bad := bytes.Clone(z)
			bad[i] ^= 0x01
			br := open(t, bad, WithName(file))
			got := make([]byte, len(raw))
			_, err := br.ReadAt(got, 0)
			var be *BlockError
			if !errors.As(err, &be) || !errors.Is(err, ErrChecksum) {
				t.Fatalf("%s byte %d flipped: ReadAt error %v, want a checksum BlockError", file, i, err)
			}
			start := int(zr.blockStart(be.Block))
			if i < start || i >= start+int(zr.lengths[be.Block]) || be.Offset != int64(start) {
				t.Fatalf("%s byte %d flipped: error names block %d at %d", file, i, be.Block, be.Offset)
			}
		}
	}
}

func TestTruncatedFiles(t *testing.T) {
	for _, file := range []string{"input-300007.lz4.bs4k.zfile", "input-300007.zstd.bs64k.zfile"} {
		z := readRef(t, file)
		for n := 0; n < len(z); n += 257 {
			if err := openErr(z[:n]); !errors.Is(err, ErrFormat) {
				t.Fatalf("%s truncated to %d bytes: Open error %v, want ErrFormat", file, n, err)
			}
		}
	}
	// A final (0x1B) header does not need the trailer, but the table must still fit before it.
	z := compressToFile(t, sampleData(50000, 1), nil, Options{})
	for _, n := range []int{len(z) - 1, len(z) - 511, len(z) - 512, len(z) - 600, 1000, 600} {
		if err := openErr(z[:n]); !errors.Is(err, ErrFormat) {
			t.Fatalf("0x1B file truncated to %d bytes: Open error %v, want ErrFormat", n, err)
		}
	}
}

func TestCraftedStructures(t *testing.T) {
	z := readRef(t, "input-300007.lz4.bs4k.zfile")
	wrongMagic := bytes.Clone(z)
	wrongMagic[0] = 'X'
	cases := map[string][]byte{
		"wrong magic":            wrongMagic,
		"table past end":         editTrailer(t, z, func(s *structure) { s.indexOffset = uint64(len(z)) }),
		"table before data":      editTrailer(t, z, func(s *structure) { s.indexOffset = 100 }),
		"huge index size":        editTrailer(t, z, func(s *structure) { s.indexSize = 2e9 }),
		"index size off by one":  editTrailer(t, z, func(s *structure) { s.indexSize-- }),
		"original size too big":  editTrailer(t, z, func(s *structure) { s.originalSize += 4096 }),
		"block size 3000":        editTrailer(t, z, func(s *structure) { s.blockSize = 3000 }),
		"block size 0":           editTrailer(t, z, func(s *structure) { s.blockSize = 0 }),
		"algorithm 7":            editTrailer(t, z, func(s *structure) { s.algo = 7 }),
		"compressed table":       editTrailer(t, z, func(s *structure) { s.flags |= flagIndexCompressed }),
		"dictionary":             editTrailer(t, z, func(s *structure) { s.dictSize = 100 }),
		"trailer has header bit": editTrailer(t, z, func(s *structure) { s.flags |= flagHeader }),
		"trailer not sealed":     editTrailer(t, z, func(s *structure) { s.flags &^= flagSealed }),
		"index CRC":              editTrailer(t, z, func(s *structure) { s.indexCRC++ }),
		"size field": func() []byte {
			b := bytes.Clone(z)
			binary.LittleEndian.PutUint32(b[24:], 97)
			return b
		}(),
		"block length 4": editTable(t, z, func(l []uint32) { l[0], l[1] = 4, l[1]+l[0]-4 }),
		"block length huge": editTable(t, z, func(l []uint32) {
			excess := 8000 - l[0]
			l[0] = 8000
			for i := 1; excess > 0; i++ {
				d := min(excess, l[i]-5)
				l[i] -= d
				excess -= d
			}
		}),
		"lengths sum": editTable(t, z, func(l []uint32) { l[3]++ }),
	}
	for name, bad := range cases {
		if err := openErr(bad); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: Open error %v, want ErrFormat", name, err)
		}
	}
}

// editTable returns a copy of z with its jump table changed by edit (index CRC and trailer
// digest recomputed, so only the table's own consistency checks can catch it).
func editTable(t *testing.T, z []byte, edit func([]uint32)) []byte {
	t.Helper()
	zr := open(t, z)
	lengths := append([]uint32(nil), zr.lengths...)
	edit(lengths)
	var table []byte
	for _, l := range lengths {
		table = binary.LittleEndian.AppendUint32(table, l)
	}
	out := bytes.Clone(z)
	copy(out[zr.blockStart(len(lengths)):], table)
	return editTrailer(t, out, func(s *structure) { s.indexCRC = crc(0, table) })
}

func TestConsistentButWrongStructures(t *testing.T) {
	raw := readRef(t, "input-300007.bin")
	z := readRef(t, "input-300007.lz4.bs4k.zfile")
	// Two block lengths swapped: the table is self-consistent but the blocks' CRCs catch it.
	i := 0
	for lengths := open(t, z).lengths; lengths[i] == lengths[i+1]; i++ {
	}
	swapped := editTable(t, z, func(l []uint32) { l[i], l[i+1] = l[i+1], l[i] })
	zr := open(t, swapped)
	if _, err := zr.ReadAt(make([]byte, 4096), int64(i)*4096); !errors.Is(err, ErrChecksum) {
		t.Fatalf("swapped lengths: %v, want ErrChecksum", err)
	}
	// An original size one byte short: the last block decodes to more bytes than expected.
	short := editTrailer(t, z, func(s *structure) { s.originalSize-- })
	zr = open(t, short)
	if _, err := zr.ReadAt(make([]byte, 10), zr.Size()-10); !errors.Is(err, ErrFormat) {
		t.Fatalf("short original size: %v, want ErrFormat", err)
	}
	got := make([]byte, 4096)
	if _, err := zr.ReadAt(got, 0); err != nil || !bytes.Equal(got, raw[:4096]) {
		t.Fatalf("block 0 of the short file: %v", err)
	}
}

func TestUnderlyingReadErrors(t *testing.T) {
	z := readRef(t, "input-300007.lz4.bs4k.zfile")
	zr := open(t, z)
	zr.r = bytes.NewReader(z[:len(z)/2])
	for _, n := range []int{1000, 200000} { // one goroutine, and parallel decoding
		zr.concurrency = 4
		if _, err := zr.ReadAt(make([]byte, n), 300007-int64(n)); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("%d-byte read from a shrunken file: %v", n, err)
		}
	}
}

func TestParallelReadReportsLowestBadBlock(t *testing.T) {
	z := compress(t, sampleData(300*4096, 3), Options{})
	zr := open(t, z)
	bad := bytes.Clone(z)
	for _, i := range []int{40, 41, 200, 299} {
		bad[zr.blockStart(i)+3] ^= 0x10
	}
	br := open(t, bad, WithConcurrency(4))
	for range 20 {
		_, err := br.ReadAt(make([]byte, br.Size()), 0)
		var be *BlockError
		if !errors.As(err, &be) || be.Block != 40 {
			t.Fatalf("parallel read of a file with bad blocks 40, 41, 200, 299: %v, want block 40", err)
		}
	}
}
