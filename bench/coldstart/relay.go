package coldstart

import (
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// Relay is a TCP relay on 127.0.0.1 in front of a registry that counts the bytes the registry
// sends, at the TCP level, so every client (containerd, bdd, the stargz snapshotter) is measured
// the same way: blobs, manifests and HTTP headers alike.
type Relay struct {
	// Addr is the relay's "127.0.0.1:port"; clients use it as the registry host.
	Addr string

	upstream string
	ln       net.Listener
	down     atomic.Int64
	wg       sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

// StartRelay listens on a free port of 127.0.0.1 and forwards each connection to upstream
// ("host:port").
func StartRelay(upstream string) (*Relay, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("relay: listen: %w", err)
	}
	r := &Relay{Addr: ln.Addr().String(), upstream: upstream, ln: ln, conns: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.accept()
	return r, nil
}

// BytesDown returns how many bytes the upstream has sent to clients since the relay started.
func (r *Relay) BytesDown() int64 { return r.down.Load() }

// Close stops accepting, drops every open connection and waits for the copies to end.
func (r *Relay) Close() error {
	r.mu.Lock()
	r.closed = true
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	err := r.ln.Close()
	r.wg.Wait()
	return err
}

func (r *Relay) accept() {
	defer r.wg.Done()
	for {
		client, err := r.ln.Accept()
		if err != nil {
			return // closed
		}
		r.wg.Add(1)
		go r.serve(client)
	}
}

// track registers c for Close; it reports false (and closes c) once the relay is closing.
func (r *Relay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		c.Close()
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *Relay) untrack(c net.Conn) {
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
	c.Close()
}

func (r *Relay) serve(client net.Conn) {
	defer r.wg.Done()
	if !r.track(client) {
		return
	}
	defer r.untrack(client)
	server, err := net.Dial("tcp", r.upstream)
	if err != nil {
		return // the client sees the connection close, like a refused upstream
	}
	if !r.track(server) {
		return
	}
	defer r.untrack(server)

	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(server, client)
		closeWrite(server)
	}()
	_, _ = io.CopyBuffer(countingWriter{client, &r.down}, server, make([]byte, 256<<10))
	closeWrite(client)
	<-done
}

// closeWrite half-closes a TCP connection so the peer sees EOF while replies can still flow.
func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

// Write counts p before writing it: a client may read the bytes, and its caller ask for the
// count, before Write returns. Bytes the write does not take are taken off again.
func (c countingWriter) Write(p []byte) (int, error) {
	c.n.Add(int64(len(p)))
	n, err := c.w.Write(p)
	c.n.Add(int64(n - len(p)))
	return n, err
}
