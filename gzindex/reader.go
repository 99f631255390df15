package gzindex

import (
	"bytes"
	"container/list"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync"
)

// ErrMismatch reports blob bytes that do not match the index: a span whose
// stored bytes have another digest or do not decode to the span's output.
var ErrMismatch = errors.New("gzindex: blob does not match its index")

// DefaultCacheBytes bounds a Reader's inflated spans unless told otherwise.
const DefaultCacheBytes = 32 << 20

// ReaderOptions configures NewReader.
type ReaderOptions struct {
	// CacheBytes bounds the inflated spans kept (0 = DefaultCacheBytes). At
	// least the spans a read is using are kept, whatever the bound.
	CacheBytes int64
	// Name names the blob in errors (e.g. its digest).
	Name string
}

// Reader serves the uncompressed stream of a blob through its index. It is
// safe for concurrent use; concurrent reads of one span inflate it once.
type Reader struct {
	blob io.ReaderAt
	x    *Index
	opts ReaderOptions

	mu    sync.Mutex
	spans map[int]*spanEntry
	lru   list.List // of int (span index), most recent at the front
	held  int64     // bytes of completed spans in spans

	inflaters sync.Pool
}

type spanEntry struct {
	done chan struct{}
	data []byte
	err  error
	elem *list.Element
}

// NewReader returns a reader of x's stream over blob (x.BlobSize bytes). x
// must be valid (Decode and Build return valid indexes).
func NewReader(blob io.ReaderAt, x *Index, opts ReaderOptions) *Reader {
	if opts.CacheBytes <= 0 {
		opts.CacheBytes = DefaultCacheBytes
	}
	if opts.Name == "" {
		opts.Name = "blob"
	}
	r := &Reader{blob: blob, x: x, opts: opts, spans: map[int]*spanEntry{}}
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
	n := 0
	for n < len(p) {
		at := off + int64(n)
		if at >= r.x.Size {
			return n, io.EOF
		}
		i := r.x.span(at)
		data, err := r.spanData(i)
		if err != nil {
			return n, err
		}
		n += copy(p[n:], data[at-r.x.Spans[i].Out:])
	}
	return n, nil
}

// spanData returns span i inflated, from the cache or by loading it.
func (r *Reader) spanData(i int) ([]byte, error) {
	r.mu.Lock()
	if e, ok := r.spans[i]; ok {
		if e.elem != nil {
			r.lru.MoveToFront(e.elem)
		}
		r.mu.Unlock()
		<-e.done
		return e.data, e.err
	}
	e := &spanEntry{done: make(chan struct{})}
	r.spans[i] = e
	r.mu.Unlock()

	e.data, e.err = r.load(i)

	r.mu.Lock()
	if e.err != nil {
		delete(r.spans, i)
	} else {
		e.elem = r.lru.PushFront(i)
		r.held += int64(len(e.data))
		for r.held > r.opts.CacheBytes && r.lru.Len() > 1 {
			back := r.lru.Back()
			j := back.Value.(int)
			old := r.spans[j]
			r.lru.Remove(back)
			delete(r.spans, j)
			r.held -= int64(len(old.data))
		}
	}
	r.mu.Unlock()
	close(e.done)
	return e.data, e.err
}

// load fetches span i's stored bytes, checks their digest and inflates them.
func (r *Reader) load(i int) ([]byte, error) {
	x := r.x
	s := x.Spans[i]
	start, end := x.stored(i)
	stored := make([]byte, end-start)
	if _, err := r.blob.ReadAt(stored, start); err != nil && !(err == io.EOF && end == x.BlobSize) {
		return nil, fmt.Errorf("gzindex: %s: span %d: read blob bytes [%d, %d): %w", r.opts.Name, i, start, end, err)
	}
	if sha256.Sum256(stored) != s.Digest {
		return nil, fmt.Errorf("%w: %s: span %d: bytes [%d, %d) have another digest", ErrMismatch, r.opts.Name, i, start, end)
	}
	outEnd := x.spanEnd(i)
	if x.Kind == KindRaw {
		return stored, nil
	}
	f := r.inflaters.Get().(*inflater)
	defer func() {
		f.boundary = nil
		r.inflaters.Put(f)
	}()
	var bad error
	last := i+1 == len(x.Spans)
	f.boundary = func(bit, out int64, _ []byte) bool {
		if last || out < outEnd {
			return false
		}
		if out > outEnd || bit != x.Spans[i+1].InBit {
			bad = fmt.Errorf("%w: %s: span %d ends at bit %d, output %d; the index says bit %d, output %d",
				ErrMismatch, r.opts.Name, i, bit, out, x.Spans[i+1].InBit, outEnd)
		}
		return true
	}
	window, err := x.Spans[i].window()
	if err != nil {
		return nil, fmt.Errorf("gzindex: %s: span %d: %w", r.opts.Name, i, err)
	}
	if err := f.resetAt(bytes.NewReader(stored), s.InBit, s.Out, window); err != nil {
		return nil, fmt.Errorf("%w: %s: span %d: %v", ErrMismatch, r.opts.Name, i, err)
	}
	data := make([]byte, outEnd-s.Out)
	if _, err := io.ReadFull(f, data); err != nil {
		if bad != nil {
			return nil, bad
		}
		return nil, fmt.Errorf("%w: %s: span %d: inflate: %v", ErrMismatch, r.opts.Name, i, err)
	}
	var one [1]byte
	if n, err := f.Read(one[:]); n != 0 || err != io.EOF {
		if bad != nil {
			return nil, bad
		}
		return nil, fmt.Errorf("%w: %s: span %d decodes past output %d", ErrMismatch, r.opts.Name, i, outEnd)
	}
	if bad != nil {
		return nil, bad
	}
	return data, nil
}
