package remotefetch

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/opencontainers/go-digest"
)

// ErrBadTrace reports a trace file that cannot be used.
var ErrBadTrace = errors.New("remotefetch: bad trace")

const (
	traceVersion   = 1
	maxTraceBytes  = 64 << 20
	prefetchWorker = 8
	// prefetchMergeGap: a replay fetches two ranges of a blob this close together with one
	// request. The gap's bytes cost less than a request does (its round trip, and the
	// registry's and our per-request work, which bound a replay on a small machine).
	prefetchMergeGap = 4 << 10
)

// Trace lists which ranges of which blobs were read while tracing, e.g. during a container's
// start. Replaying it with Prefetch warms the cache for the next start.
type Trace struct {
	Blobs []TraceBlob `json:"blobs"`
}

// TraceBlob is one blob of a Trace, with its ranges sorted and merged.
type TraceBlob struct {
	Ref    string        `json:"ref"`
	Digest digest.Digest `json:"digest"`
	Size   int64         `json:"size"`
	Ranges []TraceRange  `json:"ranges"`
}

// TraceRange is the byte range [Off, Off+Len). First orders the ranges of all blobs by when
// they were first read while recording (1 is the first read; 0, in older traces, unknown),
// so that a replay fetches first what the workload needs first.
type TraceRange struct {
	Off   int64 `json:"off"`
	Len   int64 `json:"len"`
	First int64 `json:"first,omitempty"`
}

// tracer collects reads while a trace is recording.
type tracer struct {
	on    atomic.Bool
	mu    sync.Mutex
	blobs map[digest.Digest]*TraceBlob
	order []digest.Digest
	reads int64 // reads recorded so far, numbering TraceRange.First
}

// StartTrace starts recording every ReadAt of every Blob (a running recording restarts).
func (f *Fetcher) StartTrace() {
	f.tracer.mu.Lock()
	f.tracer.blobs, f.tracer.order, f.tracer.reads = map[digest.Digest]*TraceBlob{}, nil, 0
	f.tracer.on.Store(true)
	f.tracer.mu.Unlock()
}

// StopTrace stops recording and returns what was read, blobs in order of first read.
func (f *Fetcher) StopTrace() Trace {
	f.tracer.mu.Lock()
	defer f.tracer.mu.Unlock()
	f.tracer.on.Store(false)
	var t Trace
	for _, d := range f.tracer.order {
		tb := f.tracer.blobs[d]
		tb.Ranges = mergeRanges(tb.Ranges, 0)
		t.Blobs = append(t.Blobs, *tb)
	}
	f.tracer.blobs, f.tracer.order = nil, nil
	return t
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
		tb = &TraceBlob{Ref: b.ref, Digest: b.dgst, Size: b.size}
		f.tracer.blobs[b.dgst] = tb
		f.tracer.order = append(f.tracer.order, b.dgst)
	}
	f.tracer.reads++
	tb.Ranges = append(tb.Ranges, TraceRange{Off: off, Len: n, First: f.tracer.reads})
	if len(tb.Ranges) > 4096 {
		tb.Ranges = mergeRanges(tb.Ranges, 0)
	}
}

// mergeRanges sorts ranges and merges those that overlap or are at most gap bytes apart; a
// merged range was first read when the earliest of its parts was.
func mergeRanges(rs []TraceRange, gap int64) []TraceRange {
	slices.SortFunc(rs, func(a, b TraceRange) int { return cmp.Compare(a.Off, b.Off) })
	var out []TraceRange
	for _, r := range rs {
		if n := len(out); n > 0 && r.Off <= out[n-1].Off+out[n-1].Len+gap {
			last := &out[n-1]
			last.Len = max(last.Len, r.Off+r.Len-last.Off)
			last.First = min(firstOrLast(last.First), firstOrLast(r.First))
			continue
		}
		out = append(out, r)
	}
	return out
}

// firstOrLast is a range's First for ordering: unknown (0) sorts after every known one.
func firstOrLast(first int64) int64 {
	if first <= 0 {
		return math.MaxInt64
	}
	return first
}

// WriteTo writes t as JSON.
func (t Trace) WriteTo(w io.Writer) (int64, error) {
	b, err := json.Marshal(struct {
		Version int `json:"version"`
		Trace
	}{traceVersion, t})
	if err != nil {
		return 0, fmt.Errorf("remotefetch: encode trace: %w", err)
	}
	n, err := w.Write(append(b, '\n'))
	return int64(n), err
}

// ReadTrace parses and validates a trace written by Trace.WriteTo.
func ReadTrace(r io.Reader) (Trace, error) {
	var file struct {
		Version int `json:"version"`
		Trace
	}
	dec := json.NewDecoder(io.LimitReader(r, maxTraceBytes))
	if err := dec.Decode(&file); err != nil {
		return Trace{}, fmt.Errorf("%w: %v", ErrBadTrace, err)
	}
	if file.Version != traceVersion {
		return Trace{}, fmt.Errorf("%w: version %d, want %d", ErrBadTrace, file.Version, traceVersion)
	}
	for i, tb := range file.Blobs {
		if err := tb.Digest.Validate(); err != nil {
			return Trace{}, fmt.Errorf("%w: blob %d: digest: %v", ErrBadTrace, i, err)
		}
		if tb.Size < 0 {
			return Trace{}, fmt.Errorf("%w: blob %s: negative size", ErrBadTrace, tb.Digest)
		}
		for _, rg := range tb.Ranges {
			if rg.Off < 0 || rg.Len <= 0 || rg.Off > tb.Size || rg.Len > tb.Size-rg.Off || rg.First < 0 {
				return Trace{}, fmt.Errorf("%w: blob %s: range %d+%d outside size %d", ErrBadTrace, tb.Digest, rg.Off, rg.Len, tb.Size)
			}
		}
	}
	return file.Trace, nil
}

// Prefetch replays a trace: it fetches every traced range into the cache, several at once,
// in the order the recording first read them. Each range gets ReadTimeout; the first errors
// are joined into the result.
func (f *Fetcher) Prefetch(ctx context.Context, t Trace) error {
	type job struct {
		b  *Blob
		rg TraceRange
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
		b, err := f.Open(ctx, tb.Ref, tb.Digest, tb.Size)
		if err != nil {
			fail(err)
			continue
		}
		opened = append(opened, b)
		for _, rg := range mergeRanges(slices.Clone(tb.Ranges), prefetchMergeGap) {
			queue = append(queue, job{b, rg})
		}
	}
	slices.SortStableFunc(queue, func(a, b job) int {
		return cmp.Compare(firstOrLast(a.rg.First), firstOrLast(b.rg.First))
	})
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
