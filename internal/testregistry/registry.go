// Package testregistry runs a real OCI distribution registry (distribution v3, in process) for
// tests. It is test infrastructure, outside the read path of docs/DESIGN.md: remotefetch, the
// converter and the snapshotter point their clients at it instead of at a mock.
//
// A registry listens on 127.0.0.1 with filesystem storage in a temp dir. Options add htpasswd
// basic auth, token auth with an in-process token issuer (ECDSA-signed JWTs, the Docker token
// flow), and redirects of blob GETs to a separate "blob store" listener, the way registries
// backed by object storage answer. A registry can also run as a pull-through cache (Proxy) in
// front of another one, the way a zone mirror does, and post distribution's notification
// events to webhook endpoints (Notify).
package testregistry

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	"github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	"golang.org/x/crypto/bcrypt"

	// Storage driver and access controllers, registered by import.
	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd"
	_ "github.com/distribution/distribution/v3/registry/auth/token"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
)

// Auth selects how the registry authenticates clients.
type Auth int

const (
	// AuthNone serves everyone anonymously.
	AuthNone Auth = iota
	// AuthBasic requires HTTP basic auth checked against an htpasswd file.
	AuthBasic
	// AuthToken requires bearer tokens from the registry's own token issuer, which hands them
	// out for the configured user and password (basic auth on the token endpoint).
	AuthToken
)

// Options configure a test registry. The zero value is an anonymous registry.
type Options struct {
	Auth     Auth
	Username string // for AuthBasic and AuthToken; default "obd"
	Password string // default "obd-secret"
	// TokenTTL is how long issued tokens live (AuthToken); default 5 minutes. The registry
	// accepts tokens up to 60 s after they expire (distribution's clock-skew leeway).
	TokenTTL time.Duration
	// TokenRealm is the token endpoint the registry sends clients to (AuthToken); default its
	// own URL + "/token". A registry behind a proxy names the proxy's, since distribution's
	// pull-through cache only follows realms on the host it proxies.
	TokenRealm string
	// RedirectBlobs answers authorized blob GETs with a 307 to a second listener that serves
	// the blob's bytes (with Range support) under a signed-looking URL, like object storage.
	RedirectBlobs bool
	// Proxy makes the registry a pull-through cache of another registry (distribution's
	// proxy mode): it serves what it holds and fetches, stores and serves what it lacks.
	Proxy *Proxy
	// Listen is the address the registry listens on; default "127.0.0.1:0". A test whose
	// clients run in other network namespaces names an address they reach.
	Listen string
	// Notify lists webhook URLs that get distribution's notification envelopes (events of
	// manifest and blob pulls and pushes), as its notifications.endpoints configure.
	Notify []string
}

// Proxy is the upstream of a pull-through cache and the credentials the cache presents to it.
type Proxy struct {
	RemoteURL          string
	Username, Password string
}

// Registry is a running registry. It stops when the test ends.
type Registry struct {
	// Host is "127.0.0.1:port" (or Options.Listen's address), usable as the domain of an
	// image reference.
	Host string
	// URL is "http://" + Host.
	URL  string
	opts Options
	root string

	blobGets      atomic.Int64 // GET /v2/<name>/blobs/<digest> that reached the registry
	blobBytes     atomic.Int64 // body bytes those GETs were answered with
	blobPartial   atomic.Int64 // of those GETs, how many were answered 206
	blobStoreGets atomic.Int64 // GETs served by the redirect target
	tokens        atomic.Int64 // tokens issued
	expiredUpTo   atomic.Int64 // tokens with an ID up to this are refused (ExpireTokens)
	blobStoreHost string

	logMu   sync.Mutex
	blobLog []digest.Digest // the digests of blob GETs, in arrival order
}

// Start runs a registry until t ends. It fails the test if the registry cannot start.
func Start(t testing.TB, opts Options) *Registry {
	t.Helper()
	if opts.Username == "" {
		opts.Username = "obd"
	}
	if opts.Password == "" {
		opts.Password = "obd-secret"
	}
	if opts.TokenTTL == 0 {
		opts.TokenTTL = 5 * time.Minute
	}
	// distribution logs through logrus's global logger; keep test output readable.
	logrus.SetLevel(logrus.ErrorLevel)
	logrus.SetOutput(io.Discard)

	dir := t.TempDir()
	ln, err := net.Listen("tcp", cmp.Or(opts.Listen, "127.0.0.1:0"))
	if err != nil {
		t.Fatalf("testregistry: listen: %v", err)
	}
	r := &Registry{Host: ln.Addr().String(), URL: "http://" + ln.Addr().String(), opts: opts, root: filepath.Join(dir, "storage")}

	cfg := &configuration.Configuration{}
	cfg.Storage = configuration.Storage{"filesystem": configuration.Parameters{"rootdirectory": r.root}}
	cfg.HTTP.Secret = "testregistry-secret"
	cfg.Log.AccessLog.Disabled = true
	cfg.Log.Level = "error"
	if opts.Proxy != nil {
		ttl := time.Duration(0) // keep everything: a test's cache never expires under it
		cfg.Proxy = configuration.Proxy{RemoteURL: opts.Proxy.RemoteURL, Username: opts.Proxy.Username,
			Password: opts.Proxy.Password, TTL: &ttl}
	}
	for i, u := range opts.Notify {
		cfg.Notifications.Endpoints = append(cfg.Notifications.Endpoints, configuration.Endpoint{
			Name: fmt.Sprintf("notify%d", i), URL: u, Timeout: 5 * time.Second, Threshold: 5, Backoff: 100 * time.Millisecond})
	}

	mux := http.NewServeMux()
	switch opts.Auth {
	case AuthBasic:
		htpasswd := filepath.Join(dir, "htpasswd")
		hash, err := bcrypt.GenerateFromPassword([]byte(opts.Password), bcrypt.MinCost)
		if err != nil {
			t.Fatalf("testregistry: bcrypt: %v", err)
		}
		if err := os.WriteFile(htpasswd, fmt.Appendf(nil, "%s:%s\n", opts.Username, hash), 0o600); err != nil {
			t.Fatalf("testregistry: %v", err)
		}
		cfg.Auth = configuration.Auth{"htpasswd": configuration.Parameters{"realm": "testregistry", "path": htpasswd}}
	case AuthToken:
		issuer, err := newTokenIssuer(dir, opts, &r.tokens)
		if err != nil {
			t.Fatalf("testregistry: token issuer: %v", err)
		}
		cfg.Auth = configuration.Auth{"token": configuration.Parameters{
			"realm":   cmp.Or(opts.TokenRealm, r.URL+"/token"),
			"service": tokenService,
			"issuer":  tokenIssuerName,
			"jwks":    issuer.jwksPath,
		}}
		mux.Handle("/token", issuer)
	}

	ctx, cancel := context.WithCancel(context.Background())
	app := handlers.NewApp(ctx, cfg)
	var registry http.Handler = app
	if opts.RedirectBlobs {
		registry = r.redirectBlobs(t, app)
	}
	if opts.Auth == AuthToken {
		registry = r.refuseExpiredTokens(registry)
	}
	mux.Handle("/v2/", r.countBlobGets(registry))

	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_ = srv.Shutdown(sctx)
		_ = app.Shutdown()
		cancel()
	})
	return r
}

// Username and Password are the credentials the registry accepts (AuthBasic, AuthToken).
func (r *Registry) Username() string { return r.opts.Username }

// Password is the password the registry accepts.
func (r *Registry) Password() string { return r.opts.Password }

// BlobGets counts blob GET requests that reached the registry itself.
func (r *Registry) BlobGets() int64 { return r.blobGets.Load() }

// BlobBytes counts the body bytes the registry answered blob GETs with: its egress for blobs.
func (r *Registry) BlobBytes() int64 { return r.blobBytes.Load() }

// BlobGetDigests lists the digests of the blob GETs that reached the registry, in order.
func (r *Registry) BlobGetDigests() []digest.Digest {
	r.logMu.Lock()
	defer r.logMu.Unlock()
	return append([]digest.Digest(nil), r.blobLog...)
}

// PartialBlobGets counts blob GETs answered with 206 Partial Content (a range).
func (r *Registry) PartialBlobGets() int64 { return r.blobPartial.Load() }

// BlobStoreGets counts GETs served by the redirect target (RedirectBlobs).
func (r *Registry) BlobStoreGets() int64 { return r.blobStoreGets.Load() }

// TokensIssued counts bearer tokens the token issuer handed out (AuthToken).
func (r *Registry) TokensIssued() int64 { return r.tokens.Load() }

// ExpireTokens makes every token issued so far invalid at once (AuthToken), as if each had
// expired or been revoked before the lifetime it was issued with: the registry answers
// requests bearing one with 401 and a plain Bearer challenge naming no error, as registries
// that do not tell an expired token from a missing one do.
func (r *Registry) ExpireTokens() { r.expiredUpTo.Store(r.tokens.Load()) }

// refuseExpiredTokens answers requests whose bearer token ExpireTokens expired with a 401.
func (r *Registry) refuseExpiredTokens(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if id, ok := bearerTokenID(req); ok && id <= r.expiredUpTo.Load() {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service=%q`, r.URL+"/token", tokenService))
			http.Error(w, "token expired", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, req)
	})
}

// BlobStoreHost is the "127.0.0.1:port" of the redirect target (RedirectBlobs), else "".
func (r *Registry) BlobStoreHost() string { return r.blobStoreHost }

func isBlobGet(req *http.Request) bool {
	return req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/sha256:")
}

func (r *Registry) countBlobGets(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if !isBlobGet(req) {
			next.ServeHTTP(w, req)
			return
		}
		r.blobGets.Add(1)
		r.logMu.Lock()
		r.blobLog = append(r.blobLog, digest.Digest(req.URL.Path[strings.LastIndex(req.URL.Path, "/")+1:]))
		r.logMu.Unlock()
		cw := &countingWriter{ResponseWriter: w}
		next.ServeHTTP(cw, req)
		r.blobBytes.Add(cw.n)
		if cw.status == http.StatusPartialContent {
			r.blobPartial.Add(1)
		}
	})
}

// redirectBlobs answers an authorized blob GET with a redirect to a blob store listener that
// serves the stored file directly. Authorization is checked by asking the registry for a HEAD
// of the same blob with the same headers.
func (r *Registry) redirectBlobs(t testing.TB, app http.Handler) http.Handler {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testregistry: listen blob store: %v", err)
	}
	r.blobStoreHost = ln.Addr().String()
	store := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.blobStoreGets.Add(1)
		d, err := digest.Parse(strings.TrimPrefix(req.URL.Path, "/blob/"))
		if err != nil || req.URL.Query().Get("sig") != signature(d) {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		f, err := os.Open(r.blobPath(d))
		if err != nil {
			http.NotFound(w, req)
			return
		}
		defer f.Close()
		http.ServeContent(w, req, "", time.Time{}, f)
	})}
	go func() { _ = store.Serve(ln) }()
	t.Cleanup(func() { _ = store.Close() })

	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if !isBlobGet(req) {
			app.ServeHTTP(w, req)
			return
		}
		head := req.Clone(req.Context())
		head.Method = http.MethodHead
		head.Header.Del("Range")
		rec := &statusRecorder{header: http.Header{}}
		app.ServeHTTP(rec, head)
		if rec.status != http.StatusOK {
			app.ServeHTTP(w, req)
			return
		}
		d := digest.Digest(req.URL.Path[strings.LastIndex(req.URL.Path, "/")+1:])
		loc := url.URL{Scheme: "http", Host: r.blobStoreHost, Path: "/blob/" + d.String(), RawQuery: "sig=" + signature(d)}
		http.Redirect(w, req, loc.String(), http.StatusTemporaryRedirect)
	})
}

// signature stands in for the presigned-URL token of object storage.
func signature(d digest.Digest) string {
	sum := sha256.Sum256([]byte("testregistry:" + d.String()))
	return hex.EncodeToString(sum[:8])
}

// blobPath is where distribution's filesystem driver keeps a blob's bytes.
func (r *Registry) blobPath(d digest.Digest) string {
	hexd := d.Encoded()
	if len(hexd) < 2 {
		return filepath.Join(r.root, "invalid")
	}
	return filepath.Join(r.root, "docker", "registry", "v2", "blobs", string(d.Algorithm()), hexd[:2], hexd, "data")
}

// countingWriter counts the body bytes and keeps the status of a response it passes on.
type countingWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

// WriteHeader passes the first status on; net/http ignores later ones anyway.
func (c *countingWriter) WriteHeader(code int) {
	if c.status == 0 {
		c.status = code
		c.ResponseWriter.WriteHeader(code)
	}
}

func (c *countingWriter) Write(b []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	n, err := c.ResponseWriter.Write(b)
	c.n += int64(n)
	return n, err
}

// Flush passes flushes on, so streamed responses stay streamed.
func (c *countingWriter) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// statusRecorder keeps only the status of a response.
type statusRecorder struct {
	header http.Header
	status int
}

func (s *statusRecorder) Header() http.Header { return s.header }
func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return len(b), nil
}
func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
}

// client is an HTTP client that authenticates to the registry as the configured user, for
// the push helpers.
type client struct {
	r     *Registry
	mu    sync.Mutex
	token map[string]string // scope -> bearer token
}

// do sends req with credentials, fetching a token for scope first when the registry wants one.
func (c *client) do(req *http.Request, scope string) (*http.Response, error) {
	switch c.r.opts.Auth {
	case AuthBasic:
		req.SetBasicAuth(c.r.opts.Username, c.r.opts.Password)
	case AuthToken:
		tok, err := c.bearer(req.Context(), scope)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	return http.DefaultClient.Do(req)
}

func (c *client) bearer(ctx context.Context, scope string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if tok, ok := c.token[scope]; ok {
		return tok, nil
	}
	u := c.r.URL + "/token?service=" + url.QueryEscape(tokenService) + "&scope=" + url.QueryEscape(scope)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	req.SetBasicAuth(c.r.opts.Username, c.r.opts.Password)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	tok, err := decodeTokenResponse(resp)
	if err != nil {
		return "", err
	}
	if c.token == nil {
		c.token = map[string]string{}
	}
	c.token[scope] = tok
	return tok, nil
}

// PushBlob uploads data as a blob of repo (monolithic upload) and returns its digest.
func (r *Registry) PushBlob(t testing.TB, repo string, data []byte) digest.Digest {
	t.Helper()
	d, err := r.pushBlob(context.Background(), repo, data)
	if err != nil {
		t.Fatalf("testregistry: push blob to %s: %v", repo, err)
	}
	return d
}

func (r *Registry) pushBlob(ctx context.Context, repo string, data []byte) (digest.Digest, error) {
	c := &client{r: r}
	scope := "repository:" + repo + ":pull,push"
	d := digest.FromBytes(data)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.URL+"/v2/"+repo+"/blobs/uploads/", nil)
	if err != nil {
		return "", err
	}
	resp, err := c.do(req, scope)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return "", fmt.Errorf("start upload: status %s", resp.Status)
	}
	loc, err := resp.Location()
	if err != nil {
		return "", fmt.Errorf("start upload: %w", err)
	}
	q := loc.Query()
	q.Set("digest", d.String())
	loc.RawQuery = q.Encode()
	req, err = http.NewRequestWithContext(ctx, http.MethodPut, loc.String(), bytes.NewReader(data))
	if err != nil {
		return "", err
	}
	req.ContentLength = int64(len(data))
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = c.do(req, scope)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("finish upload: status %s", resp.Status)
	}
	return d, nil
}

// PushManifest uploads a manifest of the given media type under reference (a tag or digest)
// and returns its digest.
func (r *Registry) PushManifest(t testing.TB, repo, reference, mediaType string, data []byte) digest.Digest {
	t.Helper()
	c := &client{r: r}
	req, err := http.NewRequest(http.MethodPut, r.URL+"/v2/"+repo+"/manifests/"+reference, bytes.NewReader(data))
	if err != nil {
		t.Fatalf("testregistry: %v", err)
	}
	req.Header.Set("Content-Type", mediaType)
	resp, err := c.do(req, "repository:"+repo+":pull,push")
	if err != nil {
		t.Fatalf("testregistry: push manifest %s:%s: %v", repo, reference, err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("testregistry: push manifest %s:%s: status %s: %s", repo, reference, resp.Status, body)
	}
	return digest.FromBytes(data)
}

// HostsDir writes a containerd hosts directory (hosts.toml) that sends r's host to r's URL,
// with its scheme, and returns the directory.
func (r *Registry) HostsDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, r.Host), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, r.Host, "hosts.toml"), fmt.Appendf(nil, "server = %q\n", r.URL), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}
