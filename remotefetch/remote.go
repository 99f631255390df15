package remotefetch

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	remoteserrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/opencontainers/go-digest"
)

// remote issues range GETs for one blob: it walks the configured hosts (mirrors first),
// authorizes with containerd's docker authorizer (basic or bearer, tokens cached and refreshed
// on 401), follows redirects and re-uses the redirect target for a while, and checks that each
// response is exactly the requested range. It does not retry; Blob does.
type remote struct {
	hosts   []docker.RegistryHost
	refHost string // registry domain of the image reference, e.g. docker.io
	repo    string // repository path, e.g. library/busybox
	dgst    digest.Digest
	size    int64
	reuse   time.Duration // how long a redirect target is used directly
	health  *hostHealth   // the Fetcher's record of mirrors to pass over (mirror.go)
	// mirrorWait bounds a mirror's time to answer with headers.
	mirrorWait time.Duration
	ipfs       *ipfsBlob    // nil: the blob is not read through IPFS (ipfs.go)
	log        *slog.Logger // nil: no logging

	mu            sync.Mutex
	redirect      *url.URL
	redirectHost  *docker.RegistryHost // whose client fetches the redirect target
	redirectUntil time.Time
	mirrorMiss    map[int]time.Time // host index -> this blob skips that mirror until then
}

// rangeBody is a response body holding exactly the requested bytes (fewer if truncated).
type rangeBody struct {
	io.Reader
	closer io.Closer
	from   string // the host that sent it, for errors
}

func (r rangeBody) Close() error { return r.closer.Close() }

// sourceOf names the host a body of get came from.
func sourceOf(rc io.ReadCloser) string {
	if b, ok := rc.(rangeBody); ok {
		return b.from
	}
	return "?"
}

// get starts a GET of [off, off+n). The body must be closed. Errors are retryable unless
// wrapped as permanent.
func (r *remote) get(ctx context.Context, off, n int64) (io.ReadCloser, error) {
	if body := r.getPeer(ctx, off, n); body != nil {
		return body, nil
	}
	if body, err := r.getRedirected(ctx, off, n); body != nil || err != nil {
		return body, err
	}
	var lastErr error
	var fallback *wholeBlobAnswer // a mirror's whole-blob answer, if no host serves the range
	defer func() {
		if fallback != nil {
			fallback.resp.Body.Close()
		}
	}()
	notFound, last := 0, len(r.hosts)-1
	var skipped []int // mirrors passed over: asked only when every other host failed
	try := func(i int) (io.ReadCloser, error) {
		var body io.ReadCloser
		var err error
		if i == last {
			body, err = r.getFromHost(ctx, &r.hosts[i], off, n)
		} else {
			body, err = r.getFromMirror(ctx, i, off, n)
		}
		if err == nil {
			return body, nil
		}
		var whole *wholeBlobAnswer
		switch {
		case errors.As(err, &whole):
			if fallback != nil {
				fallback.resp.Body.Close()
			}
			fallback = whole
			r.missedMirror(i)
		case errors.Is(err, ErrNotFound):
			notFound++
			if i < last {
				r.missedMirror(i)
			}
		case i < last && errors.As(err, new(*statusError)):
			r.missedMirror(i)
		}
		lastErr = err
		return nil, err
	}
	for i := range r.hosts {
		if i < last && r.skipMirror(i) {
			skipped = append(skipped, i)
			continue
		}
		if body, err := try(i); err == nil {
			return body, nil
		}
		if ctx.Err() != nil {
			break
		}
	}
	for _, i := range skipped {
		if fallback != nil || ctx.Err() != nil {
			break
		}
		if body, err := try(i); err == nil {
			return body, nil
		}
	}
	if fallback != nil && ctx.Err() == nil {
		resp := fallback.resp
		fallback = nil
		return r.checkResponse(resp, resp.Request.URL, off, n)
	}
	if notFound == len(r.hosts) {
		return nil, permanent(lastErr)
	}
	return nil, lastErr
}

// getRedirected uses a remembered redirect target. It returns (nil, nil) when there is none
// or it no longer works, so the caller goes back to the registry.
func (r *remote) getRedirected(ctx context.Context, off, n int64) (io.ReadCloser, error) {
	r.mu.Lock()
	target, h := r.redirect, r.redirectHost
	if target != nil && time.Now().After(r.redirectUntil) {
		r.redirect, target = nil, nil
	}
	r.mu.Unlock()
	if target == nil {
		return nil, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target.String(), nil)
	if err != nil {
		return nil, err
	}
	setRange(req, off, n)
	resp, err := h.Client.Do(req)
	if err != nil {
		return nil, transportError(target, err)
	}
	if resp.StatusCode >= 400 && resp.StatusCode < 500 && resp.StatusCode != http.StatusTooManyRequests {
		// Expired or revoked: forget it and ask the registry for a fresh one.
		drain(resp)
		r.mu.Lock()
		r.redirect = nil
		r.mu.Unlock()
		return nil, nil
	}
	return r.checkResponse(resp, target, off, n)
}

// getFromHost GETs the range from one host. When the host refuses the credentials, its
// repository authorizer is replaced and the GET tried once more: the credentials are looked
// up again (a rotated secret, a config.json changed since, a later pull's) and tokens are
// fetched anew, so an expired or revoked token costs one round trip, not the read.
func (r *remote) getFromHost(ctx context.Context, h *docker.RegistryHost, off, n int64) (io.ReadCloser, error) {
	ra, _ := h.Authorizer.(*repoAuthorizer)
	var gen uint64
	if ra != nil {
		_, gen = ra.current()
	}
	body, err := r.getAuthorized(ctx, h, off, n)
	if ra == nil || !errors.Is(err, ErrUnauthorized) || ctx.Err() != nil {
		return body, err
	}
	ra.reset(gen)
	return r.getAuthorized(ctx, h, off, n)
}

// getAuthorized GETs the range from one host with its authorizer as it is.
func (r *remote) getAuthorized(ctx context.Context, h *docker.RegistryHost, off, n int64) (io.ReadCloser, error) {
	u := &url.URL{Scheme: h.Scheme, Host: h.Host, Path: path.Join("/", h.Path, r.repo, "blobs", r.dgst.String())}
	if r.refHost != h.Host && (r.refHost != "docker.io" || h.Host != "registry-1.docker.io") {
		u.RawQuery = url.Values{"ns": {r.refHost}}.Encode() // a mirror: say which registry
	}
	// The authorizer asks the token server for the scope in ctx.
	ctx = docker.ContextWithAppendPullRepositoryScope(ctx, r.repo)
	var responses []*http.Response
	for attempt := 0; ; attempt++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return nil, err
		}
		for k, v := range h.Header {
			req.Header[k] = append([]string(nil), v...)
		}
		setRange(req, off, n)
		if h.Authorizer != nil {
			if err := h.Authorizer.Authorize(ctx, req); err != nil {
				return nil, authError(u, err)
			}
		}
		resp, err := h.Client.Do(req)
		if err != nil {
			return nil, transportError(u, err)
		}
		if resp.StatusCode == http.StatusUnauthorized && h.Authorizer != nil && attempt < 2 {
			responses = append(responses, resp)
			drain(resp)
			if err := h.Authorizer.AddResponses(ctx, responses); err != nil {
				return nil, permanent(fmt.Errorf("%w: %s: %v", ErrUnauthorized, redact(u), err))
			}
			continue
		}
		if mirror := h != &r.hosts[len(r.hosts)-1]; mirror && resp.StatusCode == http.StatusOK &&
			(off > 0 || n < r.size) && resp.ContentLength == r.size {
			return nil, &wholeBlobAnswer{resp: resp, host: h.Host}
		}
		if final := resp.Request.URL; final.Host != u.Host {
			r.mu.Lock()
			r.redirect, r.redirectHost, r.redirectUntil = final, h, time.Now().Add(r.reuse)
			r.mu.Unlock()
		}
		return r.checkResponse(resp, u, off, n)
	}
}

// checkResponse turns resp into a body of exactly [off, off+n), or an error.
func (r *remote) checkResponse(resp *http.Response, u *url.URL, off, n int64) (io.ReadCloser, error) {
	switch {
	case resp.StatusCode == http.StatusPartialContent:
		first, last, total, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err == nil && total >= 0 && total != r.size {
			// Retrying cannot fix a wrong size given to Open.
			drain(resp)
			return nil, permanent(fmt.Errorf("%w: %s: the registry's blob is %d bytes, opened as %d", ErrBadResponse, redact(u), total, r.size))
		}
		if err == nil && (first != off || last != off+n-1) {
			err = fmt.Errorf("%w: Content-Range %q for requested bytes %d-%d/%d", ErrBadResponse,
				resp.Header.Get("Content-Range"), off, off+n-1, r.size)
		}
		if err == nil && resp.ContentLength >= 0 && resp.ContentLength != n {
			err = fmt.Errorf("%w: Content-Length %d for a %d-byte range", ErrBadResponse, resp.ContentLength, n)
		}
		if err != nil {
			drain(resp)
			return nil, fmt.Errorf("%s: %w", redact(u), err)
		}
		return rangeBody{Reader: io.LimitReader(resp.Body, n), closer: resp.Body, from: u.Host}, nil
	case resp.StatusCode == http.StatusOK:
		// The server ignored Range: accept the whole blob if its length is right.
		if resp.ContentLength != r.size {
			drain(resp)
			return nil, fmt.Errorf("%w: %s: status 200 with length %d for a %d-byte blob", ErrBadResponse, redact(u), resp.ContentLength, r.size)
		}
		if _, err := io.CopyN(io.Discard, resp.Body, off); err != nil {
			resp.Body.Close()
			return nil, fmt.Errorf("remotefetch: %s: skip to %d: %w", redact(u), off, err)
		}
		return rangeBody{Reader: io.LimitReader(resp.Body, n), closer: resp.Body, from: u.Host}, nil
	}
	drain(resp)
	err := &statusError{code: resp.StatusCode, url: redact(u), retryAfter: retryAfter(resp)}
	switch resp.StatusCode {
	case http.StatusNotFound:
		return nil, fmt.Errorf("%w: %w", ErrNotFound, err)
	case http.StatusUnauthorized, http.StatusForbidden:
		return nil, permanent(fmt.Errorf("%w: %w", ErrUnauthorized, err))
	case http.StatusTooManyRequests, http.StatusRequestTimeout:
		return nil, err
	}
	if resp.StatusCode >= 500 {
		return nil, err
	}
	return nil, permanent(err)
}

// authError classifies a failure to get a token: refused credentials are permanent, anything
// else (the token server is down) is retried.
func authError(u *url.URL, err error) error {
	var status remoteserrors.ErrUnexpectedStatus
	if errors.Is(err, docker.ErrInvalidAuthorization) ||
		(errors.As(err, &status) && (status.StatusCode == http.StatusUnauthorized || status.StatusCode == http.StatusForbidden)) {
		return permanent(fmt.Errorf("%w: authorize %s: %v", ErrUnauthorized, redact(u), err))
	}
	return fmt.Errorf("remotefetch: authorize %s: %w", redact(u), err)
}

// statusError is an unexpected HTTP status.
type statusError struct {
	code       int
	url        string
	retryAfter time.Duration
}

func (e *statusError) Error() string {
	return fmt.Sprintf("%s: status %d %s", e.url, e.code, http.StatusText(e.code))
}

func retryAfter(resp *http.Response) time.Duration {
	s, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	if err != nil || s < 0 {
		return 0
	}
	return time.Duration(s) * time.Second
}

func setRange(req *http.Request, off, n int64) {
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+n-1))
}

// drain closes resp after reading a little of it, so its connection can be reused.
func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
}

// redact renders u without query or user info: presigned redirect URLs carry credentials there.
func redact(u *url.URL) string {
	return (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}).String()
}

// transportError replaces net/http's error, which quotes the full URL, with a redacted one.
// A certificate the client does not trust is permanent: retrying cannot fix the setup.
func transportError(u *url.URL, err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	err = fmt.Errorf("remotefetch: GET %s: %w", redact(u), err)
	var certErr *tls.CertificateVerificationError
	if errors.As(err, &certErr) {
		return permanent(err)
	}
	return err
}
