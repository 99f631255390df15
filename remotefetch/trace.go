package remotefetch

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/opencontainers/go-digest"

	"github.com/obdproject/obd/blocktrace"
)

const (
	prefetchWorker = 8
	// prefetchMergeGap: a replay fetches two ranges of a blob this close together with one
	// request. The gap's bytes cost less than a request does (its round trip, and the
	// registry's and our per-request work, which bound a replay on a small machine).
	prefetchMergeGap = 4 << 10
	// traceMergeAt: a blob's recorded ranges are merged when they reach this many, so that
	// a long recording's list stays short.
	traceMergeAt = 4096
)

// tracer collects reads while a trace is recording.
type tracer struct {
	on    atomic.Bool
	mu    sync.Mutex
	blobs map[digest.Digest]*blocktrace.Blob
	order []digest.Digest
	reads int64 // reads recorded so far, numbering blocktrace.Range.First
}

// StartTrace starts recording every ReadAt of every Blob (a running recording restarts).
func (f *Fetcher) StartTrace() {
	f.tracer.mu.Lock()
	f.tracer.blobs, f.tracer.order, f.tracer.reads = map[digest.Digest]*blocktrace.Blob{}, nil, 0
	f.tracer.on.Store(true)
	f.tracer.mu.Unlock()
}

// StopTrace stops recording and returns what was read, blobs in order of first read, each
// blob's ranges merged (blocktrace.Merge with gap 0).
func (f *Fetcher) StopTrace() blocktrace.Trace {
	f.tracer.mu.Lock()
	defer f.tracer.mu.Unlock()
	f.tracer.on.Store(false)
	var t blocktrace.Trace
	for _, d := range f.tracer.order {
		tb := f.tracer.blobs[d]
		tb.Ranges = blocktrace.Merge(tb.Ranges, 0)
		t.Blobs = append(t.Blobs, *tb)
	}
	f.tracer.blobs, f.tracer.order = nil, nil
	return t
}

// RecordRead enters a read of n bytes of b at off into a running trace without reading, as
// if it were read now: for the reads that opening a layer made once and that every later user
// of the opened layer relies on, so that a trace holds them whether or not the layer was
// already open when the trace started. The range is clipped to the blob.
func (b *Blob) RecordRead(off, n int64) {
	if off < 0 || off >= b.size || n <= 0 {
		return
	}
	b.f.recordTrace(b, off, min(n, b.size-off))
}

func (f *Fetcher) recordTrace(b *Blob, off, n int64) {
	if !f.tracer.on.Load() {
		return
	}
	f.tracer.mu.Lock()
	defer f.tracer.mu.Unlock()
	if f.tracer.blobs == nil {
		return
	}
	tb := f.tracer.blobs[b.dgst]
	if tb == nil {
		tb = &blocktrace.Blob{Ref: b.ref, Digest: b.dgst, Size: b.size}
		if t := b.table; t != nil {
			tb.RangeTable, tb.RangeTableOffset = t.table, t.offset
		}
		f.tracer.blobs[b.dgst] = tb
		f.tracer.order = append(f.tracer.order, b.dgst)
	}
	f.tracer.reads++
	tb.Ranges = append(tb.Ranges, blocktrace.Range{Off: off, Len: n, First: f.tracer.reads})
	if len(tb.Ranges) > traceMergeAt {
		tb.Ranges = blocktrace.Merge(tb.Ranges, 0)
	}
}

// Prefetch replays a trace: it fetches every traced range into the cache, several at once,
// in the order the recording first read them. Each range gets ReadTimeout; the first errors
// are joined into the result.
func (f *Fetcher) Prefetch(ctx context.Context, t blocktrace.Trace) error {
	type job struct {
		b  *Blob
		rg blocktrace.Range
	}
	jobs := make(chan job)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	fail := func(err error) {
		mu.Lock()
		if len(errs) < 8 {
			errs = append(errs, err)
		}
		mu.Unlock()
	}
	for range prefetchWorker {
		wg.Go(func() {
			for j := range jobs {
				rctx, cancel := context.WithTimeout(ctx, f.opts.ReadTimeout)
				if err := j.b.FillRange(rctx, j.rg.Off, j.rg.Len); err != nil {
					fail(err)
				}
				cancel()
			}
		})
	}
	var (
		opened []*Blob
		queue  []job
	)
	for _, tb := range t.Blobs {
		opts := []OpenOption{func(o *openOptions) { o.replay = true }}
		if tb.RangeTable != "" {
			opts = append(opts, WithRangeTable(tb.RangeTable, tb.RangeTableOffset))
		}
		b, err := f.Open(ctx, tb.Ref, tb.Digest, tb.Size, opts...)
		if err != nil {
			fail(err)
			continue
		}
		opened = append(opened, b)
		for _, rg := range blocktrace.Merge(slices.Clone(tb.Ranges), prefetchMergeGap) {
			queue = append(queue, job{b, rg})
		}
	}
	slices.SortStableFunc(queue, func(a, b job) int { return blocktrace.CompareFirst(a.rg, b.rg) })
	for _, j := range queue {
		select {
		case jobs <- j:
		case <-ctx.Done():
		}
	}
	close(jobs)
	wg.Wait()
	for _, b := range opened {
		if err := b.Close(); err != nil {
			fail(err)
		}
	}
	if err := ctx.Err(); err != nil {
		fail(err)
	}
	return errors.Join(errs...)
}
