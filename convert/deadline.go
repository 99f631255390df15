package convert

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"
)

// DefaultRegistryTimeout is RegistryOptions.Timeout when it is 0.
const DefaultRegistryTimeout = time.Minute

// silenceGuard bounds every wait on a registry: a request whose upload, response headers
// or response body makes no progress for idle is cancelled with an error naming the host.
// A whole request may take as long as it keeps moving: layers are large.
type silenceGuard struct {
	rt   http.RoundTripper
	idle time.Duration
}

// guardClient puts a silenceGuard around c's transport (once: containerd calls its client
// hook again on copies of the client).
func guardClient(c *http.Client, idle time.Duration) {
	if _, ok := c.Transport.(*silenceGuard); ok {
		return
	}
	rt := c.Transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	c.Transport = &silenceGuard{rt: rt, idle: idle}
}

func (g *silenceGuard) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithCancelCause(req.Context())
	timer := time.AfterFunc(g.idle, func() {
		cancel(fmt.Errorf("registry %s silent for %s (%s %s)", req.URL.Host, g.idle, req.Method, req.URL.Path))
	})
	out := req.WithContext(ctx)
	if req.Body != nil && req.Body != http.NoBody {
		out.Body = &moving{ReadCloser: req.Body, timer: timer, idle: g.idle}
	}
	resp, err := g.rt.RoundTrip(out)
	if err != nil {
		timer.Stop()
		if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil && req.Context().Err() == nil {
			err = fmt.Errorf("%w: %w", cause, err)
		}
		cancel(nil)
		return nil, err
	}
	timer.Reset(g.idle)
	resp.Body = &moving{ReadCloser: resp.Body, timer: timer, idle: g.idle, ctx: ctx, done: cancel}
	return resp, nil
}

// moving restarts the silence timer on every read that moves bytes.
type moving struct {
	io.ReadCloser
	timer *time.Timer
	idle  time.Duration
	ctx   context.Context         // response bodies: the request's context
	done  context.CancelCauseFunc // response bodies: ends the request on Close
}

func (p *moving) Read(b []byte) (int, error) {
	n, err := p.ReadCloser.Read(b)
	if n > 0 {
		p.timer.Reset(p.idle)
	}
	if err != nil && err != io.EOF && p.ctx != nil {
		if cause := context.Cause(p.ctx); cause != nil && p.ctx.Err() != nil {
			err = fmt.Errorf("%w: %w", cause, err)
		}
	}
	return n, err
}

func (p *moving) Close() error {
	err := p.ReadCloser.Close()
	if p.done != nil {
		p.timer.Stop()
		p.done(nil)
	}
	return err
}
