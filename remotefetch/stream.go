package remotefetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/obdproject/obd/remotefetch/cache"
)

// How a response reaches readers and the cache file: its bytes are received into batches,
// buffers of up to streamBatch bytes of consecutive whole units. Readers waiting for a unit
// copy its bytes straight out of the batch as they arrive. Behind the receiver, a store
// goroutine writes each full batch into the cache file with one write and marks its units
// filled; only then does the batch let go of its buffer. So the socket is read while the
// previous batch is written, the cache file sees few large writes, a reader does not wait for
// its bytes to go through the file, and a reader that no longer finds a unit's bytes in memory
// finds them in the file.

// streamBatch is the size of a batch (at least one unit): large enough that writing it costs
// one system call for several units, small enough that a fetch holds little memory.
const streamBatch = 1 << 20

// smallBatch is the largest batch that gets a buffer of its own size instead of a pooled
// streamBatch one.
const smallBatch = 256 << 10

// storeQueue is how many received batches may wait for the store goroutine before the receiver
// waits: it lets a slow write overlap with receiving without buffering the whole response.
const storeQueue = 2

// unitCall is one in-flight fetch of a unit; done closes when it is stored or failed.
type unitCall struct {
	unit int
	done chan struct{}
	err  error

	mu    sync.Mutex
	avail int64         // bytes from the unit's start that have arrived
	buf   []byte        // where they are while non-nil; nil = they are in the cache file
	grown chan struct{} // closed (and replaced) when avail grows
}

func newUnitCall(unit int) *unitCall {
	return &unitCall{unit: unit, done: make(chan struct{}), grown: make(chan struct{})}
}

// attach makes buf the place where the unit's bytes arrive, from the start: a retry receives
// the unit anew, so nothing counts as arrived until it does.
func (c *unitCall) attach(buf []byte) {
	c.mu.Lock()
	c.buf, c.avail = buf, 0
	c.mu.Unlock()
}

// detach tells readers that the unit's arrived bytes are now in the cache file, so its buffer
// can be reused. It must only be called once they are written there.
func (c *unitCall) detach() {
	c.mu.Lock()
	c.buf = nil
	c.mu.Unlock()
}

// advance records that the first n bytes of the unit have arrived.
func (c *unitCall) advance(n int64) {
	c.mu.Lock()
	if n > c.avail {
		c.avail = n
		close(c.grown)
		c.grown = make(chan struct{})
	}
	c.mu.Unlock()
}

// read blocks until bytes [from, from+len(dst)) of the unit have arrived or the call is done.
// ready reports that they are readable: copied into dst (copied) if they are still in memory,
// else in the cache file. waited reports that read had to block. fetchErr is the fetch's error
// when it ended without them (nil when ctx ended).
func (c *unitCall) read(ctx context.Context, dst []byte, from int64) (ready, copied, waited bool, fetchErr error) {
	need := from + int64(len(dst))
	for {
		c.mu.Lock()
		if c.avail >= need {
			if c.buf != nil {
				copy(dst, c.buf[from:need])
			}
			copied = c.buf != nil
			c.mu.Unlock()
			return true, copied, waited, nil
		}
		grown := c.grown
		c.mu.Unlock()
		waited = true
		select {
		case <-c.done:
			return c.err == nil, false, true, c.err
		case <-grown:
		case <-ctx.Done():
			return false, false, true, nil
		}
	}
}

// waitStored blocks until the unit is stored or the call is done. It reports whether the unit
// is stored, else the fetch's error (nil when ctx ended).
func (c *unitCall) waitStored(ctx context.Context) (ok bool, fetchErr error) {
	select {
	case <-c.done:
		return c.err == nil, c.err
	case <-ctx.Done():
		return false, nil
	}
}

// batch is a run of consecutive units of one response and the buffer they arrive in.
type batch struct {
	first  int
	calls  []*unitCall
	pooled *[]byte // from Fetcher.batches; nil for a small batch
	buf    []byte  // the units' bytes
	recvd  int64   // how many of them have arrived
}

// newBatch takes a buffer for units first.. of calls and attaches it to them.
func (f *filler) newBatch(first int, calls []*unitCall) *batch {
	lay := f.entry.Layout()
	off, _ := lay.UnitRange(first)
	lastOff, lastN := lay.UnitRange(first + len(calls) - 1)
	n := lastOff + lastN - off
	bt := &batch{first: first, calls: calls}
	if n > smallBatch {
		bt.pooled = f.batches.Get().(*[]byte)
		bt.buf = (*bt.pooled)[:n]
	} else {
		bt.buf = make([]byte, n) // a lazy start's many small misses each hold little memory
	}
	for i, c := range calls {
		uoff, un := lay.UnitRange(first + i)
		c.attach(bt.buf[uoff-off : uoff-off+un : uoff-off+un])
	}
	return bt
}

// receive reads the batch's bytes from r, telling the waiting readers of each unit how far it
// has come.
func (f *filler) receive(r io.Reader, bt *batch) error {
	lay := f.entry.Layout()
	base, _ := lay.UnitRange(bt.first)
	i := 0 // first unit not yet whole
	for bt.recvd < int64(len(bt.buf)) {
		n, err := r.Read(bt.buf[bt.recvd:])
		bt.recvd += int64(n)
		for ; i < len(bt.calls); i++ {
			uoff, un := lay.UnitRange(bt.first + i)
			got := min(un, bt.recvd-(uoff-base))
			if got > 0 {
				bt.calls[i].advance(got)
			}
			if got < un {
				break
			}
		}
		if bt.recvd == int64(len(bt.buf)) {
			return nil
		}
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return fmt.Errorf("remotefetch: body of %s at unit %d: %w", f.dgst, bt.first+i, err)
		}
	}
	return nil
}

// store writes what arrived of a batch into the cache file, releases the buffer and makes
// the batch's whole units present. It returns how many units it made present. A unit that
// arrived in part is written for its readers, who take its bytes from the file, but not
// made present. If a write fails, the buffer stays with the units (their bytes are nowhere
// else) and is not reused.
func (f *filler) store(bt *batch) (stored int, err error) {
	stored, whole := bt.whole(f.entry.Layout())
	base, _ := f.entry.Layout().UnitRange(bt.first)
	var done *cache.Writer
	if whole > 0 {
		if done, err = f.write(base, bt.buf[:whole]); err != nil {
			return 0, err
		}
	}
	if bt.recvd > whole {
		part, err := f.write(base+whole, bt.buf[whole:bt.recvd])
		if err != nil {
			if done != nil {
				done.Abort()
			}
			return 0, err
		}
		part.Abort()
	}
	for _, c := range bt.calls {
		c.detach() // readers find the bytes in the file now, a unit that arrived in part too
	}
	if bt.pooled != nil {
		f.batches.Put(bt.pooled)
	}
	if done == nil {
		return 0, nil
	}
	if err := f.commit(done, whole); err != nil {
		return 0, err
	}
	return stored, nil
}

// whole counts the units of the batch that arrived whole and their bytes.
func (bt *batch) whole(lay cache.Layout) (units int, n int64) {
	base, _ := lay.UnitRange(bt.first)
	for i := range bt.calls {
		uoff, un := lay.UnitRange(bt.first + i)
		if uoff-base+un > bt.recvd {
			break
		}
		units, n = i+1, uoff-base+un
	}
	return units, n
}

// write begins a cache fill of p at off and stores p, leaving the commit to the caller.
func (f *filler) write(off int64, p []byte) (*cache.Writer, error) {
	w, err := f.entry.NewWriter(off, off+int64(len(p)))
	if err != nil {
		return nil, err
	}
	if _, err := w.WriteAt(p, off); err != nil {
		w.Abort()
		return nil, err
	}
	return w, nil
}

// commit commits w, which holds n fetched bytes, and verifies the blob in the background if
// that completed it.
func (f *filler) commit(w *cache.Writer, n int64) error {
	f.verifying.RLock()
	if err := f.failed(); err != nil {
		f.verifying.RUnlock()
		return err
	}
	complete, err := w.Commit()
	f.verifying.RUnlock()
	if err != nil {
		return err
	}
	f.stats.fetchedBytes(int(n))
	if complete {
		f.startVerify()
	}
	return nil
}

// fetchOnce requests the units of calls (consecutive, from first), hands their bytes to
// waiting readers as they arrive and stores them in batches behind the receiver. It returns
// how many units it stored whole and why it stopped early.
func (f *filler) fetchOnce(ctx context.Context, first int, calls []*unitCall) (stored int, err error) {
	lay := f.entry.Layout()
	off, _ := lay.UnitRange(first)
	lastOff, lastN := lay.UnitRange(first + len(calls) - 1)
	n := lastOff + lastN - off

	attemptCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	start := time.Now()
	r, closeBody, err := f.startAttempt(attemptCtx, cancel, off, n)
	if err != nil {
		return 0, err
	}
	defer closeBody()
	st := f.startStorer(cancel)
	recvErr := f.receiveAll(r, first, calls, st.queue)
	stored, storeErr := st.finish()
	if storeErr != nil {
		return stored, storeErr
	}
	if recvErr != nil {
		return stored, withCause(attemptCtx, recvErr)
	}
	f.latency.Observe(time.Since(start).Seconds())
	f.log.Debug("remotefetch: fetched", "off", off, "bytes", n, "took", time.Since(start))
	return stored, nil
}

// receiveAll receives the units of calls (consecutive, from first) from r in batches and
// queues each batch for storing, also one that arrived in part: its bytes were handed to
// readers and must be in the file.
func (f *filler) receiveAll(r io.Reader, first int, calls []*unitCall, queue chan<- *batch) error {
	per := int(max(1, streamBatch/f.entry.Layout().Unit))
	for i := 0; i < len(calls); i += per {
		bt := f.newBatch(first+i, calls[i:min(i+per, len(calls))])
		err := f.receive(r, bt)
		queue <- bt
		if err != nil {
			return err
		}
	}
	return nil
}

// storer is the goroutine behind a receiver that stores its batches in order. After a failed
// store it stores nothing more and cancels the attempt, so that the receiver stops too.
type storer struct {
	queue  chan *batch
	done   chan struct{}
	stored int   // units stored whole
	err    error // the failed store's, permanent
}

func (f *filler) startStorer(cancel context.CancelCauseFunc) *storer {
	s := &storer{queue: make(chan *batch, storeQueue), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for bt := range s.queue {
			if s.err != nil {
				continue
			}
			n, err := f.store(bt)
			s.stored += n
			if err != nil {
				s.err = permanent(err)
				cancel(s.err)
			}
		}
	}()
	return s
}

// finish waits until the queued batches are stored and returns what the storer did.
func (s *storer) finish() (stored int, err error) {
	close(s.queue)
	<-s.done
	return s.stored, s.err
}
