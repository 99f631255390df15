package remotefetch

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"time"
)

// How range reads use mirrors (hosts.toml hosts before the registry itself, e.g. a zone's
// pull-through cache). A mirror is asked first, but a read never waits on a mirror that cannot
// serve it when the next host can:
//
//   - A mirror that does not answer within mirrorWait, or cannot be reached at all, is passed
//     over for mirrorAvoid by every blob of the Fetcher.
//   - A mirror that answers a range request with the whole blob (200) does not hold it: a
//     pull-through cache (distribution's proxy mode) caches only blobs someone reads whole,
//     and streams what it lacks from the upstream in full. The read goes to the next host, and
//     this blob skips that mirror for mirrorMissAvoid. Only if no later host serves the range
//     is the mirror's response used, read up to the range (so a node without credentials for
//     the registry still works through the mirror, at the cost of the bytes before the range).
//   - A mirror that answers 404 or 5xx (say its upstream is gone) is skipped the same way.
//
// The last host, the registry itself, is never passed over.
const (
	mirrorAvoid     = 10 * time.Second
	mirrorMissAvoid = 2 * time.Second
)

// errMirrorSlow cancels a request to a mirror that sent no response headers in time.
var errMirrorSlow = errors.New("the mirror did not answer in time")

// hostHealth remembers which hosts to pass over for a while; it is shared by a Fetcher's blobs.
type hostHealth struct {
	mu    sync.Mutex
	until map[string]time.Time // host -> passed over until then
}

func (h *hostHealth) avoid(host string, d time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.until == nil {
		h.until = map[string]time.Time{}
	}
	h.until[host] = time.Now().Add(d)
}

func (h *hostHealth) avoided(host string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return time.Now().Before(h.until[host])
}

// mirrorWait is how long a mirror has to send response headers: a share of the stall timeout,
// so a hung mirror leaves time to ask the next host within the same attempt.
func mirrorWait(stall time.Duration) time.Duration {
	return min(max(stall/2, 10*time.Millisecond), 3*time.Second)
}

// wholeBlobAnswer is a mirror's 200 to a range request, kept as the last resort of a get.
type wholeBlobAnswer struct {
	resp *http.Response
	host string
}

func (w *wholeBlobAnswer) Error() string {
	return "remotefetch: mirror " + w.host + " answered a range request with the whole blob"
}

// getFromMirror is getFromHost for a mirror: it bounds the wait for response headers and turns
// a whole-blob answer to a partial range into a *wholeBlobAnswer error.
func (r *remote) getFromMirror(ctx context.Context, i int, off, n int64) (io.ReadCloser, error) {
	h := &r.hosts[i]
	mctx, cancel := context.WithCancelCause(ctx)
	timer := time.AfterFunc(r.mirrorWait, func() { cancel(errMirrorSlow) })
	body, err := r.getFromHost(mctx, h, off, n)
	if !timer.Stop() && err == nil {
		body.Close() // the headers came as the timer fired: treat it as slow
		err = errMirrorSlow
	}
	if err != nil {
		cancel(nil)
		if errors.Is(context.Cause(mctx), errMirrorSlow) || errors.Is(err, errMirrorSlow) {
			r.health.avoid(h.Host, mirrorAvoid)
			return nil, errMirrorSlow
		}
		var whole *wholeBlobAnswer
		if errors.As(err, &whole) {
			whole.resp.Body = cancelOnClose{whole.resp.Body, whole.resp.Body, cancel}
		}
		return nil, err
	}
	if b, ok := body.(rangeBody); ok {
		b.closer = cancelOnClose{nil, b.closer, cancel}
		return b, nil
	}
	return cancelOnClose{body, body, cancel}, nil
}

// cancelOnClose ends a request's context when its body is closed.
type cancelOnClose struct {
	io.Reader
	closer io.Closer
	cancel context.CancelCauseFunc
}

func (c cancelOnClose) Close() error {
	err := c.closer.Close()
	c.cancel(nil)
	return err
}

// skipMirror reports whether this blob's get passes over mirror i for now.
func (r *remote) skipMirror(i int) bool {
	r.mu.Lock()
	miss := time.Now().Before(r.mirrorMiss[i])
	r.mu.Unlock()
	return miss || r.health.avoided(r.hosts[i].Host)
}

// missedMirror records that mirror i cannot serve this blob for now.
func (r *remote) missedMirror(i int) {
	r.mu.Lock()
	if r.mirrorMiss == nil {
		r.mirrorMiss = map[int]time.Time{}
	}
	r.mirrorMiss[i] = time.Now().Add(mirrorMissAvoid)
	r.mu.Unlock()
}
