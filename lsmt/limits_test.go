package lsmt

import (
	"errors"
	"runtime"
	"testing"
)

// claimedIndex is a committed layer of size bytes that holds only a header and a trailer
// claiming an index of every record between them; the bytes between read as zeros, so the
// first record is already invalid (zero length).
type claimedIndex struct {
	size            int64
	header, trailer []byte
}

func newClaimedIndex(t *testing.T, size int64) *claimedIndex {
	h := Header{Flags: FlagHeader | FlagDataFile | FlagSealed, VirtualSize: 1 << 30}
	hb, err := h.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	tr := Header{Flags: FlagDataFile | FlagSealed, IndexOffset: HeaderSize,
		IndexSize: uint64(size-2*HeaderSize) / RecordSize, VirtualSize: 1 << 30}
	tb, err := tr.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return &claimedIndex{size: size, header: hb, trailer: tb}
}

func (c *claimedIndex) ReadAt(p []byte, off int64) (int, error) {
	for i := range p {
		switch at := off + int64(i); {
		case at < HeaderSize:
			p[i] = c.header[at]
		case at >= c.size-HeaderSize:
			p[i] = c.trailer[at-(c.size-HeaderSize)]
		default:
			p[i] = 0
		}
	}
	return len(p), nil
}

// TestOpenReadsIndexInPieces: a layer that claims an index of 16M records (its size allows
// it) but whose first record is already bad is refused after reading a bounded piece of
// the index, without allocating room for the whole claim first.
func TestOpenReadsIndexInPieces(t *testing.T) {
	r := newClaimedIndex(t, 256<<20)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := Open(r, r.size)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrFormat) {
		t.Fatalf("Open: %v, want ErrFormat", err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 16<<20 {
		t.Errorf("Open allocated %d MiB for a claimed index of 256 MiB it never read, want at most 16 MiB", got>>20)
	}
}
