package fdkeeper

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func startKeeper(t *testing.T) (string, *Server) {
	t.Helper()
	dir, err := os.MkdirTemp("", "keeper")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "k.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		s.Close()
	})
	return sock, s
}

func TestPutGetDrop(t *testing.T) {
	sock, _ := startKeeper(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := c.Put(ctx, "a", w); err != nil {
		t.Fatal(err)
	}
	w.Close() // the keeper's copy keeps the pipe open

	// A second client (as after a daemon restart) gets the same open file back.
	c2, err := Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	got, err := c2.Get(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := got.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	got.Close()
	buf := make([]byte, 2)
	if _, err := r.Read(buf); err != nil || string(buf) != "hi" {
		t.Fatalf("read through kept descriptor: %q %v", buf, err)
	}
	if keys, err := c.Keys(ctx); err != nil || len(keys) != 1 || keys[0] != "a" {
		t.Fatalf("Keys: %v %v", keys, err)
	}
	if err := c.Drop(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	// Every write end is closed now: the reader sees EOF.
	r.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := r.Read(buf); n != 0 || err == nil {
		t.Fatalf("after Drop the pipe is still open: %d %v", n, err)
	}
	if _, err := c.Get(ctx, "a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after Drop: %v, want ErrNotFound", err)
	}
	if err := c.Drop(ctx, "a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Drop twice: %v, want ErrNotFound", err)
	}
}

func TestBadRequests(t *testing.T) {
	sock, _ := startKeeper(t)
	conn, err := net.Dial("unixpacket", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	for _, msg := range []string{`{"op":"put","key":"x"}`, `not json`, `{"op":"get"}`, `{"op":"explode","key":"x"}`} {
		if _, err := conn.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4096)
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("%s: %v", msg, err)
		}
		var resp response
		if err := json.Unmarshal(buf[:n], &resp); err != nil || resp.Error == "" {
			t.Errorf("%s: response %q, want an error", msg, buf[:n])
		}
	}
}

// FuzzHandle feeds arbitrary request packets (without descriptors) to the keeper.
func FuzzHandle(f *testing.F) {
	f.Add([]byte(`{"op":"keys"}`))
	f.Add([]byte(`{"op":"get","key":"disk"}`))
	f.Add([]byte(`{"op":"put","key":"disk"}`))
	f.Add([]byte(`{"op":"drop","key":""}`))
	s := NewServer(nil)
	f.Fuzz(func(t *testing.T, msg []byte) {
		resp, out := s.handle(msg, nil, nil)
		if out != nil {
			t.Fatalf("descriptor returned for %q", msg)
		}
		if _, err := parseRequest(msg); err != nil && resp.Error == "" {
			t.Fatalf("invalid request %q accepted", msg)
		}
	})
}
