package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/blocktrace"
	"github.com/obdproject/obd/imagelabels"
	"github.com/obdproject/obd/pagetrace"
)

const (
	// remoteTraceTimeout bounds one lookup of an image's start trace in the registry (a few
	// round trips: the referrers, the artifact's manifest, its blobs).
	remoteTraceTimeout = 30 * time.Second
	// remoteTraceRetry is how long a lookup that found nothing, or failed, stands before the
	// next attach of the chain asks the registry again: a trace pushed later is found then.
	remoteTraceRetry = 10 * time.Minute
	// maxRemoteTraces bounds the lookups kept in memory; the oldest finished one goes first.
	maxRemoteTraces = 256
)

// ErrNoRemoteTrace is returned by RemoteTraces when the registry holds no start trace for a
// chain's image (or the layers do not say which image they belong to).
var ErrNoRemoteTrace = errors.New("no start trace in the registry")

// RemoteTraces finds the start traces that `ctr-obd record-trace --push` and `obd convert
// --record-trace` store in the registry as artifacts referring to an image's manifest. It asks
// bdd (FetchTrace: the registry's hosts.toml and credentials are bdd's) once per layer chain:
// concurrent callers share one lookup, a found trace is kept for the snapshotter's life, a miss
// or failure is asked again after remoteTraceRetry. Each lookup is bounded by
// remoteTraceTimeout, whatever its callers' contexts.
type RemoteTraces struct {
	client bddv1.DaemonClient
	logger *slog.Logger

	mu      sync.Mutex
	lookups map[digest.Digest]*traceLookup
}

// traceLookup is one chain's lookup; its fields are set before done is closed.
type traceLookup struct {
	done     chan struct{}
	finished time.Time
	blocks   []byte
	pages    pagetrace.Trace
	artifact string
	err      error // ErrNoRemoteTrace, or why the lookup failed
}

// NewRemoteTraces returns the registry's start traces, looked up through bdd's client.
func NewRemoteTraces(client bddv1.DaemonClient, logger *slog.Logger) *RemoteTraces {
	if logger == nil {
		logger = slog.Default()
	}
	return &RemoteTraces{client: client, logger: logger, lookups: map[digest.Digest]*traceLookup{}}
}

// LookAhead starts the lookup of the start trace of the image whose manifest and layer blobs
// (lowest first) a pull names, before the layers' sizes are known; Trace checks the sizes.
// A chain looked up already is not asked again.
func (r *RemoteTraces) LookAhead(ref string, manifest digest.Digest, blobs []digest.Digest) {
	layers := make([]RemoteLayer, len(blobs))
	for i, d := range blobs {
		layers[i] = RemoteLayer{Ref: ref, Digest: d, Manifest: manifest}
	}
	if _, err := r.lookup(layers); err != nil {
		r.logger.Debug("no registry trace lookup ahead", "ref", ref, "err", err)
	}
}

// Trace returns the block trace the registry holds for the image of layers (lowest first),
// in blocktrace's encoding, and the digest of its artifact. It waits for the chain's lookup
// or ctx, whichever ends first. The trace names only blobs of layers, with their sizes.
func (r *RemoteTraces) Trace(ctx context.Context, layers []RemoteLayer) (blocks []byte, artifact string, err error) {
	l, err := r.wait(ctx, layers)
	if err != nil {
		return nil, "", err
	}
	if err := checkTraceBlobs(l.blocks, layers); err != nil {
		return nil, "", fmt.Errorf("registry trace %s: %w", l.artifact, err)
	}
	return l.blocks, l.artifact, nil
}

// checkTraceBlobs checks that a block trace names only blobs of layers, with their sizes (a
// lookup ahead of the pull asked without them).
func checkTraceBlobs(blocks []byte, layers []RemoteLayer) error {
	t, err := blocktrace.Decode(blocks)
	if err != nil {
		return err
	}
	sizes := make(map[digest.Digest]int64, len(layers))
	for _, l := range layers {
		sizes[l.Digest] = l.Size
	}
	for _, b := range t.Blobs {
		size, ok := sizes[b.Digest]
		if !ok {
			return fmt.Errorf("blob %s is not a layer of the chain", b.Digest)
		}
		if b.Size != size {
			return fmt.Errorf("blob %s has size %d in the trace, %d in the image", b.Digest, b.Size, size)
		}
	}
	return nil
}

// Pages returns the page trace stored with the chain's registry trace; ErrNoRemoteTrace when
// the trace has none.
func (r *RemoteTraces) Pages(ctx context.Context, layers []RemoteLayer) (pagetrace.Trace, error) {
	l, err := r.wait(ctx, layers)
	if err != nil {
		return nil, err
	}
	if len(l.pages) == 0 {
		return nil, fmt.Errorf("%w: artifact %s has no page trace", ErrNoRemoteTrace, l.artifact)
	}
	return l.pages, nil
}

func (r *RemoteTraces) wait(ctx context.Context, layers []RemoteLayer) (*traceLookup, error) {
	l, err := r.lookup(layers)
	if err != nil {
		return nil, err
	}
	select {
	case <-l.done:
		return l, l.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// lookup returns the chain's lookup, starting one when there is none or the last one failed
// more than remoteTraceRetry ago.
func (r *RemoteTraces) lookup(layers []RemoteLayer) (*traceLookup, error) {
	if len(layers) == 0 {
		return nil, fmt.Errorf("%w: no layers", ErrNoRemoteTrace)
	}
	top := layers[len(layers)-1]
	if top.Manifest == "" {
		return nil, fmt.Errorf("%w: the pull did not label layer %s with its image's manifest (%s)",
			ErrNoRemoteTrace, top.Digest, imagelabels.CRIManifestDigest)
	}
	chain, err := chainID(layers)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if l := r.lookups[chain]; l != nil && !r.stale(l) {
		return l, nil
	}
	r.evictLocked()
	l := &traceLookup{done: make(chan struct{})}
	r.lookups[chain] = l
	go r.run(l, chain, layers)
	return l, nil
}

// stale says whether a finished lookup that found no trace is due to be asked again. The
// caller holds r.mu.
func (r *RemoteTraces) stale(l *traceLookup) bool {
	select {
	case <-l.done:
		return l.err != nil && time.Since(l.finished) > remoteTraceRetry
	default:
		return false
	}
}

// evictLocked makes room for one more lookup by dropping the oldest finished ones. The caller
// holds r.mu.
func (r *RemoteTraces) evictLocked() {
	for len(r.lookups) >= maxRemoteTraces {
		var oldest digest.Digest
		var oldestAt time.Time
		for chain, l := range r.lookups {
			select {
			case <-l.done:
				if oldest == "" || l.finished.Before(oldestAt) {
					oldest, oldestAt = chain, l.finished
				}
			default:
			}
		}
		if oldest == "" {
			return // all running: each is bounded by remoteTraceTimeout
		}
		delete(r.lookups, oldest)
	}
}

// run asks bdd for the chain's trace and records the answer in l.
func (r *RemoteTraces) run(l *traceLookup, chain digest.Digest, layers []RemoteLayer) {
	defer func() {
		l.finished = time.Now()
		close(l.done)
	}()
	top := layers[len(layers)-1]
	req := &bddv1.FetchTraceRequest{Ref: top.Ref, ManifestDigest: top.Manifest.String()}
	for _, layer := range layers {
		repo, err := repository(layer.Ref)
		if err != nil {
			l.err = err
			return
		}
		req.Layers = append(req.Layers, &bddv1.RemoteBlob{Ref: repo, Digest: layer.Digest.String(), Size: layer.Size})
	}
	ctx, cancel := context.WithTimeout(context.Background(), remoteTraceTimeout)
	defer cancel()
	start := time.Now()
	resp, err := r.client.FetchTrace(ctx, req)
	switch {
	case err != nil:
		l.err = fmt.Errorf("registry trace of %s: %w", top.Ref, err)
		r.logger.Warn("registry trace not fetched", "ref", top.Ref, "chain", chain, "err", err)
		return
	case !resp.GetFound():
		l.err = fmt.Errorf("%w: %s (manifest %s)", ErrNoRemoteTrace, top.Ref, top.Manifest)
		r.logger.Info("no registry trace", "ref", top.Ref, "chain", chain, "took", time.Since(start))
		return
	}
	l.blocks, l.artifact = resp.GetTrace(), resp.GetArtifactDigest()
	if raw := resp.GetPageTrace(); len(raw) > 0 {
		pages, err := pagetrace.Decode(raw)
		if err != nil {
			r.logger.Warn("registry page trace not used", "ref", top.Ref, "artifact", l.artifact, "err", err)
		} else {
			l.pages = pages
		}
	}
	r.logger.Info("registry trace fetched", "ref", top.Ref, "chain", chain, "artifact", l.artifact,
		"bytes", len(l.blocks), "page_ranges", len(l.pages), "took", time.Since(start))
}

// lookAheadTrace starts the registry lookup of an image's start trace when a pull records the
// image's bottom layer, whose labels name the manifest and every layer above it
// (cri.image-layers, lowest first): the lookup's round trips then overlap the rest of the pull
// instead of delaying the replay that starts when the device attaches.
func (o *Snapshotter) lookAheadTrace(labels map[string]string, bottom RemoteLayer) {
	if o.cfg.remoteTraces == nil || bottom.Manifest == "" || labels[imagelabels.CRIImageLayers] == "" {
		return
	}
	var blobs []digest.Digest
	for _, raw := range strings.Split(labels[imagelabels.CRIImageLayers], ",") {
		d, err := digest.Parse(raw)
		if err != nil {
			return // containerd shortens a list too long for a label: no lookup ahead
		}
		blobs = append(blobs, d)
	}
	if blobs[0] != bottom.Digest {
		return
	}
	o.cfg.remoteTraces.LookAhead(bottom.Ref, bottom.Manifest, blobs)
}
