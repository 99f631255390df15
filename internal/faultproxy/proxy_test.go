package faultproxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func startUpstream(t *testing.T, data []byte) *Proxy {
	t.Helper()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	}))
	t.Cleanup(up.Close)
	p, err := New(up.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func rangeGet(ctx context.Context, p *Proxy, rng string) (*http.Response, []byte, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.URL+"/v2/x/blobs/sha256:00", nil)
	req.Header.Set("Range", rng)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

func TestFaults(t *testing.T) {
	data := bytes.Repeat([]byte("abcdefgh"), 8192)
	p := startUpstream(t, data)
	want := data[100:50100]

	resp, body, err := rangeGet(t.Context(), p, "bytes=100-50099")
	if err != nil || resp.StatusCode != 206 || !bytes.Equal(body, want) {
		t.Fatalf("clean request: %v %v", resp, err)
	}
	for _, f := range []Fault{Status500, Status503, Status429} {
		p.InjectNext(f, 1)
		resp, _, err := rangeGet(t.Context(), p, "bytes=100-50099")
		if err != nil || resp.StatusCode < 429 {
			t.Fatalf("%v: status %v err %v", f, resp, err)
		}
	}
	for _, f := range []Fault{Reset, Truncate} {
		p.InjectNext(f, 1)
		_, body, err := rangeGet(t.Context(), p, "bytes=100-50099")
		if err == nil || len(body) >= len(want) || !bytes.Equal(body, want[:len(body)]) {
			t.Fatalf("%v: got %d bytes, err %v; want a short prefix and an error", f, len(body), err)
		}
	}
	p.InjectNext(WrongContentRange, 1)
	resp, _, _ = rangeGet(t.Context(), p, "bytes=100-50099")
	if got := resp.Header.Get("Content-Range"); got != "bytes 101-50100/65536" {
		t.Fatalf("wrong content range: %q", got)
	}
	p.InjectNext(Corrupt, 1)
	_, body, err = rangeGet(t.Context(), p, "bytes=100-50099")
	if err != nil || len(body) != len(want) || bytes.Equal(body, want) {
		t.Fatalf("corrupt: err %v, len %d, equal %v", err, len(body), bytes.Equal(body, want))
	}
	p.InjectNext(Stall, 1)
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, _, err = rangeGet(ctx, p, "bytes=100-50099")
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) < 150*time.Millisecond {
		t.Fatalf("stall: err %v after %v", err, time.Since(start))
	}
	if p.Injected() != 8 {
		t.Fatalf("injected %d faults, want 8", p.Injected())
	}
}

// TestShaping checks latency and bandwidth against an unshaped run of the same request.
func TestShaping(t *testing.T) {
	data := make([]byte, 256<<10)
	p := startUpstream(t, data)
	p.SetShaping(Shaping{Latency: 30 * time.Millisecond, Bandwidth: 2 << 20})
	start := time.Now()
	if _, body, err := rangeGet(t.Context(), p, "bytes=0-262143"); err != nil || len(body) != len(data) {
		t.Fatalf("shaped GET: %d bytes, %v", len(body), err)
	}
	// 30 ms latency + 256 KiB at 2 MiB/s = 155 ms at least.
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Fatalf("shaped GET took %v, want >= 150ms", d)
	}
}
