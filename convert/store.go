package convert

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/credentials"
)

// store is an image source or destination. Blobs are pushed before the
// manifests that reference them, and tag is called last, so a destination only
// shows a new image once everything it needs is there.
type store interface {
	// resolve returns the descriptor of the image (manifest or index).
	resolve(ctx context.Context) (ocispec.Descriptor, error)
	fetch(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error)
	// push stores one blob or manifest; an existing one is not an error.
	push(ctx context.Context, desc ocispec.Descriptor, r io.Reader) error
	// tag points the location's tag at desc, which must already be pushed.
	// body is desc's content.
	tag(ctx context.Context, desc ocispec.Descriptor, body []byte) error
}

// RegistryOptions configure registry access, shared with remotefetch: hosts.toml
// and certificates in HostsDir (containerd's certs.d layout), credentials from
// a docker config.json.
type RegistryOptions struct {
	HostsDir     string // e.g. /etc/containerd/certs.d; "" = none
	DockerConfig string // config.json path; "" = $DOCKER_CONFIG or ~/.docker
	PlainHTTP    bool   // use http:// for every registry (not only localhost)
	// Timeout is how long a registry may make no progress (connecting, answering, sending
	// or taking bytes) before the request fails; DefaultRegistryTimeout when 0.
	Timeout time.Duration
}

func openStore(ctx context.Context, loc Location, opts RegistryOptions) (store, error) {
	if loc.Dir != "" {
		return &layoutStore{dir: loc.Dir, tagName: loc.Tag}, nil
	}
	newResolver, err := opts.Resolvers(ctx)
	if err != nil {
		return nil, err
	}
	return &registryStore{ref: loc.Ref, resolver: newResolver(), newResolver: newResolver}, nil
}

// Resolvers returns what makes registry resolvers configured by o (each keeps the manifests it
// resolved, so a push that must not see earlier lookups takes a new one).
func (o RegistryOptions) Resolvers(ctx context.Context) (func() remotes.Resolver, error) {
	creds, err := credentials.Load(o.DockerConfig)
	if err != nil {
		return nil, fmt.Errorf("convert: registry credentials: %w", err)
	}
	idle := o.Timeout
	if idle <= 0 {
		idle = DefaultRegistryTimeout
	}
	hostOpts := config.HostOptions{
		Credentials: func(host string) (string, string, error) { return creds.Get(ctx, host) },
		UpdateClient: func(c *http.Client) error {
			guardClient(c, idle)
			return nil
		},
	}
	if o.HostsDir != "" {
		hostOpts.HostDir = config.HostDirFromRoot(o.HostsDir)
	}
	if o.PlainHTTP {
		hostOpts.DefaultScheme = "http"
	}
	hosts := config.ConfigureHosts(ctx, hostOpts)
	return func() remotes.Resolver { return docker.NewResolver(docker.ResolverOptions{Hosts: hosts}) }, nil
}

type registryStore struct {
	ref         string
	resolver    remotes.Resolver
	newResolver func() remotes.Resolver
	name        string // resolved name, set by resolve
}

func (s *registryStore) resolve(ctx context.Context) (ocispec.Descriptor, error) {
	name, desc, err := s.resolver.Resolve(ctx, s.ref)
	if err != nil {
		return desc, fmt.Errorf("resolve %s: %w", s.ref, err)
	}
	s.name = name
	return desc, nil
}

func (s *registryStore) fetch(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	name := s.name
	if name == "" {
		name = s.ref
	}
	f, err := s.resolver.Fetcher(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("fetch from %s: %w", name, err)
	}
	rc, err := f.Fetch(ctx, desc)
	if err != nil {
		return nil, fmt.Errorf("fetch %s from %s: %w", desc.Digest, name, err)
	}
	return rc, nil
}

// push puts blobs and manifests by digest. The reference it pushes to names
// the repository with a digest no manifest has, so containerd's pusher never
// moves a tag here (tag does that, last).
func (s *registryStore) push(ctx context.Context, desc ocispec.Descriptor, r io.Reader) error {
	named, err := reference.ParseNormalizedNamed(s.ref)
	if err != nil {
		return err
	}
	untagged := reference.TrimNamed(named).String() + "@" + digest.FromString("untagged").String()
	return pushWith(ctx, s.resolver, untagged, desc, r)
}

func pushWith(ctx context.Context, resolver remotes.Resolver, ref string, desc ocispec.Descriptor, r io.Reader) error {
	p, err := resolver.Pusher(ctx, ref)
	if err != nil {
		return fmt.Errorf("push to %s: %w", ref, err)
	}
	w, err := p.Push(ctx, desc)
	if errdefs.IsAlreadyExists(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("push %s to %s: %w", desc.Digest, ref, err)
	}
	defer w.Close()
	if err := content.Copy(ctx, w, r, desc.Size, desc.Digest); err != nil && !errdefs.IsAlreadyExists(err) {
		return fmt.Errorf("push %s to %s: %w", desc.Digest, ref, err)
	}
	return nil
}

func (s *registryStore) tag(ctx context.Context, desc ocispec.Descriptor, body []byte) error {
	// Pushing the manifest under the tag reference moves the tag. A fresh
	// resolver: the first one's push tracker already counts desc as pushed.
	return pushWith(ctx, s.newResolver(), s.ref, desc, bytes.NewReader(body))
}

// layoutStore is an OCI image layout directory (image-spec image-layout.md).
type layoutStore struct {
	dir     string
	tagName string
}

const refNameAnnotation = ocispec.AnnotationRefName

func (s *layoutStore) readIndex() (ocispec.Index, error) {
	var idx ocispec.Index
	b, err := os.ReadFile(filepath.Join(s.dir, ocispec.ImageIndexFile))
	if err != nil {
		return idx, fmt.Errorf("oci layout %s: %w", s.dir, err)
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		return idx, fmt.Errorf("oci layout %s: index.json: %w", s.dir, err)
	}
	return idx, nil
}

func (s *layoutStore) resolve(context.Context) (ocispec.Descriptor, error) {
	idx, err := s.readIndex()
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	var found []ocispec.Descriptor
	for _, m := range idx.Manifests {
		if s.tagName == "" || m.Annotations[refNameAnnotation] == s.tagName {
			found = append(found, m)
		}
	}
	switch {
	case len(found) == 1:
		return found[0], nil
	case len(found) == 0:
		return ocispec.Descriptor{}, fmt.Errorf("oci layout %s: no image tagged %q: %w", s.dir, s.tagName, errdefs.ErrNotFound)
	}
	return ocispec.Descriptor{}, fmt.Errorf("oci layout %s: %d images and no tag given", s.dir, len(found))
}

func (s *layoutStore) blobPath(d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("oci layout %s: %w", s.dir, err)
	}
	return filepath.Join(s.dir, ocispec.ImageBlobsDir, d.Algorithm().String(), d.Encoded()), nil
}

func (s *layoutStore) fetch(_ context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	p, err := s.blobPath(desc.Digest)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("oci layout %s: blob %s: %w", s.dir, desc.Digest, err)
	}
	return f, nil
}

func (s *layoutStore) push(_ context.Context, desc ocispec.Descriptor, r io.Reader) error {
	p, err := s.blobPath(desc.Digest)
	if err != nil {
		return err
	}
	if st, err := os.Stat(p); err == nil && st.Size() == desc.Size {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(s.dir, ocispec.ImageLayoutFile)); errors.Is(err, os.ErrNotExist) {
		layout, _ := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
		if err := writeFileAtomic(filepath.Join(s.dir, ocispec.ImageLayoutFile), strings.NewReader(string(layout)), ""); err != nil {
			return err
		}
	}
	return writeFileAtomic(p, r, desc.Digest)
}

func (s *layoutStore) tag(_ context.Context, desc ocispec.Descriptor, _ []byte) error {
	tag := s.tagName
	if tag == "" {
		tag = "latest"
	}
	idx, err := s.readIndex()
	if errors.Is(err, os.ErrNotExist) {
		idx, err = ocispec.Index{MediaType: ocispec.MediaTypeImageIndex}, nil
		idx.SchemaVersion = 2
	}
	if err != nil {
		return err
	}
	kept := idx.Manifests[:0]
	for _, m := range idx.Manifests {
		if m.Annotations[refNameAnnotation] != tag {
			kept = append(kept, m)
		}
	}
	d := desc
	d.Annotations = map[string]string{refNameAnnotation: tag}
	for k, v := range desc.Annotations {
		if k != refNameAnnotation {
			d.Annotations[k] = v
		}
	}
	idx.Manifests = append(kept, d)
	b, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(s.dir, ocispec.ImageIndexFile), strings.NewReader(string(b)), "")
}

// writeFileAtomic writes r to path through a temporary file and a rename,
// checking the content against want when it is set.
func writeFileAtomic(path string, r io.Reader, want digest.Digest) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	var w io.Writer = tmp
	var dg digest.Digester
	if want != "" {
		dg = want.Algorithm().Digester()
		w = io.MultiWriter(tmp, dg.Hash())
	}
	if _, err := io.Copy(w, r); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if dg != nil && dg.Digest() != want {
		return fmt.Errorf("write %s: content is %s, want %s", path, dg.Digest(), want)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
