package testregistry

import (
	"bytes"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// Hostile is a registry that lies: it serves whatever bytes a test gives it under any digest,
// through the blob API (GET with Range, HEAD) on 127.0.0.1, anonymously. A real registry
// checks what is pushed to it; this one stands for a registry that does not, or that an
// attacker controls, so tests can show that bytes it serves under some digest never reach a
// reader that trusts another image's pins.
type Hostile struct {
	// Host is "127.0.0.1:port", usable as the domain of an image reference.
	Host string

	mu    sync.Mutex
	blobs map[string][]byte // by "<repo>@<digest>"
	gets  atomic.Int64
}

// StartHostile runs a hostile registry until t ends.
func StartHostile(t testing.TB) *Hostile {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testregistry: listen: %v", err)
	}
	h := &Hostile{Host: ln.Addr().String(), blobs: map[string][]byte{}}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return h
}

// Serve makes the registry answer for blob d of repo with data, whatever d's true content.
func (h *Hostile) Serve(repo string, d digest.Digest, data []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.blobs[repo+"@"+d.String()] = bytes.Clone(data)
}

// BlobGets counts the blob GETs the registry answered.
func (h *Hostile) BlobGets() int64 { return h.gets.Load() }

func (h *Hostile) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.URL.Path == "/v2/" {
		w.WriteHeader(http.StatusOK)
		return
	}
	name, dgst, ok := strings.Cut(strings.TrimPrefix(req.URL.Path, "/v2/"), "/blobs/")
	h.mu.Lock()
	data, found := h.blobs[name+"@"+dgst]
	h.mu.Unlock()
	if !ok || !found || (req.Method != http.MethodGet && req.Method != http.MethodHead) {
		http.NotFound(w, req)
		return
	}
	if req.Method == http.MethodGet {
		h.gets.Add(1)
	}
	w.Header().Set("Docker-Content-Digest", dgst)
	http.ServeContent(w, req, "", time.Time{}, bytes.NewReader(data))
}
