package coldstart

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"

	"github.com/opencontainers/go-digest"
)

// BlobFront stands in front of the benchmark's registry the way object storage (a CDN) stands
// behind Docker Hub, ECR or GHCR: it serves blob GETs and HEADs itself, straight from the
// registry's filesystem storage, and passes every other request to the registry.
//
// Why: docker-registry (distribution 2.8, and 3.x alike) reads every blob request through a
// fresh 4 MiB buffer, which costs ~3.5 ms of CPU per range request. In production that CPU is
// the registry's; here the registry shares the 2 cores of the node under test, and during a
// lazy start it took a quarter of them (bench/FINDINGS.md). A blob is served only if the
// registry links it into the repository, so what a client can fetch does not change.
type BlobFront struct {
	// Addr is the front's "127.0.0.1:port".
	Addr string

	storage  string // the registry's rootdirectory
	registry *httputil.ReverseProxy
	srv      *http.Server
	requests atomic.Int64
}

// blobPath matches /v2/<repository>/blobs/<digest>.
var blobPath = regexp.MustCompile(`^/v2/(.+)/blobs/([a-z0-9]+:[a-f0-9]+)$`)

// StartBlobFront listens on a free port of 127.0.0.1; registry is the registry's "host:port"
// and storage its filesystem rootdirectory.
func StartBlobFront(registry, storage string) (*BlobFront, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("blob front: listen: %w", err)
	}
	target := &url.URL{Scheme: "http", Host: registry}
	f := &BlobFront{Addr: ln.Addr().String(), storage: storage, registry: httputil.NewSingleHostReverseProxy(target)}
	f.srv = &http.Server{Handler: f}
	go func() { _ = f.srv.Serve(ln) }()
	return f, nil
}

// Requests returns how many HTTP requests the front has received (blob reads it served and
// requests it passed on alike) since it started.
func (f *BlobFront) Requests() int64 { return f.requests.Load() }

// Close stops the front.
func (f *BlobFront) Close() error { return f.srv.Close() }

func (f *BlobFront) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.requests.Add(1)
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		if path, dgst, ok := f.blobFile(r.URL.Path); ok {
			if file, err := os.Open(path); err == nil {
				defer file.Close()
				if st, err := file.Stat(); err == nil {
					w.Header().Set("Content-Type", "application/octet-stream")
					w.Header().Set("Docker-Content-Digest", dgst.String())
					w.Header().Set("Etag", `"`+dgst.String()+`"`)
					http.ServeContent(w, r, "", st.ModTime(), file)
					return
				}
			}
		}
	}
	f.registry.ServeHTTP(w, r)
}

// blobFile returns the data file of the blob a request path names, if the registry links it
// into the path's repository.
func (f *BlobFront) blobFile(urlPath string) (string, digest.Digest, bool) {
	m := blobPath.FindStringSubmatch(urlPath)
	if m == nil || strings.Contains(m[1], "..") {
		return "", "", false
	}
	dgst, err := digest.Parse(m[2])
	if err != nil {
		return "", "", false
	}
	v2 := filepath.Join(f.storage, "docker", "registry", "v2")
	link := filepath.Join(v2, "repositories", filepath.FromSlash(m[1]), "_layers", string(dgst.Algorithm()), dgst.Encoded(), "link")
	if b, err := os.ReadFile(link); err != nil || strings.TrimSpace(string(b)) != dgst.String() {
		return "", "", false
	}
	hex := dgst.Encoded()
	return filepath.Join(v2, "blobs", string(dgst.Algorithm()), hex[:2], hex, "data"), dgst, true
}
