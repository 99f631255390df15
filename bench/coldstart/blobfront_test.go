package coldstart

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestBlobFront: linked blobs are served from storage, ranges included; anything else reaches
// the registry.
func TestBlobFront(t *testing.T) {
	storage := t.TempDir()
	data := []byte("0123456789abcdef")
	dgst := digest.FromBytes(data)
	hex := dgst.Encoded()
	v2 := filepath.Join(storage, "docker", "registry", "v2")
	blob := filepath.Join(v2, "blobs", "sha256", hex[:2], hex, "data")
	link := filepath.Join(v2, "repositories", "bench", "img", "_layers", "sha256", hex, "link")
	for path, content := range map[string][]byte{blob: data, link: []byte(dgst.String())} {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	registry := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-From", "registry")
		http.NotFound(w, r)
	}))
	defer registry.Close()
	front, err := StartBlobFront(registry.Listener.Addr().String(), storage)
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()

	get := func(path, rng string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, "http://"+front.Addr+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, string(body)
	}
	resp, body := get("/v2/bench/img/blobs/"+dgst.String(), "bytes=3-6")
	if resp.StatusCode != http.StatusPartialContent || body != "3456" || resp.Header.Get("Docker-Content-Digest") != dgst.String() {
		t.Fatalf("range GET: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if resp, body = get("/v2/bench/img/blobs/"+dgst.String(), ""); resp.StatusCode != http.StatusOK || body != string(data) {
		t.Fatalf("GET: %d %q", resp.StatusCode, body)
	}
	for _, path := range []string{
		"/v2/other/blobs/" + dgst.String(),        // not linked into this repository
		"/v2/bench/img/manifests/latest",          // not a blob
		"/v2/bench/../img/blobs/" + dgst.String(), // no way out of the storage
		"/v2/bench/img/blobs/sha256:" + hex[:10],  // not a digest
	} {
		if resp, _ := get(path, ""); resp.Header.Get("X-From") != "registry" {
			t.Errorf("%s: served by the front (%d), want the registry", path, resp.StatusCode)
		}
	}
	if n := front.Requests(); n != 6 {
		t.Errorf("front counted %d requests, want 6 (2 served, 4 passed on)", n)
	}
}
