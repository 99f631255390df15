package snapshotter

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/blocktrace"
	"github.com/obdproject/obd/tracestore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// bddCallTimeout bounds one call to bdd; an attach may first read the blobs' headers from the
// registry.
const bddCallTimeout = 2 * time.Minute

// BDDDevices is the DeviceManager of production: it asks bdd, over its control API, for one
// device per key. bdd names its devices itself, so which bdd device serves which key is kept
// in a small file per key under stateDir; with bdd persisting its devices across its own
// restarts, Attach and Detach stay idempotent across restarts of either process.
type BDDDevices struct {
	client   bddv1.DaemonClient
	stateDir string
	traces   *tracestore.Store // nil: no prefetch at attach
	remote   *RemoteTraces     // nil: no traces from the registry
	logger   *slog.Logger
}

var _ DeviceManager = (*BDDDevices)(nil)

// BDDOption configures NewBDDDevices.
type BDDOption func(*BDDDevices)

// WithTracePrefetch makes every new device replay the start trace recorded for its chain
// (by `ctr-obd record-trace`) from the trace store in dir: bdd prefetches the recorded
// ranges while the container starts, so they leave its critical path.
func WithTracePrefetch(dir string) BDDOption {
	return func(b *BDDDevices) { b.traces = &tracestore.Store{Dir: dir} }
}

// WithRemoteTracePrefetch makes a new device whose chain has no local trace replay the start
// trace the registry holds for its image (RemoteTraces), in the same way.
func WithRemoteTracePrefetch(r *RemoteTraces) BDDOption {
	return func(b *BDDDevices) { b.remote = r }
}

// WithBDDLogger sets the logger of background work (trace prefetch).
func WithBDDLogger(l *slog.Logger) BDDOption {
	return func(b *BDDDevices) { b.logger = l }
}

// NewBDDDevices returns a DeviceManager using client, keeping its key → device map in stateDir.
func NewBDDDevices(client bddv1.DaemonClient, stateDir string, opts ...BDDOption) (*BDDDevices, error) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("bdd devices: %w", err)
	}
	b := &BDDDevices{client: client, stateDir: stateDir, logger: slog.Default()}
	for _, o := range opts {
		o(b)
	}
	return b, nil
}

// prefetchTimeout bounds a background trace replay.
const prefetchTimeout = 5 * time.Minute

// startPrefetch asks bdd, in the background, to replay the start trace of the chain of layers,
// if there is one, and returns what stops the replay (for an attach that failed). The trace
// recorded on this node wins; without one, the registry's (WithRemoteTracePrefetch). It never
// fails the attach: a missing or broken trace only costs the speed-up.
func (b *BDDDevices) startPrefetch(key string, layers []RemoteLayer) (stop func()) {
	stop = func() {}
	if b.traces == nil && b.remote == nil {
		return stop
	}
	chain, err := chainID(layers)
	if err != nil {
		b.logger.Warn("no trace prefetch", "key", key, "err", err)
		return stop
	}
	trace, err := b.localTrace(chain)
	if err != nil {
		b.logger.Warn("no trace prefetch", "key", key, "chain", chain, "err", err)
		return stop
	}
	if trace == nil && b.remote == nil {
		return stop
	}
	ctx, cancel := context.WithTimeout(context.Background(), prefetchTimeout)
	go func() {
		defer cancel()
		source, artifact := "local", ""
		if trace == nil {
			if trace, artifact, err = b.remote.Trace(ctx, layers); err != nil {
				if !errors.Is(err, ErrNoRemoteTrace) && !errors.Is(ctx.Err(), context.Canceled) {
					b.logger.Warn("no trace prefetch", "key", key, "chain", chain, "err", err)
				}
				return
			}
			source = "registry"
		}
		start := time.Now()
		_, err := b.client.Prefetch(ctx, &bddv1.PrefetchRequest{Trace: pinTrace(trace, layers)})
		switch {
		case errors.Is(ctx.Err(), context.Canceled):
			b.logger.Info("trace prefetch stopped: the attach failed", "key", key, "chain", chain)
		case err != nil:
			b.logger.Warn("trace prefetch failed", "key", key, "chain", chain, "source", source, "err", err)
		default:
			b.logger.Info("trace prefetched", "key", key, "chain", chain, "source", source, "artifact", artifact, "took", time.Since(start))
		}
	}()
	return cancel
}

// pinTrace pins each blob of an encoded trace that is one of layers as the device will read it
// (blocktrace.Trace.Pin): the manifest, not the trace, says where a blob is and what checks it.
// A repository that names the same one as the trace's is left as it is. A trace it cannot
// decode goes as it is, for bdd to refuse.
func pinTrace(raw []byte, layers []RemoteLayer) []byte {
	t, err := blocktrace.Decode(raw)
	if err != nil {
		return raw
	}
	changed := false
	for _, l := range layers {
		repo, err := repository(l.Ref)
		if err != nil {
			continue
		}
		for _, b := range t.Blobs {
			if theirs, err := repository(b.Ref); b.Digest == l.Digest && err == nil && theirs == repo {
				repo = b.Ref // the same repository: keep the trace's spelling
			}
		}
		changed = t.Pin(l.Digest, repo, l.RangeTable, l.RangeTableOffset) || changed
	}
	if !changed {
		return raw
	}
	out, err := t.Encode()
	if err != nil {
		return raw
	}
	return out
}

// localTrace returns the trace recorded on this node for chain; nil when there is none.
func (b *BDDDevices) localTrace(chain digest.Digest) ([]byte, error) {
	if b.traces == nil {
		return nil, nil
	}
	trace, err := b.traces.Load(chain)
	if errors.Is(err, tracestore.ErrNoTrace) {
		return nil, nil
	}
	return trace, err
}

// Attach returns the device path of key, asking bdd to attach the chain (read-only when
// upperDir is "") unless bdd already serves a device for key.
func (b *BDDDevices) Attach(ctx context.Context, key string, layers []RemoteLayer, upperDir string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, bddCallTimeout)
	defer cancel()
	statePath, err := b.statePath(key)
	if err != nil {
		return "", err
	}
	if id, err := os.ReadFile(statePath); err == nil {
		devPath, err := b.devicePath(ctx, string(id))
		if err != nil || devPath != "" {
			return devPath, err
		}
		// bdd no longer knows the device (its state was wiped): attach it anew.
	}
	layers = throughImage(layers)
	req, err := b.attachRequest(key, layers, upperDir)
	if err != nil {
		return "", err
	}
	// The replay starts first: the device's first reads (its layers' indexes) are the
	// trace's first ranges, and bdd leaves its own fetching ahead to a covering replay.
	stopPrefetch := b.startPrefetch(key, layers)
	attached := false
	defer func() {
		if !attached {
			stopPrefetch()
		}
	}()
	resp, err := b.client.Attach(ctx, req)
	if err != nil {
		return "", fmt.Errorf("bdd attach %s: %w", key, err)
	}
	dev := resp.GetDevice()
	if dev.GetDevicePath() == "" {
		_, detachErr := b.client.Detach(ctx, &bddv1.DetachRequest{Id: dev.GetId()})
		return "", errors.Join(fmt.Errorf("bdd attached %s as %q without a block device (transport %s)", key, dev.GetId(), dev.GetTransport()), detachErr)
	}
	if err := writeFileAtomic(statePath, []byte(dev.GetId())); err != nil {
		_, detachErr := b.client.Detach(ctx, &bddv1.DetachRequest{Id: dev.GetId()})
		return "", errors.Join(fmt.Errorf("record device of %s: %w", key, err), detachErr)
	}
	attached = true
	return dev.GetDevicePath(), nil
}

// attachRequest is the Attach request for key's device. Its idempotency key (deviceKey)
// makes a repeated Attach, after a crash before the device was recorded, return the device
// bdd already has.
func (b *BDDDevices) attachRequest(key string, layers []RemoteLayer, upperDir string) (*bddv1.AttachRequest, error) {
	req := &bddv1.AttachRequest{UpperDir: upperDir, ReadOnly: upperDir == "", IdempotencyKey: b.deviceKey(key)}
	for _, layer := range layers {
		if layer.Path != "" {
			req.Layers = append(req.Layers, &bddv1.Layer{Source: &bddv1.Layer_Path{Path: layer.Path}})
			continue
		}
		repo, err := repository(layer.Ref)
		if err != nil {
			return nil, err
		}
		blob := &bddv1.RemoteBlob{Ref: repo, Digest: layer.Digest.String(), Size: layer.Size,
			RangeTable: layer.RangeTable.String(), RangeTableOffset: layer.RangeTableOffset}
		if layer.IPFSURL != "" {
			blob.Urls = []string{layer.IPFSURL}
		}
		if ix := layer.Index; ix != nil {
			part := func(b IndexBlob) *bddv1.RemoteBlob {
				return &bddv1.RemoteBlob{Ref: repo, Digest: b.Digest.String(), Size: b.Size,
					RangeTable: b.RangeTable.String(), RangeTableOffset: b.RangeTableOffset}
			}
			req.Layers = append(req.Layers, &bddv1.Layer{Source: &bddv1.Layer_Indexed{Indexed: &bddv1.IndexedBlob{
				Blob: blob, GzIndex: part(ix.GzIndex), Meta: part(ix.Meta), Map: part(ix.Map)}}})
			continue
		}
		req.Layers = append(req.Layers, &bddv1.Layer{Source: &bddv1.Layer_Blob{Blob: blob}})
	}
	return req, nil
}

// deviceKey is the idempotency key of key's device: the key, in a namespace of this
// manager's state dir, so that two snapshotters on one bdd never share devices.
func (b *BDDDevices) deviceKey(key string) string { return b.keyPrefix() + key }

func (b *BDDDevices) keyPrefix() string {
	sum := sha256.Sum256([]byte(b.stateDir))
	return "overlaybd-snapshotter:" + hex.EncodeToString(sum[:6]) + ":"
}

// Reconcile detaches the devices bdd holds under this manager's keys that the manager has
// no record of: a snapshotter killed between bdd's Attach and recording the device leaves
// one (never mounted: a device is mounted only once recorded), and its snapshot may be
// gone by the time the snapshotter is back. Run it when the snapshotter starts.
func (b *BDDDevices) Reconcile(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, bddCallTimeout)
	defer cancel()
	resp, err := b.client.List(ctx, &bddv1.ListRequest{})
	if err != nil {
		return fmt.Errorf("bdd list: %w", err)
	}
	var errs []error
	for _, dev := range resp.GetDevices() {
		key, ours := strings.CutPrefix(dev.GetIdempotencyKey(), b.keyPrefix())
		if !ours {
			continue
		}
		if path, err := b.statePath(key); err == nil {
			if id, err := os.ReadFile(path); err == nil && string(id) == dev.GetId() {
				continue
			}
		}
		b.logger.Warn("detaching a device without a record (the snapshotter stopped before recording it)", "key", key, "device", dev.GetId())
		if err := b.detach(ctx, dev.GetId()); err != nil {
			errs = append(errs, fmt.Errorf("detach orphaned device %s (%s): %w", dev.GetId(), key, err))
		}
	}
	return errors.Join(errs...)
}

// Detach asks bdd to tear down the device of key; a device bdd does not know is gone already.
func (b *BDDDevices) Detach(ctx context.Context, key string) error {
	ctx, cancel := context.WithTimeout(ctx, bddCallTimeout)
	defer cancel()
	statePath, err := b.statePath(key)
	if err != nil {
		return err
	}
	id, err := os.ReadFile(statePath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("device of %s: %w", key, err)
	}
	if err := b.detach(ctx, string(id)); err != nil {
		return fmt.Errorf("bdd detach %s (%s): %w", key, id, err)
	}
	return os.Remove(statePath)
}

// busyRetries and busyWait bound how long Detach waits for the kernel to let go of a device
// bdd reports busy: right after an unmount, copies of the mount in other mount namespaces
// (a container's, being set up) can hold it for a moment.
const (
	busyRetries = 10
	busyWait    = 200 * time.Millisecond
)

// detach asks bdd to detach device id; a device bdd does not know is gone already.
func (b *BDDDevices) detach(ctx context.Context, id string) error {
	for attempt := 0; ; attempt++ {
		_, err := b.client.Detach(ctx, &bddv1.DetachRequest{Id: id})
		switch {
		case err == nil || status.Code(err) == codes.NotFound:
			return nil
		case status.Code(err) != codes.FailedPrecondition || attempt == busyRetries:
			return err
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(busyWait):
		}
	}
}

// devicePath returns the block device of bdd's device id, "" when bdd has no such device.
func (b *BDDDevices) devicePath(ctx context.Context, id string) (string, error) {
	resp, err := b.client.List(ctx, &bddv1.ListRequest{})
	if err != nil {
		return "", fmt.Errorf("bdd list: %w", err)
	}
	for _, dev := range resp.GetDevices() {
		if dev.GetId() == id {
			return dev.GetDevicePath(), nil
		}
	}
	return "", nil
}

func (b *BDDDevices) statePath(key string) (string, error) {
	if key == "" || strings.ContainsAny(key, "/\x00") || key == "." || key == ".." {
		return "", fmt.Errorf("device key %q is not a plain name", key)
	}
	return filepath.Join(b.stateDir, key), nil
}

// throughImage returns the chain with every registry layer named by the image of its top
// layer, the image being run. containerd shares a layer's snapshot among all images that have
// it and the snapshot remembers the image that brought it; read through that image's
// repository, a private image's layers would be fetched with another image's credentials and
// checked against its access (bdd's check of cached blobs). Every layer of an image is a blob
// of the image's own repository, so reading them there is always possible.
func throughImage(layers []RemoteLayer) []RemoteLayer {
	if len(layers) == 0 || layers[len(layers)-1].Path != "" {
		return layers
	}
	top := layers[len(layers)-1].Ref
	out := make([]RemoteLayer, len(layers))
	for i, l := range layers {
		if l.Path == "" {
			l.Ref = top
		}
		out[i] = l
	}
	return out
}

// repository returns the repository of an image reference ("host/app:v1" → "host/app"), the
// form bdd's API takes.
func repository(ref string) (string, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", fmt.Errorf("image reference %q: %w", ref, err)
	}
	return reference.TrimNamed(named).String(), nil
}

func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
