package zfile

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// FuzzOpen feeds arbitrary bytes to the header, trailer and jump-table parser and reads what
// opens: nothing may panic or hang, and every failure must wrap ErrFormat or ErrChecksum.
func FuzzOpen(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s.data)
	}
	f.Fuzz(func(t *testing.T, z []byte) {
		openAndRead(t, z)
		openAndRead(t, reseal(z))
	})
}

func openAndRead(t *testing.T, z []byte) {
	zr, err := Open(bytes.NewReader(z), int64(len(z)))
	if err != nil {
		if !errors.Is(err, ErrFormat) {
			t.Fatalf("Open error %v does not wrap ErrFormat", err)
		}
		return
	}
	p := make([]byte, min(zr.Size(), 1<<20))
	for _, off := range []int64{0, zr.Size() - int64(len(p))} {
		if _, err := zr.ReadAt(p, off); err != nil && !errors.Is(err, ErrChecksum) && !errors.Is(err, ErrFormat) {
			t.Fatalf("ReadAt at %d: unexpected error %v", off, err)
		}
	}
}

// reseal recomputes the digests, the jump-table CRC and the block CRCs of a mutated ZFile,
// so that the fuzzer also reaches the checks behind them: field consistency and decoders.
func reseal(z []byte) []byte {
	if len(z) < 2*structSize {
		return z
	}
	z = bytes.Clone(z)
	le := binary.LittleEndian
	header, trailer := z[:structSize], z[len(z)-structSize:]
	meta := trailer
	if le.Uint64(header[32:])&flagHeaderOverwritten != 0 {
		meta = header
	}
	off, n := le.Uint64(meta[40:]), le.Uint64(meta[48:])
	if off <= uint64(len(z)) && n <= (uint64(len(z))-off)/4 {
		table := z[off : off+4*n]
		pos := uint64(structSize)
		for i := range n {
			l := uint64(le.Uint32(table[4*i:]))
			if l <= crcSize || pos+l > off {
				break
			}
			le.PutUint32(z[pos+l-crcSize:], crc(blockCRCSeed, z[pos:pos+l-crcSize]))
			pos += l
		}
		le.PutUint32(meta[64:], crc(0, table))
	}
	for _, s := range [][]byte{header, trailer} {
		le.PutUint32(s[28:], 0)
		le.PutUint32(s[28:], crc(0, s))
	}
	return z
}

type fuzzSeed struct {
	name string
	data []byte
}

// fuzzSeeds are the corpus entries in testdata/fuzz/FuzzOpen: small ZFiles of every kind
// obd writes, one without CRCs, and the smaller upstream reference file.
func fuzzSeeds(t testing.TB) []fuzzSeed {
	small := sampleData(5000, 1)
	return []fuzzSeed{
		{"lz4-0x13", compress(t, small, Options{})},
		{"zstd-bs8k-0x13", compress(t, small, Options{Algorithm: ZSTD, BlockSize: 8192})},
		{"empty", compress(t, nil, Options{})},
		{"upstream-zstd-bs64k", readRef(t, "input-300007.zstd.bs64k.zfile")},
	}
}

// TestFuzzCorpus checks that the checked-in seed corpus is what fuzzSeeds makes, so a
// format change cannot leave the fuzzer starting from stale files; -update rewrites it.
func TestFuzzCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzOpen")
	for _, s := range fuzzSeeds(t) {
		entry := fmt.Sprintf("go test fuzz v1\n[]byte(%s)\n", strconv.Quote(string(s.data)))
		path := filepath.Join(dir, s.name)
		if *update {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(entry), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != entry {
			t.Errorf("seed %s is missing or stale (err %v); run go test -run TestFuzzCorpus -update", path, err)
		}
	}
}
