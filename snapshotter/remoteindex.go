package snapshotter

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/opencontainers/go-digest"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/imagelabels"
)

// RemoteIndexes finds the lazy-start indexes that `obd index` stores beside ordinary OCI
// images, as artifacts referring to an image's manifest. It asks bdd (FetchIndex: the
// registry's hosts.toml and credentials are bdd's) once per image manifest: concurrent
// callers share one lookup, a found index is kept for the snapshotter's life, a miss or
// failure is asked again after remoteTraceRetry. Each lookup is bounded by remoteTraceTimeout.
type RemoteIndexes struct {
	client bddv1.DaemonClient
	logger *slog.Logger

	mu      sync.Mutex
	lookups map[string]*indexLookup // by repository@manifest
}

// indexLookup is one image's lookup; its fields are set before done is closed.
type indexLookup struct {
	done     chan struct{}
	finished time.Time
	layers   map[digest.Digest]*bddv1.IndexedBlob // by layer blob digest; nil: no index
	err      error
}

// NewRemoteIndexes returns the registry's image indexes, looked up through bdd's client.
func NewRemoteIndexes(client bddv1.DaemonClient, logger *slog.Logger) *RemoteIndexes {
	if logger == nil {
		logger = slog.Default()
	}
	return &RemoteIndexes{client: client, logger: logger, lookups: map[string]*indexLookup{}}
}

// Layer returns layer (a blob digest) of the image ref with manifest as an indexed lazy
// layer; ok is false when the registry holds no index of the image or it lacks the layer.
func (r *RemoteIndexes) Layer(ctx context.Context, ref string, manifest, layer digest.Digest) (_ RemoteLayer, ok bool, err error) {
	repo, err := repository(ref)
	if err != nil {
		return RemoteLayer{}, false, err
	}
	l := r.lookup(repo, manifest)
	select {
	case <-l.done:
	case <-ctx.Done():
		return RemoteLayer{}, false, ctx.Err()
	}
	if l.err != nil {
		return RemoteLayer{}, false, l.err
	}
	ix := l.layers[layer]
	if ix == nil {
		return RemoteLayer{}, false, nil
	}
	part := func(b *bddv1.RemoteBlob) IndexBlob {
		return IndexBlob{Digest: digest.Digest(b.GetDigest()), Size: b.GetSize(),
			RangeTable: digest.Digest(b.GetRangeTable()), RangeTableOffset: b.GetRangeTableOffset()}
	}
	return RemoteLayer{Ref: ref, Digest: layer, Size: ix.GetBlob().GetSize(), Manifest: manifest,
		Index: &LayerIndex{GzIndex: part(ix.GetGzIndex()), Meta: part(ix.GetMeta()), Map: part(ix.GetMap())}}, true, nil
}

func (r *RemoteIndexes) lookup(repo string, manifest digest.Digest) *indexLookup {
	key := repo + "@" + manifest.String()
	r.mu.Lock()
	defer r.mu.Unlock()
	if l := r.lookups[key]; l != nil {
		select {
		case <-l.done:
			if l.layers != nil || time.Since(l.finished) < remoteTraceRetry {
				return l
			}
		default:
			return l
		}
	}
	if len(r.lookups) >= maxRemoteTraces {
		for k, l := range r.lookups {
			select {
			case <-l.done:
				delete(r.lookups, k)
			default:
			}
			if len(r.lookups) < maxRemoteTraces {
				break
			}
		}
	}
	l := &indexLookup{done: make(chan struct{})}
	r.lookups[key] = l
	go r.run(l, repo, manifest)
	return l
}

// run asks bdd for the image's index and records the answer in l.
func (r *RemoteIndexes) run(l *indexLookup, repo string, manifest digest.Digest) {
	defer func() {
		l.finished = time.Now()
		close(l.done)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), remoteTraceTimeout)
	defer cancel()
	start := time.Now()
	resp, err := r.client.FetchIndex(ctx, &bddv1.FetchIndexRequest{Ref: repo, ManifestDigest: manifest.String()})
	if err != nil {
		l.err = fmt.Errorf("registry index of %s@%s: %w", repo, manifest, err)
		r.logger.Warn("registry index not fetched", "ref", repo, "manifest", manifest, "err", err)
		return
	}
	if !resp.GetFound() {
		r.logger.Info("no registry index", "ref", repo, "manifest", manifest, "took", time.Since(start))
		return
	}
	l.layers = map[digest.Digest]*bddv1.IndexedBlob{}
	for _, ix := range resp.GetLayers() {
		l.layers[digest.Digest(ix.GetBlob().GetDigest())] = ix
	}
	r.logger.Info("registry index found", "ref", repo, "manifest", manifest, "artifact", resp.GetArtifactDigest(),
		"layers", len(l.layers), "took", time.Since(start))
}

// indexedLayer returns the layer the labels of an ordinary OCI layer being unpacked name, as
// an indexed lazy layer, when the registry holds an index of its image (WithRemoteIndexes)
// and the layers below it are lazy too; ok is false otherwise, and the layer is unpacked as
// usual.
func (o *Snapshotter) indexedLayer(ctx context.Context, parent string, labels map[string]string) (RemoteLayer, bool) {
	if o.cfg.remoteIndexes == nil {
		return RemoteLayer{}, false
	}
	ref := labels[imagelabels.ImageRef]
	if ref == "" {
		ref = labels[imagelabels.CRIImageRef]
	}
	manifest, err1 := digest.Parse(labels[imagelabels.CRIManifestDigest])
	layer, err2 := digest.Parse(labels[imagelabels.CRILayerDigest])
	if ref == "" || err1 != nil || err2 != nil {
		return RemoteLayer{}, false
	}
	if parent != "" {
		var parentID string
		if err := o.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
			var err error
			parentID, _, _, err = storage.GetInfo(ctx, parent)
			return err
		}); err != nil || !o.isLazy(parentID) {
			return RemoteLayer{}, false // the image is being unpacked as usual: keep to that
		}
	}
	ctx, cancel := context.WithTimeout(ctx, remoteTraceTimeout)
	defer cancel()
	rl, ok, err := o.cfg.remoteIndexes.Layer(ctx, ref, manifest, layer)
	if err != nil {
		o.cfg.logger.WarnContext(ctx, "image index not used: layers unpack as usual", "ref", ref, "manifest", manifest, "err", err)
		return RemoteLayer{}, false
	}
	return rl, ok
}
