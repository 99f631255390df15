// Package bddrootfs provides function sandboxes' root filesystems from obd images served by
// the bdd daemon: the "ext4 mount" box of docs/DESIGN.md's read path, under package sandbox. An
// image named by reference is read from its registry (package obdimage: an overlaybd image,
// its layer blobs pinned to their range tables); its layer stack is attached through bdd's
// control API as a read-only block device whose blocks are fetched lazily, its ext4 is mounted
// read-only once, the registry's start trace for it is replayed (bdd's FetchTrace and
// Prefetch, its page trace read in), and package sandbox bind-mounts that directory into every
// sandbox of the image.
package bddrootfs

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
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/platforms"
	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/bddclient"
	"github.com/obdproject/obd/obdimage"
	"github.com/obdproject/obd/sandbox"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Provider attaches images through bdd. It implements sandbox.RootfsProvider.
//
// An image reference is either an obd image in a registry (registry/repo:tag or
// registry/repo@sha256:..., resolved through Resolver: its layers must be overlaybd blobs, and
// the start trace the registry holds for it is replayed while it is mounted), or a layer
// stack, bottom first, separated by commas, each layer an absolute path of a local layer
// file or a registry blob REF@DIGEST:SIZE (as `obd attach` takes them).
type Provider struct {
	Client   bddv1.DaemonClient
	MountDir string        // where image filesystems are mounted, one dir per attach
	Timeout  time.Duration // per bdd call and registry lookup; default 1 minute
	// Resolver reads images from their registries (hosts.toml, credentials); nil: layer
	// stacks only. bdd reads the blobs with its own registry configuration.
	Resolver remotes.Resolver
	Platform platforms.MatchComparer // chooses an index's manifest; platforms.Default() when nil
	Log      *slog.Logger

	seq      atomic.Int64
	attaches atomic.Int64
	mu       sync.Mutex
	replays  ReplayStats
}

func (p *Provider) logger() *slog.Logger {
	if p.Log != nil {
		return p.Log
	}
	return slog.Default()
}

var _ sandbox.RootfsProvider = (*Provider)(nil)

// Layers parses an image reference into bdd's layer list.
func Layers(ref string) ([]*bddv1.Layer, error) {
	var layers []*bddv1.Layer
	for _, s := range strings.Split(ref, ",") {
		if filepath.IsAbs(s) {
			layers = append(layers, &bddv1.Layer{Source: &bddv1.Layer_Path{Path: filepath.Clean(s)}})
			continue
		}
		l, err := bddclient.ParseBlobLayer(s)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", sandbox.ErrBadImage, err)
		}
		layers = append(layers, l)
	}
	return layers, nil
}

// attachRequest asks for a read-only device of layers under an idempotency key in this
// provider's namespace (keyPrefix), by which Cleanup finds the devices a killed server
// attached but never mounted.
func (p *Provider) attachRequest(layers []*bddv1.Layer) *bddv1.AttachRequest {
	key := fmt.Sprintf("%s%d.%d.%d", p.keyPrefix(), os.Getpid(), time.Now().UnixNano(), p.attaches.Add(1))
	return &bddv1.AttachRequest{Layers: layers, ReadOnly: true, IdempotencyKey: key}
}

// keyPrefix namespaces this provider's idempotency keys by its mount dir.
func (p *Provider) keyPrefix() string {
	sum := sha256.Sum256([]byte(filepath.Clean(p.MountDir)))
	return "obd-lambda:" + hex.EncodeToString(sum[:6]) + ":"
}

func (p *Provider) timeout() time.Duration {
	if p.Timeout > 0 {
		return p.Timeout
	}
	return time.Minute
}

// Acquire attaches the stack read-only and mounts its ext4 read-only. release unmounts and
// detaches.
func (p *Provider) Acquire(ctx context.Context, ref string) (_ string, _ func() error, err error) {
	var (
		layers []*bddv1.Layer
		img    obdimage.Image
		byRef  = isImageRef(ref)
	)
	if byRef {
		img, layers, err = p.resolveImage(ctx, ref)
	} else {
		layers, err = Layers(ref)
	}
	if err != nil {
		return "", nil, err
	}
	callCtx, cancel := context.WithTimeout(ctx, p.timeout())
	defer cancel()
	resp, err := p.Client.Attach(callCtx, p.attachRequest(layers))
	if err != nil {
		return "", nil, fmt.Errorf("bddrootfs: attach %s: %w", ref, err)
	}
	dev := resp.GetDevice()
	detach := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), p.timeout())
		defer cancel()
		if _, err := p.Client.Detach(ctx, &bddv1.DetachRequest{Id: dev.GetId()}); err != nil {
			return fmt.Errorf("bddrootfs: detach %s: %w", dev.GetId(), err)
		}
		return nil
	}
	if dev.GetDevicePath() == "" {
		return "", nil, errors.Join(fmt.Errorf("bddrootfs: device %s has no block device path (transport %v)", dev.GetId(), dev.GetTransport()), detach())
	}
	dir := filepath.Join(p.MountDir, fmt.Sprintf("%s-%d", dev.GetId(), p.seq.Add(1)))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil, errors.Join(fmt.Errorf("bddrootfs: %w", err), detach())
	}
	// noload: a read-only device cannot replay a journal; nosuid, nodev: the image's setuid
	// files and device nodes are its author's say, not the node's.
	if err := unix.Mount(dev.GetDevicePath(), dir, "ext4", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, "noload"); err != nil {
		os.Remove(dir)
		return "", nil, errors.Join(fmt.Errorf("bddrootfs: mount %s (%s) on %s: %w", dev.GetDevicePath(), ref, dir, err), detach())
	}
	stopReplay := func() {}
	if byRef {
		stopReplay = p.startReplay(ref, img, dir)
	}
	release := func() error {
		stopReplay()
		var errs []error
		if err := unix.Unmount(dir, 0); err != nil {
			errs = append(errs, fmt.Errorf("bddrootfs: unmount %s: %w", dir, err))
		} else {
			os.Remove(dir)
		}
		return errors.Join(append(errs, detach())...)
	}
	return dir, release, nil
}

// Cleanup unmounts and detaches what a provider on the same MountDir left when its server was
// killed: each mount dir there is named DEVICE-SEQ after its bdd device, and the devices it
// attached but did not mount yet carry its idempotency keys (keyPrefix). Call it before the
// first Acquire, once the processes that used those mounts are gone. A device still busy is
// retried for a few seconds (the kernel lets go of an unmounted filesystem in the background).
func (p *Provider) Cleanup(ctx context.Context) error {
	entries, err := os.ReadDir(p.MountDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("bddrootfs: cleanup: %w", err)
	}
	var errs []error
	for _, e := range entries {
		dir := filepath.Join(p.MountDir, e.Name())
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("bddrootfs: unmount leftover %s: %w", dir, err))
			continue
		}
		os.Remove(dir)
		i := strings.LastIndexByte(e.Name(), '-')
		if i <= 0 {
			continue
		}
		if err := p.detachLeftover(ctx, e.Name()[:i]); err != nil {
			errs = append(errs, err)
		}
	}
	// Devices attached but never mounted: the server was killed in between.
	callCtx, cancel := context.WithTimeout(ctx, p.timeout())
	list, err := p.Client.List(callCtx, &bddv1.ListRequest{})
	cancel()
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("bddrootfs: cleanup: list devices: %w", err))...)
	}
	for _, dev := range list.GetDevices() {
		if strings.HasPrefix(dev.GetIdempotencyKey(), p.keyPrefix()) {
			if err := p.detachLeftover(ctx, dev.GetId()); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func (p *Provider) detachLeftover(ctx context.Context, id string) error {
	for attempt := 0; ; attempt++ {
		callCtx, cancel := context.WithTimeout(ctx, p.timeout())
		_, err := p.Client.Detach(callCtx, &bddv1.DetachRequest{Id: id})
		cancel()
		if err == nil || status.Code(err) == codes.NotFound {
			return nil
		}
		if attempt == 50 || ctx.Err() != nil {
			return fmt.Errorf("bddrootfs: detach leftover device %s: %w", id, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
