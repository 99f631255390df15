package coldstart

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync/atomic"
	"testing"
)

func TestRelayForwardsAndCountsResponseBytes(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = w.Write(body)
	}))
	defer srv.Close()
	relay, err := StartRelay(srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()

	client := &http.Client{Transport: &http.Transport{}}
	for range 2 {
		resp, err := client.Post("http://"+relay.Addr+"/blob", "text/plain", bytes.NewReader(make([]byte, 4096)))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !bytes.Equal(got, body) {
			t.Fatalf("relayed body: %d bytes, err %v; want the 1 MiB body", len(got), err)
		}
	}
	// Two bodies plus two sets of response headers; the request bodies are not counted.
	if n := relay.BytesDown(); n < 2*int64(len(body)) || n > 2*int64(len(body))+2048 {
		t.Fatalf("BytesDown = %d, want two bodies (%d) plus headers", n, 2*len(body))
	}
}

func TestRelayCloseDropsOpenConnections(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			_, _ = io.Copy(io.Discard, c) // a silent upstream
		}
	}()
	relay, err := StartRelay(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", relay.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	_ = relay.Close() // must not hang on the open connection
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Fatal("read from a closed relay succeeded")
	}
}

func TestRelayUnreachableUpstreamClosesClient(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	relay, err := StartRelay(dead)
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	resp, err := http.Get("http://" + relay.Addr + "/v2/")
	if err == nil {
		resp.Body.Close()
		t.Fatal("a request through a relay to a dead upstream succeeded")
	}
}

// countAtWrite is a writer that records, at each write, the count its countingWriter shows.
type countAtWrite struct {
	n    *atomic.Int64
	seen []int64
	take int // bytes each write takes; the rest is refused
}

func (w *countAtWrite) Write(p []byte) (int, error) {
	w.seen = append(w.seen, w.n.Load())
	if len(p) > w.take {
		return w.take, io.ErrShortWrite
	}
	return len(p), nil
}

// The count includes bytes as soon as they may reach the client, and only those taken.
func TestCountingWriterCountsBeforeTheBytesArrive(t *testing.T) {
	var n atomic.Int64
	w := &countAtWrite{n: &n, take: 100}
	cw := countingWriter{w, &n}
	if _, err := cw.Write(make([]byte, 64)); err != nil {
		t.Fatal(err)
	}
	if _, err := cw.Write(make([]byte, 300)); err == nil {
		t.Fatal("a short write reported no error")
	}
	if want := []int64{64, 64 + 300}; !slices.Equal(w.seen, want) {
		t.Fatalf("count seen by the writes: %v, want %v", w.seen, want)
	}
	if got := n.Load(); got != 164 {
		t.Fatalf("count after a short write: %d, want 164", got)
	}
}
