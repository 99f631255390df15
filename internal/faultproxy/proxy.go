// Package faultproxy is an HTTP proxy for tests and benchmarks that sits between a client and
// a real server (a registry from internal/testregistry) and misbehaves on request: error
// bursts (5xx, 429), connection resets mid-body, truncated or corrupted bodies, stalls, wrong
// Content-Range, plus shaping (added latency per request, a shared bandwidth limit). It is
// test infrastructure outside the read path of docs/DESIGN.md.
//
// Faults apply to requests the filter selects (by default GETs of blobs); everything else,
// such as token requests and uploads, passes through untouched.
package faultproxy

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Fault is one kind of misbehaviour.
type Fault int

const (
	None              Fault = iota
	Status500               // 500 Internal Server Error, no body
	Status503               // 503 Service Unavailable
	Status429               // 429 Too Many Requests with Retry-After: 0
	Reset                   // half the body, then a TCP reset
	Truncate                // half the body, then the connection closes (body shorter than Content-Length)
	Stall                   // half the body, then nothing for the stall duration (or until the client leaves)
	WrongContentRange       // a 206 whose Content-Range names a range shifted by one byte
	Corrupt                 // the right headers, one byte of the body flipped
)

var faultNames = [...]string{"none", "500", "503", "429", "reset", "truncate", "stall", "wrong-content-range", "corrupt"}

func (f Fault) String() string {
	if f >= 0 && int(f) < len(faultNames) {
		return faultNames[f]
	}
	return "fault(" + strconv.Itoa(int(f)) + ")"
}

// Shaping emulates a slow link.
type Shaping struct {
	Latency   time.Duration // added before each request is forwarded (one round trip)
	Bandwidth int64         // bytes/s of response bodies over all connections; 0 = unlimited
}

// Proxy forwards to one upstream server.
type Proxy struct {
	// Host is the proxy's "127.0.0.1:port"; URL is "http://" + Host.
	Host, URL string

	upstream  *url.URL // under mu
	transport *http.Transport
	srv       *http.Server

	mu       sync.Mutex
	queue    []Fault // faults for the next selected requests, in order
	rate     float64 // probability of a random fault per selected request
	random   []Fault
	rng      *rand.Rand
	stallFor time.Duration
	shaping  Shaping
	filter   func(*http.Request) bool
	link     time.Time // when the shaped link is free again

	requests, injected atomic.Int64
}

// New starts a proxy on 127.0.0.1 in front of upstream (e.g. "http://127.0.0.1:5000").
func New(upstream string) (*Proxy, error) {
	u, err := url.Parse(upstream)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("faultproxy: upstream %q: not a URL", upstream)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	p := &Proxy{
		Host: ln.Addr().String(), URL: "http://" + ln.Addr().String(), upstream: u,
		transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true},
		rng:       rand.New(rand.NewPCG(1, 2)),
		filter: func(r *http.Request) bool {
			return r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/")
		},
	}
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = p.srv.Serve(ln) }()
	return p, nil
}

// Close stops the proxy and drops its connections, stalled ones included.
func (p *Proxy) Close() error {
	err := p.srv.Close()
	p.transport.CloseIdleConnections()
	return err
}

// CloseIdleConnections closes the proxy's idle connections to the upstream.
func (p *Proxy) CloseIdleConnections() { p.transport.CloseIdleConnections() }

// InjectNext makes the next n selected requests fail with f (queued after earlier injections).
func (p *Proxy) InjectNext(f Fault, n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for range n {
		p.queue = append(p.queue, f)
	}
}

// SetRandom gives each selected request probability rate of one of faults, chosen by a
// generator seeded with seed. Rate 0 turns random faults off.
func (p *Proxy) SetRandom(rate float64, seed uint64, faults ...Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rate, p.random, p.rng = rate, faults, rand.New(rand.NewPCG(seed, 2))
}

// SetStall sets how long a Stall lasts before the body resumes; 0 (default) = until the
// client gives up.
func (p *Proxy) SetStall(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stallFor = d
}

// SetShaping sets latency and bandwidth.
func (p *Proxy) SetShaping(s Shaping) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.shaping = s
}

// SetUpstream points the proxy at another server, for setups where the upstream needs to know
// the proxy's address before it starts (e.g. a token realm behind the proxy).
func (p *Proxy) SetUpstream(upstream string) error {
	u, err := url.Parse(upstream)
	if err != nil || u.Host == "" {
		return fmt.Errorf("faultproxy: upstream %q: not a URL", upstream)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.upstream = u
	return nil
}

// SetFilter chooses which requests faults apply to (shaping applies to all).
func (p *Proxy) SetFilter(f func(*http.Request) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.filter = f
}

// Requests counts requests received; Injected counts faults applied.
func (p *Proxy) Requests() int64 { return p.requests.Load() }

// Injected counts faults applied so far.
func (p *Proxy) Injected() int64 { return p.injected.Load() }

func (p *Proxy) pick(r *http.Request) (Fault, Shaping, time.Duration, *url.URL) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := None
	if p.filter(r) {
		switch {
		case len(p.queue) > 0:
			f, p.queue = p.queue[0], p.queue[1:]
		case p.rate > 0 && len(p.random) > 0 && p.rng.Float64() < p.rate:
			f = p.random[p.rng.IntN(len(p.random))]
		}
	}
	return f, p.shaping, p.stallFor, p.upstream
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.requests.Add(1)
	fault, shaping, stallFor, upstream := p.pick(r)
	if fault != None {
		p.injected.Add(1)
	}
	if shaping.Latency > 0 && !sleep(r.Context(), shaping.Latency) {
		return
	}
	switch fault {
	case Status500, Status503:
		code := map[Fault]int{Status500: 500, Status503: 503}[fault]
		http.Error(w, "faultproxy: injected", code)
		return
	case Status429:
		w.Header().Set("Retry-After", "0")
		http.Error(w, "faultproxy: injected", http.StatusTooManyRequests)
		return
	}

	out := r.Clone(r.Context())
	out.RequestURI = ""
	out.URL.Scheme, out.URL.Host = upstream.Scheme, upstream.Host
	resp, err := p.transport.RoundTrip(out)
	if err != nil {
		http.Error(w, "faultproxy: upstream: "+err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	if fault == WrongContentRange && resp.StatusCode == http.StatusPartialContent {
		w.Header().Set("Content-Range", shiftRange(resp.Header.Get("Content-Range")))
	}
	w.WriteHeader(resp.StatusCode)
	body := io.Reader(resp.Body)
	half := resp.ContentLength / 2
	switch fault {
	case Reset, Truncate, Stall:
		if resp.ContentLength > 0 {
			body = io.LimitReader(resp.Body, half)
		}
	case Corrupt:
		body = &corrupter{r: resp.Body, at: half}
	}
	if err := p.copyShaped(r.Context(), w, body, shaping.Bandwidth); err != nil {
		return
	}
	switch fault {
	case Reset:
		resetConn(w)
	case Stall:
		_ = http.NewResponseController(w).Flush()
		if stallFor <= 0 {
			<-r.Context().Done()
			return
		}
		if sleep(r.Context(), stallFor) {
			_ = p.copyShaped(r.Context(), w, resp.Body, shaping.Bandwidth)
		}
	}
	// Truncate: returning with less than Content-Length written makes the server close.
}

// copyShaped copies src to w in small chunks, flushing each, at most bandwidth bytes/s
// summed over all connections.
func (p *Proxy) copyShaped(ctx context.Context, w http.ResponseWriter, src io.Reader, bandwidth int64) error {
	rc := http.NewResponseController(w)
	buf := make([]byte, 32<<10)
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if bandwidth > 0 && !sleep(ctx, p.reserve(n, bandwidth)) {
				return ctx.Err()
			}
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
			if bandwidth > 0 {
				_ = rc.Flush()
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// reserve books n bytes on the shared link and returns how long to wait for them.
func (p *Proxy) reserve(n int, bandwidth int64) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if p.link.Before(now) {
		p.link = now
	}
	p.link = p.link.Add(time.Duration(float64(n) / float64(bandwidth) * float64(time.Second)))
	return p.link.Sub(now)
}

// resetConn flushes what was written and aborts the connection with a TCP RST.
func resetConn(w http.ResponseWriter) {
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	conn, _, err := rc.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tcp, ok := conn.(*net.TCPConn); ok {
		_ = tcp.SetLinger(0)
	}
	_ = conn.Close()
}

// shiftRange turns "bytes a-b/t" into "bytes a+1-b+1/t".
func shiftRange(cr string) string {
	var a, b int64
	var total string
	if _, err := fmt.Sscanf(cr, "bytes %d-%d/%s", &a, &b, &total); err != nil {
		return "bytes 1-1/1"
	}
	return fmt.Sprintf("bytes %d-%d/%s", a+1, b+1, total)
}

// corrupter flips one byte at offset at.
type corrupter struct {
	r   io.Reader
	at  int64
	pos int64
}

func (c *corrupter) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	if c.at >= c.pos && c.at < c.pos+int64(n) {
		b[c.at-c.pos] ^= 0xff
	}
	c.pos += int64(n)
	return n, err
}

func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
