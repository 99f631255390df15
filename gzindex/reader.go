package gzindex

import (
	"container/list"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// ErrMismatch reports blob bytes that do not match the index: a chunk whose
// bytes have another digest than the range table's, or a span that does not
// decode to the output the index says.
var ErrMismatch = errors.New("gzindex: blob does not match its index")

// DefaultCacheBytes bounds a Reader's inflated bytes unless told otherwise.
const DefaultCacheBytes = 32 << 20

// minBatch is the least a span's decoder asks of the blob at once past its
// first estimate; each further batch doubles, as a read going on through a
// span is likely to go on further.
const minBatch = 64 << 10

// ReaderOptions configures NewReader.
type ReaderOptions struct {
	// CacheBytes bounds the inflated bytes kept (0 = DefaultCacheBytes). At
	// least the spans reads are using are kept, whatever the bound.
	CacheBytes int64
	// Name names the blob in errors (e.g. its digest).
	Name string
}

// Reader serves the uncompressed stream of a blob through its index. It is
// safe for concurrent use.
//
// A read decodes its span from the checkpoint only as far as it needs, and
// keeps the span's decoder where it stopped with the output so far (a
// cursor): a later read of the same span is served from that output or goes
// on decoding from there, so neighbouring reads inflate a span once. The
// blob is read in whole chunks of the index's range table, each checked
// against its digest before it is decoded; the first fetch of a span asks
// for as much as the read is estimated to need, so it is usually one
// request.
type Reader struct {
	blob io.ReaderAt
	x    *Index
	opts ReaderOptions

	mu      sync.Mutex
	cursors map[int]*cursor
	lru     list.List // of *cursor, most recent at the front
	held    int64     // bytes of output held by cursors in the map

	inflaters sync.Pool
}

// cursor is one span being decoded: its output so far and the decoder that
// goes on from there. mu serializes the span's decoding.
type cursor struct {
	i    int
	elem *list.Element // guarded by Reader.mu

	mu   sync.Mutex
	data []byte        // the span's output [Out, Out+len(data))
	f    *inflater     // a gzip span's decoder: nil before the first read and once the span is done
	z    *zstd.Decoder // a zstd span's decoder, likewise
	src  *chunkSource
	held int64 // len(data) as accounted in Reader.held (guarded by Reader.mu)
}

// NewReader returns a reader of x's stream over blob (x.BlobSize bytes). x
// must be valid (Decode, Open and Build return valid indexes).
func NewReader(blob io.ReaderAt, x *Index, opts ReaderOptions) *Reader {
	if opts.CacheBytes <= 0 {
		opts.CacheBytes = DefaultCacheBytes
	}
	if opts.Name == "" {
		opts.Name = "blob"
	}
	r := &Reader{blob: blob, x: x, opts: opts, cursors: map[int]*cursor{}}
	r.inflaters.New = func() any { return new(inflater) }
	return r
}

// Size is the uncompressed stream's length.
func (r *Reader) Size() int64 { return r.x.Size }

// ReadAt reads the uncompressed stream; past its end it returns io.EOF.
func (r *Reader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("gzindex: %s: negative offset %d", r.opts.Name, off)
	}
	if r.x.Kind == KindRaw {
		return r.readRaw(p, off)
	}
	n := 0
	for n < len(p) {
		at := off + int64(n)
		if at >= r.x.Size {
			return n, io.EOF
		}
		i := r.x.span(at)
		k, err := r.readSpan(i, p[n:], at)
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// readRaw reads an uncompressed blob: the chunks holding [off, off+len(p)),
// each checked.
func (r *Reader) readRaw(p []byte, off int64) (int, error) {
	end := min(off+int64(len(p)), r.x.Size)
	if off >= end {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	from, _ := r.x.Table.ChunkRange(off)
	_, to := r.x.Table.ChunkRange(end - 1)
	buf, err := r.fetch(from, to)
	if err != nil {
		return 0, err
	}
	n := copy(p, buf[off-from:end-from])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// fetch reads the blob's whole chunks [from, to) and checks each.
func (r *Reader) fetch(from, to int64) ([]byte, error) {
	buf := make([]byte, to-from)
	if n, err := r.blob.ReadAt(buf, from); n < len(buf) {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("gzindex: %s: read blob bytes [%d, %d): %w", r.opts.Name, from, to, err)
	}
	t := r.x.Table
	for off := from; off < to; off += t.Chunk() {
		end := min(off+t.Chunk(), to)
		if err := t.Check(off, buf[off-from:end-from]); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrMismatch, r.opts.Name, err)
		}
	}
	return buf, nil
}

// readSpan copies into p what span i holds from stream offset at on,
// decoding as far as that needs.
func (r *Reader) readSpan(i int, p []byte, at int64) (int, error) {
	x := r.x
	s := &x.Spans[i]
	need := min(at+int64(len(p)), x.spanEnd(i)) - s.Out
	c := r.cursor(i)
	c.mu.Lock()
	var err error
	if int64(len(c.data)) < need {
		err = r.advance(c, need)
	}
	n := 0
	if rel := at - s.Out; rel < int64(len(c.data)) {
		n = copy(p, c.data[rel:min(need, int64(len(c.data)))])
	}
	grown := int64(len(c.data))
	c.mu.Unlock()
	if err != nil {
		r.drop(c)
		return n, err
	}
	r.account(c, grown)
	return n, nil
}

// cursor returns span i's cursor, making it the most recently used.
func (r *Reader) cursor(i int) *cursor {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.cursors[i]
	if !ok {
		c = &cursor{i: i}
		c.elem = r.lru.PushFront(c)
		r.cursors[i] = c
	} else {
		r.lru.MoveToFront(c.elem)
	}
	return c
}

// account notes that c holds size bytes now and evicts the least recently
// used other cursors while the cache is over its bound.
func (r *Reader) account(c *cursor, size int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cursors[c.i] != c {
		return // dropped meanwhile
	}
	r.held += size - c.held
	c.held = size
	for r.held > r.opts.CacheBytes {
		back := r.lru.Back()
		old := back.Value.(*cursor)
		if old == c {
			break
		}
		r.removeLocked(old)
	}
}

// drop forgets c (after an error: the next read starts the span afresh).
func (r *Reader) drop(c *cursor) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cursors[c.i] == c {
		r.removeLocked(c)
	}
}

func (r *Reader) removeLocked(c *cursor) {
	r.lru.Remove(c.elem)
	delete(r.cursors, c.i)
	r.held -= c.held
}

// advance decodes span c.i until its output holds need bytes (or the span
// ends there). The caller holds c.mu.
func (r *Reader) advance(c *cursor, need int64) error {
	x := r.x
	if x.Kind == KindZstd {
		return r.advanceZstd(c, need)
	}
	i := c.i
	s := &x.Spans[i]
	outEnd := x.spanEnd(i)
	spanLen := outEnd - s.Out
	if c.f == nil {
		if len(c.data) > 0 {
			return nil // done: the span holds less than need claims
		}
		if err := r.start(c, need); err != nil {
			return err
		}
	} else {
		c.src.expect(x, i, need)
	}
	from, target := c.grow(need, spanLen)
	k, err := io.ReadFull(c.f, c.data[from:target])
	c.data = c.data[:from+k]
	if ferr := c.src.fetchErr; ferr != nil {
		return ferr
	}
	if bad := c.f.badEnd; bad != nil {
		return bad
	}
	if err != nil {
		return fmt.Errorf("%w: %s: span %d: inflate: %v", ErrMismatch, r.opts.Name, i, err)
	}
	if target < spanLen {
		return nil
	}
	// The span is done: the decoder must stop exactly at its end.
	var one [1]byte
	if n, err := c.f.Read(one[:]); n != 0 || err != io.EOF {
		if bad := c.f.badEnd; bad != nil {
			return bad
		}
		return fmt.Errorf("%w: %s: span %d decodes past output %d", ErrMismatch, r.opts.Name, i, outEnd)
	}
	if bad := c.f.badEnd; bad != nil {
		return bad
	}
	c.f.boundary = nil
	r.inflaters.Put(c.f)
	c.f, c.src = nil, nil
	return nil
}

// grow makes room in c.data for the output up to need, rounded up to whole
// pages (the next read of a file goes on from there), and returns the
// output's current end and the target.
func (c *cursor) grow(need, spanLen int64) (from int, target int64) {
	target = min(spanLen, (need+4095)&^4095)
	if int64(cap(c.data)) < target {
		// A span of the default spacing at once, longer ones by doubling.
		grown := make([]byte, len(c.data), max(target, min(spanLen, max(DefaultSpacing, 2*int64(cap(c.data))))))
		copy(grown, c.data)
		c.data = grown
	}
	from = len(c.data)
	c.data = c.data[:target]
	return from, target
}

// newSource returns the source of span i's blob bytes with its first batch
// fetched.
func (r *Reader) newSource(i int, need int64) (*chunkSource, error) {
	start, end := r.x.stored(i)
	src := &chunkSource{r: r, pos: start, end: end}
	src.expect(r.x, i, need)
	return src, src.fill()
}

// start sets c's decoder at its checkpoint: the window is read while the
// first batch of blob bytes is fetched.
func (r *Reader) start(c *cursor, need int64) error {
	x := r.x
	i := c.i
	s := &x.Spans[i]
	type result struct {
		w   []byte
		err error
	}
	win := make(chan result, 1)
	go func() {
		w, err := x.window(i)
		if err != nil && errors.Is(err, ErrBadIndex) {
			err = fmt.Errorf("gzindex: %s: %w", r.opts.Name, err)
		}
		win <- result{w, err}
	}()
	src, ferr := r.newSource(i, need)
	w := <-win
	if w.err != nil {
		return w.err
	}
	if ferr != nil {
		return ferr
	}
	f := r.inflaters.Get().(*inflater)
	f.badEnd = nil
	outEnd := x.spanEnd(i)
	last := i+1 == len(x.Spans)
	f.boundary = func(bit, out int64, _ []byte) bool {
		if last || out < outEnd {
			return false
		}
		if out > outEnd || bit != x.Spans[i+1].InBit {
			f.badEnd = fmt.Errorf("%w: %s: span %d ends at bit %d, output %d; the index says bit %d, output %d",
				ErrMismatch, r.opts.Name, i, bit, out, x.Spans[i+1].InBit, outEnd)
		}
		return true
	}
	if err := f.resetAt(src, s.InBit, s.Out, w.w); err != nil {
		r.inflaters.Put(f)
		return fmt.Errorf("%w: %s: span %d: %v", ErrMismatch, r.opts.Name, i, err)
	}
	c.f, c.src = f, src
	return nil
}

// chunkSource hands a span's decoder the blob's bytes from the span's start,
// fetched in batches of whole range-table chunks, each checked.
type chunkSource struct {
	r        *Reader
	pos, end int64  // next byte to hand out; the span's stored end
	buf      []byte // checked bytes [bufOff, bufOff+len(buf))
	bufOff   int64
	want     int64 // blob offset the decoder is expected to need up to
	batch    int64 // size of the last fetch
	fetchErr error
}

// expect notes that the decoder of span i must produce need bytes: it
// estimates the blob offset that takes from the span's average ratio, with a
// margin, so that one fetch usually brings it all.
func (s *chunkSource) expect(x *Index, i int, need int64) {
	start, end := x.stored(i)
	out := x.spanEnd(i) - x.Spans[i].Out
	est := end
	if out > 0 {
		est = start + int64(float64(end-start)*float64(need)/float64(out)*1.15) + 8<<10
	}
	s.want = min(max(s.want, est), end)
}

// fill fetches the next batch: at least up to want, at least twice the last
// batch, in whole chunks.
func (s *chunkSource) fill() error {
	t := s.r.x.Table
	from, _ := t.ChunkRange(s.pos)
	to := max(s.want, s.pos+max(minBatch, 2*s.batch))
	_, to = t.ChunkRange(min(to, s.end, s.r.x.BlobSize) - 1)
	buf, err := s.r.fetch(from, to)
	if err != nil {
		return err
	}
	s.buf, s.bufOff, s.batch = buf, from, to-from
	return nil
}

func (s *chunkSource) Read(p []byte) (int, error) {
	if s.pos >= s.end {
		return 0, io.EOF
	}
	if s.pos >= s.bufOff+int64(len(s.buf)) {
		if err := s.fill(); err != nil {
			s.fetchErr = err
			return 0, err
		}
	}
	n := copy(p, s.buf[s.pos-s.bufOff:min(int64(len(s.buf)), s.end-s.bufOff)])
	s.pos += int64(n)
	return n, nil
}
