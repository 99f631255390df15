package layerblob

import (
	"bytes"
	"errors"
	"runtime"
	"testing"

	"github.com/obdproject/obd/lsmt"
	"github.com/obdproject/obd/tarblob"
	"github.com/obdproject/obd/zfile"
)

// claimingLayer is a layer tar around a ZFile (zstd, 64 KiB blocks) of an LSMT file of
// size bytes: a header, zeros, and a trailer claiming an index of every record between
// them. Zeros compress so well that the blob is tiny; its first index record is invalid.
func claimingLayer(t testing.TB, size int64) []byte {
	t.Helper()
	h, err := lsmt.Header{Flags: lsmt.FlagHeader | lsmt.FlagDataFile | lsmt.FlagSealed, VirtualSize: 1 << 30}.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	tr, err := lsmt.Header{Flags: lsmt.FlagDataFile | lsmt.FlagSealed, IndexOffset: lsmt.HeaderSize,
		IndexSize: uint64(size-2*lsmt.HeaderSize) / lsmt.RecordSize, VirtualSize: 1 << 30}.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var z bytes.Buffer
	zw, err := zfile.NewWriter(&z, zfile.Options{Algorithm: zfile.ZSTD, BlockSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(h)
	zeros := make([]byte, 1<<20)
	for left := size - 2*lsmt.HeaderSize; left > 0; left -= int64(len(zeros)) {
		zw.Write(zeros[:min(left, int64(len(zeros)))])
	}
	zw.Write(tr)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := tarblob.Write(&out, bytes.NewReader(z.Bytes()), int64(z.Len())); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// TestOpenClaimedIndex: a blob of tens of KB whose layer claims an index of 4M records is
// refused for its first bad record, having allocated a bounded amount rather than room for
// the whole claim.
func TestOpenClaimedIndex(t *testing.T) {
	blob := claimingLayer(t, 64<<20)
	if len(blob) > 128<<10 {
		t.Fatalf("the test blob is %d bytes, want a small one", len(blob))
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := Open(bytes.NewReader(blob), int64(len(blob)), "claiming")
	runtime.ReadMemStats(&after)
	if !errors.Is(err, lsmt.ErrFormat) {
		t.Fatalf("Open: %v, want lsmt.ErrFormat", err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 32<<20 {
		t.Errorf("Open of a %d KB blob allocated %d MiB, want at most 32 MiB", len(blob)>>10, got>>20)
	}
}
