// Package rangetable is the range table of a layer blob: the SHA-256 digest of every fixed-size
// chunk of the blob's bytes, so that a reader who fetches a blob in pieces can check each piece
// on arrival instead of only once the whole blob is in (docs/FORMAT.md, "Range table").
//
// It is a leaf format beside the layer formats: convert builds a table (Builder) while it writes
// a layer and appends it to the blob; remotefetch parses the table it fetched (Parse, which
// trusts nothing in the bytes) and checks every fetched chunk against it (Table.Check) before
// the bytes reach a device or the cache. The table's own digest is pinned by the image manifest
// (imagelabels.RangeTable), which is what makes the chunk digests trustworthy.
package rangetable

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
)

// Magic opens every table.
const Magic = "obdrtbl1"

// HeaderSize is the size of the table header; the chunk digests follow it.
const HeaderSize = 32

// DigestSize is the size of one chunk digest (SHA-256).
const DigestSize = sha256.Size

// DefaultChunk is the chunk size convert writes: bdd's default fill unit, so a cache miss
// fetches exactly the chunks it needs, and 32 bytes of table per 16 KiB of blob (0.2%).
const DefaultChunk = 16 << 10

// MinChunk and MaxChunk bound the chunk size, a power of two.
const (
	MinChunk = 4 << 10
	MaxChunk = 1 << 20
)

// MaxCovered bounds the bytes a table may cover (1 TiB): with 4 KiB chunks its table is 8 GiB,
// which a reader's own size cap refuses long before.
const MaxCovered = 1 << 40

// Errors callers branch on with errors.Is.
var (
	// ErrFormat: the bytes are not a well-formed range table.
	ErrFormat = errors.New("rangetable: malformed table")
	// ErrMismatch: a chunk's bytes do not match its digest in the table.
	ErrMismatch = errors.New("rangetable: chunk does not match its digest")
)

// Table is a parsed range table: the digests of the chunks of the blob bytes [0, Covered).
// Chunk i is the bytes [i*Chunk, min((i+1)*Chunk, Covered)).
type Table struct {
	chunk   int64
	covered int64
	sums    []byte // DigestSize bytes per chunk
}

// Size is the size in bytes of the table of covered bytes in chunks of chunk bytes.
func Size(covered, chunk int64) int64 {
	return HeaderSize + DigestSize*chunks(covered, chunk)
}

func chunks(covered, chunk int64) int64 { return (covered + chunk - 1) / chunk }

// validChunk reports whether c is a chunk size a table may have.
func validChunk(c int64) bool {
	return c >= MinChunk && c <= MaxChunk && c&(c-1) == 0
}

// Parse parses the bytes of a table. Every field is checked: the magic, a power-of-two chunk
// size in [MinChunk, MaxChunk], zero reserved fields, Covered at most MaxCovered, and a length
// of exactly one digest per chunk. The table keeps b.
func Parse(b []byte) (*Table, error) {
	if len(b) < HeaderSize {
		return nil, fmt.Errorf("%w: %d bytes, shorter than the %d-byte header", ErrFormat, len(b), HeaderSize)
	}
	if string(b[:8]) != Magic {
		return nil, fmt.Errorf("%w: bad magic %q", ErrFormat, b[:8])
	}
	chunk := int64(binary.LittleEndian.Uint32(b[8:12]))
	if !validChunk(chunk) {
		return nil, fmt.Errorf("%w: chunk size %d is not a power of two in [%d, %d]", ErrFormat, chunk, MinChunk, MaxChunk)
	}
	if binary.LittleEndian.Uint32(b[12:16]) != 0 || binary.LittleEndian.Uint64(b[24:32]) != 0 {
		return nil, fmt.Errorf("%w: reserved header fields are not zero", ErrFormat)
	}
	covered := binary.LittleEndian.Uint64(b[16:24])
	if covered > MaxCovered {
		return nil, fmt.Errorf("%w: covers %d bytes, more than %d", ErrFormat, covered, int64(MaxCovered))
	}
	if want := Size(int64(covered), chunk); int64(len(b)) != want {
		return nil, fmt.Errorf("%w: %d bytes; %d chunks of %d bytes over %d bytes need %d", ErrFormat,
			len(b), chunks(int64(covered), chunk), chunk, covered, want)
	}
	return &Table{chunk: chunk, covered: int64(covered), sums: b[HeaderSize:]}, nil
}

// Chunk is the chunk size in bytes.
func (t *Table) Chunk() int64 { return t.chunk }

// Covered is the number of blob bytes, from the start, the table covers.
func (t *Table) Covered() int64 { return t.covered }

// Chunks is the number of chunks.
func (t *Table) Chunks() int { return int(chunks(t.covered, t.chunk)) }

// ChunkRange is the byte range [off, end) of the chunk that holds byte pos (< Covered).
func (t *Table) ChunkRange(pos int64) (off, end int64) {
	off = pos / t.chunk * t.chunk
	return off, min(off+t.chunk, t.covered)
}

// Check checks p, the bytes of the chunk starting at off, against the table. It returns an
// error wrapping ErrMismatch if they differ, and one wrapping ErrFormat if [off, off+len(p))
// is not exactly a chunk.
func (t *Table) Check(off int64, p []byte) error {
	if off < 0 || off%t.chunk != 0 || off >= t.covered || int64(len(p)) != min(t.chunk, t.covered-off) {
		return fmt.Errorf("%w: %d bytes at %d are not a chunk of the table (chunk %d, covered %d)", ErrFormat, len(p), off, t.chunk, t.covered)
	}
	i := off / t.chunk
	sum := sha256.Sum256(p)
	if !bytes.Equal(sum[:], t.sums[i*DigestSize:(i+1)*DigestSize]) {
		return fmt.Errorf("%w: chunk %d (bytes %d-%d)", ErrMismatch, i, off, off+int64(len(p)))
	}
	return nil
}

// Builder builds the table of the bytes written to it, in order: an io.Writer that hashes each
// chunk as it completes.
type Builder struct {
	chunk int64
	h     hash.Hash
	inCur int64 // bytes of the current chunk hashed so far
	n     int64
	sums  []byte
}

// NewBuilder returns a Builder of chunk-byte chunks (a power of two in [MinChunk, MaxChunk]).
func NewBuilder(chunk int64) (*Builder, error) {
	if !validChunk(chunk) {
		return nil, fmt.Errorf("rangetable: chunk size %d is not a power of two in [%d, %d]", chunk, MinChunk, MaxChunk)
	}
	return &Builder{chunk: chunk, h: sha256.New()}, nil
}

// Write hashes p as the next bytes of the blob. It never fails.
func (b *Builder) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		k := min(int64(len(p)), b.chunk-b.inCur)
		b.h.Write(p[:k])
		b.inCur += k
		p = p[k:]
		if b.inCur == b.chunk {
			b.sums = b.h.Sum(b.sums)
			b.h.Reset()
			b.inCur = 0
		}
	}
	b.n += int64(n)
	return n, nil
}

// Len is the number of bytes written so far.
func (b *Builder) Len() int64 { return b.n }

// Table returns the encoded table of the bytes written so far. The Builder can go on.
func (b *Builder) Table() []byte {
	out := make([]byte, HeaderSize, Size(b.n, b.chunk))
	copy(out, Magic)
	binary.LittleEndian.PutUint32(out[8:12], uint32(b.chunk))
	binary.LittleEndian.PutUint64(out[16:24], uint64(b.n))
	out = append(out, b.sums...)
	if b.inCur > 0 {
		out = b.h.Sum(out) // Sum does not change the running hash
	}
	return out
}
