package remotefetch

import (
	"context"
	"errors"
	"fmt"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// Authorize checks that the registry lets this node read blob dgst from the repository of
// ref with the credentials it has now, when bytes of the blob are already on the node in the
// cache entry an Open with the same options would use: such bytes, brought by another image
// that shares the layer (a range table or a complete verified blob is shared across
// repositories), would otherwise serve a private image on a node that has no credentials for
// it. It costs one authorized 1-byte range request, and nothing when no bytes are cached or
// the blob is open for this repository already. A refusal is an ErrUnauthorized or
// ErrNotFound error; a registry that cannot be reached is not one (nil, logged), so that
// images whose bytes are on the node keep starting while it is offline.
func (f *Fetcher) Authorize(ctx context.Context, ref string, dgst digest.Digest, size int64, opts ...OpenOption) error {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return fmt.Errorf("remotefetch: reference %q: %w", ref, err)
	}
	if size <= 0 {
		return nil // nothing to read, nothing to hide
	}
	if err := dgst.Validate(); err != nil {
		return fmt.Errorf("remotefetch: digest %q: %w", dgst, err)
	}
	var o openOptions
	for _, opt := range opts {
		opt(&o)
	}
	domain, repo := reference.Domain(named), reference.Path(named)
	key := scopeKey(dgst, o, domain, repo)
	if f.cache.Verified(dgst) {
		key.Scope = ""
	}
	f.mu.Lock()
	_, open := f.blobs[blobKey{key: key, repo: domain + "/" + repo}]
	f.mu.Unlock()
	if open || !f.cache.Holds(key) {
		return nil
	}
	hosts, err := f.repositoryHosts(domain, repo)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, f.opts.ReadTimeout)
	defer cancel()
	rem := &remote{hosts: hosts, refHost: domain, repo: repo, dgst: dgst, size: size, reuse: f.opts.RedirectReuse}
	body, err := rem.get(ctx, 0, 1)
	switch {
	case err == nil:
		body.Close()
		return nil
	case errors.Is(err, ErrUnauthorized) || errors.Is(err, ErrNotFound):
		return fmt.Errorf("remotefetch: blob %s is cached, but %s refuses it to this node: %w", dgst, reference.TrimNamed(named), err)
	}
	f.log.Warn("remotefetch: registry unreachable: cached blob served unchecked", "digest", dgst, "repository", reference.TrimNamed(named).String(), "err", err)
	return nil
}
