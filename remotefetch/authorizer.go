package remotefetch

import (
	"context"
	"net/http"
	"sync"

	"github.com/containerd/containerd/v2/core/remotes/docker"
)

// repoAuthorizer is containerd's docker authorizer for one repository, which can be replaced
// by a fresh one. containerd's keeps a failed token fetch, and the credentials it was made
// with, for as long as it lives: a rotated password, a config.json written after start or
// credentials a later pull brought would never be asked for. remote resets it when a
// registry refuses a read, so the next attempt looks the credentials up again.
type repoAuthorizer struct {
	client *http.Client
	header http.Header
	creds  func(host string) (string, string, error)

	mu    sync.Mutex
	inner docker.Authorizer
	gen   uint64 // counts resets
}

func newRepoAuthorizer(client *http.Client, header http.Header, creds func(host string) (string, string, error)) *repoAuthorizer {
	a := &repoAuthorizer{client: client, header: header, creds: creds}
	a.inner = a.fresh()
	return a
}

func (a *repoAuthorizer) fresh() docker.Authorizer {
	return docker.NewDockerAuthorizer(docker.WithAuthClient(a.client), docker.WithAuthHeader(a.header), docker.WithAuthCreds(a.creds))
}

// current returns the authorizer in use and its generation.
func (a *repoAuthorizer) current() (docker.Authorizer, uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inner, a.gen
}

// reset replaces the authorizer of generation gen by a fresh one; a reset by a concurrent
// reader in between is not repeated.
func (a *repoAuthorizer) reset(gen uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.gen == gen {
		a.inner, a.gen = a.fresh(), gen+1
	}
}

// Authorize implements docker.Authorizer.
func (a *repoAuthorizer) Authorize(ctx context.Context, req *http.Request) error {
	inner, _ := a.current()
	return inner.Authorize(ctx, req)
}

// AddResponses implements docker.Authorizer.
func (a *repoAuthorizer) AddResponses(ctx context.Context, responses []*http.Response) error {
	inner, _ := a.current()
	return inner.AddResponses(ctx, responses)
}
