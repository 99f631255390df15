// Package mirrorwarm is prediction on manifest GET for a zone mirror (README, "Zone mirrors"):
// it listens to the notifications of a pull-through cache (distribution's webhook events) and,
// when a node pulls an image manifest through the mirror, makes the mirror fetch that image's
// layers from the origin before the node asks for them (DupHunter's observation: a client
// that GETs a manifest soon GETs its layers). The blobs the image's start trace names
// (traceartifact) go first, in the order the start first read them; the other layers follow.
//
// distribution's proxy caches whole blobs only, so the mirror is warmed by reading each blob
// whole through it. The box sits beside the read path of docs/DESIGN.md, next to the mirror;
// it talks to the mirror as a registry client and never to bdd.
package mirrorwarm

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/blocktrace"
	"github.com/obdproject/obd/credentials"
	"github.com/obdproject/obd/traceartifact"
)

// Limits on what the mirror's events and manifests may make the warmer do.
const (
	maxEnvelope = 4 << 20 // bytes of one notification request
	maxManifest = 4 << 20 // bytes of an image manifest
	maxLayers   = 256     // layers of one image
)

// Options configure a Warmer.
type Options struct {
	// Mirror is the mirror's host as clients name it, e.g. "zone-mirror.internal:5000".
	Mirror string
	// PlainHTTP talks HTTP to the mirror (loopback mirrors always may); HostsDir, if set, is a
	// containerd certs.d directory for its TLS settings.
	PlainHTTP bool
	HostsDir  string
	// DockerConfig holds the credentials for the mirror; "" = Docker's default config.json.
	DockerConfig string
	// Concurrency is how many blobs are read through the mirror at once; default 4.
	Concurrency int
	// Remember is how long an image counts as warmed, so its later pulls (and the warmer's
	// own, which the mirror notifies too) do not warm it again; default 10 minutes.
	Remember time.Duration
	// Timeout bounds the warming of one image; default 30 minutes.
	Timeout time.Duration
	Logger  *slog.Logger
}

// Stats counts what the warmer did.
type Stats struct {
	Events, Images, Blobs, Bytes, Errors int64
}

// Warmer turns manifest pull events into blob reads through the mirror.
type Warmer struct {
	opts     Options
	log      *slog.Logger
	resolver remotes.Resolver
	sem      chan struct{}

	mu     sync.Mutex
	warmed map[string]time.Time // "repo@digest" -> when its warming started
	wg     sync.WaitGroup
	ctx    context.Context
	cancel context.CancelFunc

	events, imgs, blobs, bytes, errs atomic.Int64
}

// New returns a Warmer; Close stops its work.
func New(opts Options) (*Warmer, error) {
	if opts.Mirror == "" {
		return nil, errors.New("mirrorwarm: Options.Mirror is required")
	}
	opts.Concurrency = cmp.Or(opts.Concurrency, 4)
	opts.Remember = cmp.Or(opts.Remember, 10*time.Minute)
	opts.Timeout = cmp.Or(opts.Timeout, 30*time.Minute)
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	creds, err := credentials.Load(opts.DockerConfig)
	if err != nil {
		return nil, fmt.Errorf("mirrorwarm: %w", err)
	}
	hostOpts := config.HostOptions{Credentials: func(host string) (string, string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		return creds.Get(ctx, host)
	}}
	if opts.HostsDir != "" {
		hostOpts.HostDir = config.HostDirFromRoot(opts.HostsDir)
	}
	if opts.PlainHTTP {
		hostOpts.DefaultScheme = "http"
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Warmer{opts: opts, log: opts.Logger, sem: make(chan struct{}, opts.Concurrency),
		resolver: docker.NewResolver(docker.ResolverOptions{Hosts: config.ConfigureHosts(ctx, hostOpts)}),
		warmed:   map[string]time.Time{}, ctx: ctx, cancel: cancel}, nil
}

// Close stops warming and waits for the work in progress to end.
func (w *Warmer) Close() error {
	w.cancel()
	w.wg.Wait()
	return nil
}

// Stats returns the counters.
func (w *Warmer) Stats() Stats {
	return Stats{Events: w.events.Load(), Images: w.imgs.Load(), Blobs: w.blobs.Load(), Bytes: w.bytes.Load(), Errors: w.errs.Load()}
}

// event is what the warmer reads of a distribution notification event.
type event struct {
	Action string `json:"action"`
	Target struct {
		MediaType  string        `json:"mediaType"`
		Digest     digest.Digest `json:"digest"`
		Repository string        `json:"repository"`
	} `json:"target"`
}

// ServeHTTP takes a notification envelope (POST, distribution's events JSON) and starts
// warming the image of every manifest pull in it. It answers at once: the registry's
// notification queue waits for the answer.
func (w *Warmer) ServeHTTP(rw http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		http.Error(rw, "POST a notification envelope", http.StatusMethodNotAllowed)
		return
	}
	var env struct {
		Events []event `json:"events"`
	}
	body := http.MaxBytesReader(rw, req.Body, maxEnvelope)
	if err := json.NewDecoder(body).Decode(&env); err != nil {
		w.log.Warn("mirrorwarm: bad notification", "err", err)
		http.Error(rw, "bad envelope: "+err.Error(), http.StatusBadRequest)
		return
	}
	for _, e := range env.Events {
		w.events.Add(1)
		if e.Action != "pull" || !images.IsManifestType(e.Target.MediaType) || e.Target.Repository == "" || e.Target.Digest.Validate() != nil {
			continue
		}
		w.Start(e.Target.Repository, e.Target.Digest)
	}
	rw.WriteHeader(http.StatusOK)
}

// Start warms the image with manifest dgst in repo in the background, unless it was started
// within Options.Remember.
func (w *Warmer) Start(repo string, dgst digest.Digest) {
	key := repo + "@" + dgst.String()
	w.mu.Lock()
	if t, ok := w.warmed[key]; ok && time.Since(t) < w.opts.Remember {
		w.mu.Unlock()
		return
	}
	for k, t := range w.warmed {
		if time.Since(t) >= w.opts.Remember {
			delete(w.warmed, k)
		}
	}
	w.warmed[key] = time.Now()
	w.mu.Unlock()
	if w.ctx.Err() != nil {
		return
	}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		ctx, cancel := context.WithTimeout(w.ctx, w.opts.Timeout)
		defer cancel()
		if err := w.Warm(ctx, repo, dgst); err != nil {
			w.errs.Add(1)
			w.log.Warn("mirrorwarm: warming failed", "repo", repo, "manifest", dgst, "err", err)
		}
	}()
}

// Warm reads the layers of the image whose manifest is dgst in repo through the mirror,
// the blobs its start trace names first.
func (w *Warmer) Warm(ctx context.Context, repo string, dgst digest.Digest) error {
	ref := w.opts.Mirror + "/" + repo
	fetcher, err := w.resolver.Fetcher(ctx, ref)
	if err != nil {
		return fmt.Errorf("mirrorwarm: %s: %w", ref, err)
	}
	mdesc, m, err := w.manifest(ctx, ref, dgst)
	if err != nil {
		return err
	}
	if !isImageConfig(m.Config.MediaType) {
		w.log.Debug("mirrorwarm: not an image, not warmed", "repo", repo, "manifest", dgst, "config", m.Config.MediaType)
		return nil
	}
	w.imgs.Add(1)
	order := w.order(ctx, ref, mdesc, m.Layers)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, len(order))
	for i, l := range order {
		select {
		case w.sem <- struct{}{}:
		case <-ctx.Done():
			errs[i] = ctx.Err()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-w.sem }()
			errs[i] = w.readBlob(ctx, fetcher, l)
		}()
	}
	wg.Wait()
	err = errors.Join(errs...)
	w.log.Info("mirrorwarm: image warmed", "repo", repo, "manifest", dgst, "layers", len(order), "took", time.Since(start), "err", err)
	return err
}

// isImageConfig tells an image manifest from an artifact's (a start trace's, a signature's),
// whose pulls the mirror notifies as well.
func isImageConfig(mt string) bool {
	return mt == ocispec.MediaTypeImageConfig || mt == images.MediaTypeDockerSchema2Config
}

// manifest fetches and parses an image manifest through the mirror.
func (w *Warmer) manifest(ctx context.Context, ref string, dgst digest.Digest) (ocispec.Descriptor, ocispec.Manifest, error) {
	name, desc, err := w.resolver.Resolve(ctx, ref+"@"+dgst.String())
	if err != nil {
		return desc, ocispec.Manifest{}, fmt.Errorf("mirrorwarm: resolve %s@%s: %w", ref, dgst, err)
	}
	if !images.IsManifestType(desc.MediaType) || desc.Size > maxManifest {
		return desc, ocispec.Manifest{}, fmt.Errorf("mirrorwarm: %s@%s: not an image manifest of at most %d bytes (%s, %d bytes)", ref, dgst, maxManifest, desc.MediaType, desc.Size)
	}
	fetcher, err := w.resolver.Fetcher(ctx, name)
	if err != nil {
		return desc, ocispec.Manifest{}, err
	}
	rc, err := fetcher.Fetch(ctx, desc)
	if err != nil {
		return desc, ocispec.Manifest{}, fmt.Errorf("mirrorwarm: fetch %s@%s: %w", ref, dgst, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, desc.Size+1))
	if err != nil {
		return desc, ocispec.Manifest{}, fmt.Errorf("mirrorwarm: fetch %s@%s: %w", ref, dgst, err)
	}
	if int64(len(b)) != desc.Size || desc.Digest.Algorithm().FromBytes(b) != desc.Digest {
		return desc, ocispec.Manifest{}, fmt.Errorf("mirrorwarm: %s@%s: manifest does not match its descriptor", ref, dgst)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return desc, ocispec.Manifest{}, fmt.Errorf("mirrorwarm: %s@%s: manifest: %w", ref, dgst, err)
	}
	if len(m.Layers) > maxLayers {
		return desc, ocispec.Manifest{}, fmt.Errorf("mirrorwarm: %s@%s: %d layers, at most %d", ref, dgst, len(m.Layers), maxLayers)
	}
	for _, l := range m.Layers {
		if l.Digest.Validate() != nil || l.Size < 0 {
			return desc, ocispec.Manifest{}, fmt.Errorf("mirrorwarm: %s@%s: bad layer descriptor %q", ref, dgst, l.Digest)
		}
	}
	return desc, m, nil
}

// order puts the layers the image's start trace reads first, by when the start first read
// them; the rest follow in manifest order. Without a usable trace it is the manifest order.
func (w *Warmer) order(ctx context.Context, ref string, mdesc ocispec.Descriptor, layers []ocispec.Descriptor) []ocispec.Descriptor {
	sel, err := traceartifact.Select(ctx, w.resolver, ref, traceartifact.Image{Manifest: mdesc, Layers: layers}, math.MaxInt64)
	if err != nil {
		if !errors.Is(err, traceartifact.ErrNoTrace) {
			w.log.Warn("mirrorwarm: no start trace used", "ref", ref, "manifest", mdesc.Digest, "err", err)
		}
		return layers
	}
	t, err := blocktrace.Decode(sel.Blocks)
	if err != nil {
		w.log.Warn("mirrorwarm: no start trace used", "ref", ref, "manifest", mdesc.Digest, "err", err)
		return layers
	}
	return Order(layers, t)
}

// Order returns layers with those t reads first, by the earliest first-read of their ranges
// (ranges of unknown order count after every known one), then the others in their order.
func Order(layers []ocispec.Descriptor, t blocktrace.Trace) []ocispec.Descriptor {
	first := map[digest.Digest]int64{}
	for _, b := range t.Blobs {
		for _, r := range b.Ranges {
			f := r.First
			if f <= 0 {
				f = math.MaxInt64
			}
			if old, ok := first[b.Digest]; !ok || f < old {
				first[b.Digest] = f
			}
		}
	}
	out := slices.Clone(layers)
	slices.SortStableFunc(out, func(a, b ocispec.Descriptor) int {
		fa, oka := first[a.Digest]
		fb, okb := first[b.Digest]
		switch {
		case oka && okb:
			return cmp.Compare(fa, fb)
		case oka:
			return -1
		case okb:
			return 1
		}
		return 0
	})
	return out
}

// readBlob reads a blob whole through the mirror, which makes the mirror store it.
func (w *Warmer) readBlob(ctx context.Context, fetcher remotes.Fetcher, desc ocispec.Descriptor) error {
	rc, err := fetcher.Fetch(ctx, ocispec.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size})
	if err != nil {
		return fmt.Errorf("mirrorwarm: blob %s: %w", desc.Digest, err)
	}
	defer rc.Close()
	n, err := io.Copy(io.Discard, rc)
	w.bytes.Add(n)
	if err != nil {
		return fmt.Errorf("mirrorwarm: blob %s: after %d bytes: %w", desc.Digest, n, err)
	}
	w.blobs.Add(1)
	return nil
}
