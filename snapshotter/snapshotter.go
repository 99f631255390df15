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
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/continuity/fs"
	"github.com/containerd/errdefs"

	"github.com/obdproject/obd/imagelabels"
	"github.com/obdproject/obd/tracestore"
)

// RWMode says how a container's writable layer over a lazy chain is made.
type RWMode string

const (
	// RWModeOverlayFS mounts the chain's device read-only, shared by every container of the
	// image, under an overlayfs upper directory per container.
	RWModeOverlayFS RWMode = "overlayfs"
	// RWModeDev gives each container its own device with a writable upper layer and hands
	// its ext4 to the container directly.
	RWModeDev RWMode = "dev"
)

// ErrNoDeviceManager is returned when a snapshot needs a lazy chain's device but the
// snapshotter was built without WithDeviceManager.
var ErrNoDeviceManager = errors.New("no device manager configured for overlaybd layers")

type config struct {
	devices      DeviceManager
	rwMode       RWMode
	fsType       string
	mountOptions []string
	deviceKeys   string
	deviceLinger time.Duration
	pageTraces   *tracestore.Store
	remoteTraces *RemoteTraces
	// remoteIndexes finds the lazy-start indexes of ordinary OCI images; nil: such images
	// unpack as usual.
	remoteIndexes *RemoteIndexes
	logger        *slog.Logger
}

// WithRemoteIndexes makes ordinary OCI images that have a lazy-start index in the registry
// (obd index) lazy: their layers are recorded without fetching, as overlaybd layers are, and
// served by bdd through the index.
func WithRemoteIndexes(r *RemoteIndexes) Opt {
	return func(c *config) error {
		c.remoteIndexes = r
		return nil
	}
}

// Opt configures a Snapshotter.
type Opt func(*config) error

// WithDeviceManager sets what attaches the devices of lazy chains. Without it, preparing a
// container on a lazy chain fails with ErrNoDeviceManager.
func WithDeviceManager(dm DeviceManager) Opt {
	return func(c *config) error {
		c.devices = dm
		return nil
	}
}

// WithRWMode sets how containers on lazy chains write (default RWModeOverlayFS).
func WithRWMode(mode RWMode) Opt {
	return func(c *config) error {
		if mode != RWModeOverlayFS && mode != RWModeDev {
			return fmt.Errorf("rwMode %q: want %q or %q", mode, RWModeOverlayFS, RWModeDev)
		}
		c.rwMode = mode
		return nil
	}
}

// WithFSType sets the filesystem type on lazy chains' devices (default "ext4").
func WithFSType(fsType string) Opt {
	return func(c *config) error {
		if fsType == "" {
			return errors.New("empty filesystem type")
		}
		c.fsType = fsType
		return nil
	}
}

// WithMountOptions adds options to every overlay mount the snapshotter returns (for example
// "redirect_dir=on"). Bind mounts do not get them.
func WithMountOptions(options ...string) Opt {
	return func(c *config) error {
		c.mountOptions = append(c.mountOptions, options...)
		return nil
	}
}

// WithDeviceKeyPrefix sets the prefix of the keys passed to the DeviceManager, which must keep
// snapshotters sharing one device daemon apart. The default is derived from the root directory.
func WithDeviceKeyPrefix(prefix string) Opt {
	return func(c *config) error {
		c.deviceKeys = prefix
		return nil
	}
}

// WithDeviceLinger keeps a lazy chain's shared device attached for d after the last snapshot
// on it is removed, so that one that comes right after (a container created after the view
// that read its image's /etc/passwd) finds it mounted, with its caches and prefetching
// intact. 0, the default, detaches at once.
func WithDeviceLinger(d time.Duration) Opt {
	return func(c *config) error {
		if d < 0 {
			return fmt.Errorf("negative device linger %v", d)
		}
		c.deviceLinger = d
		return nil
	}
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(logger *slog.Logger) Opt {
	return func(c *config) error {
		c.logger = logger
		return nil
	}
}

// Snapshotter implements containerd's snapshots.Snapshotter over overlayfs, with lazy overlaybd
// chains served by block devices. It is safe for concurrent use.
type Snapshotter struct {
	root    string
	ms      *storage.MetaStore
	cfg     config
	options []string // overlay mount options

	// devLocks serialise, per device (keyed by the ID of the snapshot whose directory it is
	// mounted in), attach, mount, unmount and detach and the "is this device still needed"
	// decisions that lead to them.
	devLocks keyedLocks

	// lingering are the pending delayed releases of shared devices (WithDeviceLinger), with
	// the ID of the lazy layer each releases.
	lingerMu  sync.Mutex
	lingering map[*time.Timer]string
	closed    bool
	lingerWG  sync.WaitGroup

	// mounted are the shared devices mounted by this process, by snapshot ID (WithPageTraces).
	mountedMu sync.Mutex
	mounted   map[string]*mountedChain
}

var _ snapshots.Snapshotter = (*Snapshotter)(nil)

// NewSnapshotter returns a Snapshotter keeping its metadata in root/metadata.db and each
// snapshot's files in root/snapshots/<id>.
func NewSnapshotter(root string, opts ...Opt) (*Snapshotter, error) {
	sum := sha256.Sum256([]byte(root))
	cfg := config{
		rwMode:     RWModeOverlayFS,
		fsType:     "ext4",
		deviceKeys: "obd-snap-" + hex.EncodeToString(sum[:4]) + "-",
		logger:     slog.Default(),
	}
	for _, opt := range opts {
		if err := opt(&cfg); err != nil {
			return nil, fmt.Errorf("snapshotter: %w", err)
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "snapshots"), 0o700); err != nil {
		return nil, fmt.Errorf("snapshotter: %w", err)
	}
	supportsDType, err := fs.SupportsDType(root)
	if err != nil {
		return nil, fmt.Errorf("snapshotter: d_type check on %s: %w", root, err)
	}
	if !supportsDType {
		return nil, fmt.Errorf("snapshotter: %s does not support d_type, which overlayfs needs", root)
	}
	ms, err := storage.NewMetaStore(filepath.Join(root, "metadata.db"))
	if err != nil {
		return nil, fmt.Errorf("snapshotter: metadata: %w", err)
	}
	options := append([]string(nil), cfg.mountOptions...)
	// Overlays share lower directories; the inode index would tie a lower to its first
	// overlay and make other mounts of it fail, so it is off unless asked for.
	if !hasOption(options, "index") && kernelHasOverlayIndex() {
		options = append(options, "index=off")
	}
	return &Snapshotter{root: root, ms: ms, cfg: cfg, options: options, lingering: map[*time.Timer]string{}, mounted: map[string]*mountedChain{}}, nil
}

func hasOption(options []string, key string) bool {
	for _, option := range options {
		if k, _, _ := strings.Cut(option, "="); k == key {
			return true
		}
	}
	return false
}

func kernelHasOverlayIndex() bool {
	_, err := os.Stat("/sys/module/overlay/parameters/index")
	return err == nil
}

// Stat returns the info of an active, view or committed snapshot by key or name.
func (o *Snapshotter) Stat(ctx context.Context, key string) (info snapshots.Info, err error) {
	err = o.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		_, info, _, err = storage.GetInfo(ctx, key)
		return err
	})
	return info, err
}

// Update changes the labels of a snapshot (the only mutable fields) and returns its info.
func (o *Snapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (newInfo snapshots.Info, err error) {
	err = o.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		newInfo, err = storage.UpdateInfo(ctx, info, fieldpaths...)
		return err
	})
	return newInfo, err
}

// Usage returns the disk space and inodes a snapshot takes. For an active snapshot the upper
// directory (or the device's writable layer) is scanned, which may take a while; committed
// snapshots report what was recorded at commit, zero for lazy layers (nothing is stored).
func (o *Snapshotter) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	var (
		id    string
		info  snapshots.Info
		usage snapshots.Usage
	)
	if err := o.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		id, info, usage, err = storage.GetInfo(ctx, key)
		return err
	}); err != nil {
		return snapshots.Usage{}, err
	}
	if info.Kind != snapshots.KindActive {
		return usage, nil
	}
	dir := o.upperPath(id)
	if o.hasWritableDevice(id) {
		dir = o.deviceUpperPath(id)
	}
	du, err := fs.DiskUsage(ctx, dir)
	if err != nil {
		return snapshots.Usage{}, fmt.Errorf("usage of %s: %w", key, err)
	}
	return snapshots.Usage(du), nil
}

// Prepare creates an active snapshot on parent and returns the mounts of its writable root.
//
// When the labels name an overlaybd blob and carry the unpack target (snapshots.LabelSnapshotRef),
// the layer is committed under the target name at once, without fetching anything, and Prepare
// returns an error wrapping errdefs.ErrAlreadyExists, which tells containerd's unpacker to skip
// the layer. On a lazy chain the chain's device is attached and mounted before Prepare returns.
func (o *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	var base snapshots.Info
	for _, opt := range opts {
		if err := opt(&base); err != nil {
			return nil, err
		}
	}
	layer, isLazy, err := remoteLayerFromLabels(base.Labels)
	if err != nil {
		return nil, fmt.Errorf("prepare %s: %w: %w", key, errdefs.ErrInvalidArgument, err)
	}
	target, unpacking := base.Labels[snapshots.LabelSnapshotRef]
	if !isLazy && unpacking {
		layer, isLazy = o.indexedLayer(ctx, parent, base.Labels)
	}
	if isLazy && unpacking {
		if parent == "" {
			o.lookAheadTrace(base.Labels, layer)
		}
		return nil, o.prepareLazyLayer(ctx, key, parent, target, layer, isTopLayer(base.Labels), opts)
	}
	return o.createSnapshot(ctx, snapshots.KindActive, key, parent, base.Labels, opts)
}

// View creates a read-only snapshot of parent and returns its mounts.
func (o *Snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return o.createSnapshot(ctx, snapshots.KindView, key, parent, nil, opts)
}

// Mounts returns the mounts of an active or view snapshot again. On a lazy chain it first
// makes sure the device is attached and mounted (after a reboot it is not).
func (o *Snapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	var s storage.Snapshot
	if err := o.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		s, err = storage.GetSnapshot(ctx, key)
		return err
	}); err != nil {
		return nil, fmt.Errorf("mounts of %s: %w", key, err)
	}
	c, err := o.chainOf(s.ParentIDs)
	if err != nil {
		return nil, fmt.Errorf("mounts of %s: %w", key, err)
	}
	if err := o.ensureDevices(ctx, s, c); err != nil {
		return nil, fmt.Errorf("mounts of %s: %w", key, err)
	}
	return o.mounts(s, c), nil
}

// Commit turns the active snapshot key into the committed snapshot name, recording its disk
// usage. Snapshots with a device of their own (rwMode dev, imagelabels.OwnDevice) cannot be
// committed.
func (o *Snapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	var parentIDs []string
	if err := o.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		s, err := storage.GetSnapshot(ctx, key)
		if err != nil {
			return err
		}
		if o.hasOwnDevice(s.ID) {
			return fmt.Errorf("snapshot %s has a device of its own (rwMode dev or %s): %w", key, imagelabels.OwnDevice, errdefs.ErrNotImplemented)
		}
		usage, err := fs.DiskUsage(ctx, o.upperPath(s.ID))
		if err != nil {
			return err
		}
		recorded, err := o.recordUnpackedLayer(s)
		if err != nil {
			return err
		}
		if _, err := storage.CommitActive(ctx, key, name, snapshots.Usage(usage), opts...); err != nil {
			if recorded {
				_ = os.Remove(o.layerRecordPath(s.ID))
			}
			return err
		}
		parentIDs = s.ParentIDs
		return nil
	}); err != nil {
		return fmt.Errorf("failed to commit snapshot %s: %w", key, err)
	}
	// The committed snapshot no longer needs the chain's device itself; its children will.
	o.releaseChainDevice(ctx, parentIDs)
	return nil
}

// recordUnpackedLayer makes the active snapshot s lazy when it holds an overlaybd layer that
// containerd unpacked like a tar layer (unpackedLayer) on a chain of lazy layers only: the
// chain then gets one device, from local files where they are, like any lazy chain.
func (o *Snapshotter) recordUnpackedLayer(s storage.Snapshot) (bool, error) {
	if o.cfg.devices == nil || s.Kind != snapshots.KindActive {
		return false, nil
	}
	for _, id := range s.ParentIDs {
		if !o.isLazy(id) {
			return false, nil
		}
	}
	layer, ok, err := unpackedLayer(o.upperPath(s.ID))
	if err != nil || !ok {
		return false, err
	}
	if err := writeLayerRecord(o.layerRecordPath(s.ID), layer); err != nil {
		return false, err
	}
	o.cfg.logger.Info("overlaybd layer unpacked by containerd, served from its file", "snapshot", s.ID, "digest", layer.Digest, "size", layer.Size)
	return true, nil
}

// Remove deletes a snapshot. It is gone from the metadata at once; its devices are detached if
// nothing else needs them and its directory is deleted. What cannot be undone now (a busy
// mount) is left for Cleanup.
func (o *Snapshotter) Remove(ctx context.Context, key string) error {
	var (
		id        string
		parentIDs []string
	)
	if err := o.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		var (
			info snapshots.Info
			err  error
		)
		id, info, _, err = storage.GetInfo(ctx, key)
		if err != nil {
			return err
		}
		if info.Kind != snapshots.KindCommitted {
			s, err := storage.GetSnapshot(ctx, key)
			if err != nil {
				return err
			}
			parentIDs = s.ParentIDs
		}
		_, _, err = storage.Remove(ctx, key)
		return err
	}); err != nil {
		return fmt.Errorf("failed to remove snapshot %s: %w", key, err)
	}

	// A committed lazy layer has no children left (storage refuses otherwise), so a device
	// still mounted in its directory is stale; so is the own device of a dev-mode snapshot.
	unlock := o.devLocks.lock(id)
	err := o.teardownDevice(ctx, id)
	unlock()
	o.releaseChainDeviceLater(ctx, parentIDs)
	if err != nil {
		// The directory may hold the upper layer of a device still attached: keep it.
		o.cfg.logger.WarnContext(ctx, "device of removed snapshot left for Cleanup", "key", key, "id", id, "err", err)
		return nil
	}
	o.removeSnapshotDir(ctx, id)
	return nil
}

// Walk calls fn for every snapshot whose info matches one of the filters (all when none).
func (o *Snapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	return o.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		return storage.WalkInfo(ctx, fn, filters...)
	})
}

// Cleanup deletes the directories of removed snapshots and detaches lazy chains' devices that
// no snapshot needs any more and that are not lingering.
func (o *Snapshotter) Cleanup(ctx context.Context) error {
	var (
		ids     map[string]string
		entries []string
	)
	// A write transaction keeps snapshots from being created while the directory is scanned.
	if err := o.ms.WithTransaction(ctx, true, func(ctx context.Context) (err error) {
		if ids, err = storage.IDMap(ctx); err != nil {
			return err
		}
		entries, err = readDirNames(filepath.Join(o.root, "snapshots"))
		return err
	}); err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	var errs []error
	for _, id := range entries {
		if _, live := ids[id]; live {
			if o.isLazy(id) {
				errs = append(errs, o.releaseSharedDevice(ctx, id))
			}
			continue
		}
		unlock := o.devLocks.lock(id)
		err := o.teardownDevice(ctx, id)
		unlock()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		o.removeSnapshotDir(ctx, id)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	return nil
}

// Close releases the metadata store. Mounted devices stay mounted so that running containers
// keep their filesystems; a new Snapshotter on the same root takes them over.
func (o *Snapshotter) Close() error {
	o.lingerMu.Lock()
	o.closed = true
	for t := range o.lingering {
		if t.Stop() {
			o.lingerWG.Done() // a device left lingering is released by the next Cleanup
			delete(o.lingering, t)
		}
	}
	o.lingerMu.Unlock()
	o.lingerWG.Wait()
	o.stopWarmups()
	return o.ms.Close()
}

func readDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(0)
}

// createSnapshot makes an active or view snapshot (not a lazy layer) and, on a lazy chain,
// the device it needs.
func (o *Snapshotter) createSnapshot(ctx context.Context, kind snapshots.Kind, key, parent string, labels map[string]string, opts []snapshots.Opt) (_ []mount.Mount, err error) {
	_, unpacking := labels[snapshots.LabelSnapshotRef]
	asksOwn, err := asksOwnDevice(labels)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w: %w", key, errdefs.ErrInvalidArgument, err)
	}
	var (
		s      storage.Snapshot
		c      chain
		placed bool
	)
	defer func() {
		if err != nil && placed {
			o.removeSnapshotDir(ctx, s.ID)
		}
	}()
	if err := o.ms.WithTransaction(ctx, true, func(ctx context.Context) (err error) {
		if s, err = storage.CreateSnapshot(ctx, kind, key, parent, opts...); err != nil {
			return fmt.Errorf("failed to create snapshot: %w", err)
		}
		if c, err = o.chainOf(s.ParentIDs); err != nil {
			return err
		}
		// Unpacking writes a layer diff into the upper directory; only a container's root
		// (an active snapshot right on a lazy chain) may have a device of its own.
		canOwn := kind == snapshots.KindActive && !unpacking && c.lazyTop == 0
		own := ownDevice{writable: canOwn && o.cfg.rwMode == RWModeDev, fresh: canOwn && asksOwn}
		var fill func(dir string) error
		if len(s.ParentIDs) > 0 && c.lazyTop != 0 {
			fill = func(dir string) error { return copyOwner(o.upperPath(s.ParentIDs[0]), filepath.Join(dir, "fs")) }
		}
		placed, err = o.placeDirectory(s.ID, kind, own, fill)
		return err
	}); err != nil {
		return nil, err
	}

	if err := o.ensureDevices(ctx, s, c); err != nil {
		if rmErr := o.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
			_, _, err := storage.Remove(ctx, key)
			return err
		}); rmErr != nil {
			o.cfg.logger.ErrorContext(ctx, "failed to roll back snapshot", "key", key, "err", rmErr)
		}
		return nil, fmt.Errorf("snapshot %s: %w", key, err)
	}
	return o.mounts(s, c), nil
}

// prepareLazyLayer records an overlaybd layer as a committed snapshot named target, without
// fetching it, and returns an error wrapping errdefs.ErrAlreadyExists when that succeeded.
// The image's top layer (top) also starts attaching the chain's device (preattach).
func (o *Snapshotter) prepareLazyLayer(ctx context.Context, key, parent, target string, layer RemoteLayer, top bool, opts []snapshots.Opt) error {
	var (
		id        string
		parentIDs []string
		placed    bool
	)
	if err := o.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		if parent != "" {
			parentID, _, _, err := storage.GetInfo(ctx, parent)
			if err != nil {
				return fmt.Errorf("parent of overlaybd layer %s: %w", target, err)
			}
			if !o.isLazy(parentID) {
				return fmt.Errorf("overlaybd layer %s on %s, which is not an overlaybd layer: %w", target, parent, errdefs.ErrNotImplemented)
			}
		}
		s, err := storage.CreateSnapshot(ctx, snapshots.KindActive, key, parent, opts...)
		if err != nil {
			return fmt.Errorf("failed to create snapshot: %w", err)
		}
		_, info, _, err := storage.GetInfo(ctx, key)
		if err != nil {
			return err
		}
		if _, err := storage.CommitActive(ctx, key, target, snapshots.Usage{}, snapshots.WithLabels(info.Labels)); err != nil {
			return fmt.Errorf("commit overlaybd layer %s: %w", target, err)
		}
		id, parentIDs = s.ID, s.ParentIDs
		placed, err = o.placeDirectory(id, snapshots.KindCommitted, ownDevice{}, func(dir string) error {
			return writeLayerRecord(filepath.Join(dir, layerRecordName), layer)
		})
		return err
	}); err != nil {
		if placed {
			o.removeSnapshotDir(ctx, id)
		}
		return err
	}
	o.cfg.logger.InfoContext(ctx, "overlaybd layer recorded lazily", "snapshot", target, "digest", layer.Digest, "size", layer.Size)
	if top {
		o.preattach(ctx, append([]string{id}, parentIDs...))
	}
	return fmt.Errorf("overlaybd layer %s is read lazily: %w", target, errdefs.ErrAlreadyExists)
}

// placeDirectory creates the directory of snapshot id: prepareDirectory under a temporary
// name, fill (if any) to complete it, then a rename into place. placed reports whether the
// directory is in place; on error nothing else is left behind.
func (o *Snapshotter) placeDirectory(id string, kind snapshots.Kind, own ownDevice, fill func(dir string) error) (placed bool, err error) {
	tmp, err := o.prepareDirectory(kind, own)
	if err == nil && fill != nil {
		err = fill(tmp)
	}
	if err == nil {
		err = os.Rename(tmp, o.snapshotDir(id))
	}
	if err != nil {
		if tmp != "" {
			_ = os.RemoveAll(tmp)
		}
		return false, fmt.Errorf("snapshot directory %s: %w", id, err)
	}
	return true, nil
}

// prepareDirectory creates a snapshot directory under a temporary name: fs/ (the upper or
// bind-mounted root), work/ for active snapshots, block/upper/ for a snapshot with its own
// writable device, block/own for one that asked for a device of its own.
func (o *Snapshotter) prepareDirectory(kind snapshots.Kind, own ownDevice) (string, error) {
	tmp, err := os.MkdirTemp(filepath.Join(o.root, "snapshots"), "new-")
	if err != nil {
		return "", fmt.Errorf("failed to create temp dir: %w", err)
	}
	mkdir := func(rel string, mode os.FileMode) error {
		path := filepath.Join(tmp, rel)
		if err := os.MkdirAll(path, mode); err != nil {
			return err
		}
		// MkdirAll's mode is filtered by the umask; a container's root must be exactly 0755.
		return os.Chmod(path, mode)
	}
	if err := mkdir("fs", 0o755); err != nil {
		return tmp, err
	}
	if kind == snapshots.KindActive {
		if err := mkdir("work", 0o711); err != nil {
			return tmp, err
		}
	}
	if own.writable {
		if err := mkdir(filepath.Join("block", "upper"), 0o700); err != nil {
			return tmp, err
		}
	}
	if own.fresh {
		if err := mkdir("block", 0o700); err != nil {
			return tmp, err
		}
		if err := os.WriteFile(filepath.Join(tmp, ownDeviceMarker), nil, 0o600); err != nil {
			return tmp, err
		}
	}
	return tmp, nil
}

// copyOwner gives dst the owner of src, so that a new upper directory keeps its parent's root
// ownership.
func copyOwner(src, dst string) error {
	st, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("failed to stat parent: %w", err)
	}
	stat, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("stat of %s: no owner information", src)
	}
	if err := os.Lchown(dst, int(stat.Uid), int(stat.Gid)); err != nil {
		return fmt.Errorf("failed to chown: %w", err)
	}
	return nil
}

// mounts returns what containerd mounts for snapshot s on chain c.
func (o *Snapshotter) mounts(s storage.Snapshot, c chain) []mount.Mount {
	if o.hasWritableDevice(s.ID) {
		return []mount.Mount{{Source: o.deviceMountPath(s.ID), Type: "bind", Options: []string{"rw", "rbind"}}}
	}
	deviceID, _ := o.deviceOf(s, c)
	lowers := o.lowerDirs(c, deviceID)
	if len(lowers) == 0 {
		mode := "rw"
		if s.Kind == snapshots.KindView {
			mode = "ro"
		}
		return []mount.Mount{{Source: o.upperPath(s.ID), Type: "bind", Options: []string{mode, "rbind"}}}
	}
	var options []string
	if s.Kind == snapshots.KindActive {
		options = append(options, "workdir="+o.workPath(s.ID), "upperdir="+o.upperPath(s.ID))
	} else if len(lowers) == 1 {
		return []mount.Mount{{Source: lowers[0], Type: "bind", Options: []string{"ro", "rbind"}}}
	}
	options = append(options, "lowerdir="+strings.Join(lowers, ":"))
	options = append(options, o.options...)
	return []mount.Mount{{Type: "overlay", Source: "overlay", Options: options}}
}

// removeSnapshotDir deletes a snapshot's directory unless a device is still mounted in it
// (deleting through a mount would destroy the device's contents); Cleanup retries later.
func (o *Snapshotter) removeSnapshotDir(ctx context.Context, id string) {
	if mounted, err := isMountPoint(o.deviceMountPath(id)); err != nil || mounted {
		o.cfg.logger.WarnContext(ctx, "snapshot directory kept: device still mounted", "id", id, "err", err)
		return
	}
	if err := os.RemoveAll(o.snapshotDir(id)); err != nil {
		o.cfg.logger.WarnContext(ctx, "failed to remove snapshot directory", "id", id, "err", err)
	}
}

const layerRecordName = "layer.json"

func (o *Snapshotter) snapshotDir(id string) string { return filepath.Join(o.root, "snapshots", id) }
func (o *Snapshotter) upperPath(id string) string   { return filepath.Join(o.snapshotDir(id), "fs") }
func (o *Snapshotter) workPath(id string) string    { return filepath.Join(o.snapshotDir(id), "work") }
func (o *Snapshotter) layerRecordPath(id string) string {
	return filepath.Join(o.snapshotDir(id), layerRecordName)
}
func (o *Snapshotter) deviceMountPath(id string) string {
	return filepath.Join(o.snapshotDir(id), "block", "mnt")
}
func (o *Snapshotter) deviceUpperPath(id string) string {
	return filepath.Join(o.snapshotDir(id), "block", "upper")
}

// isLazy reports whether snapshot id is a lazily read overlaybd layer.
func (o *Snapshotter) isLazy(id string) bool {
	_, err := os.Stat(o.layerRecordPath(id))
	return err == nil
}

// ownDevice says which device of its own a new container's snapshot gets: none, a writable
// one (rwMode dev), a fresh one asked for by imagelabels.OwnDevice (read-only under the
// container's overlay in rwMode overlayfs), or both (the writable one, asked for).
type ownDevice struct{ writable, fresh bool }

// ownDeviceMarker, in a snapshot's directory, records that the snapshot asked for a device of
// its own (imagelabels.OwnDevice).
const ownDeviceMarker = "block/own"

// asksOwnDevice reads imagelabels.OwnDevice from a new snapshot's labels.
func asksOwnDevice(labels map[string]string) (bool, error) {
	switch v, ok := labels[imagelabels.OwnDevice]; {
	case !ok || v == "false":
		return false, nil
	case v == "true":
		return true, nil
	default:
		return false, fmt.Errorf("label %s=%q: want \"true\" or \"false\"", imagelabels.OwnDevice, v)
	}
}

// hasOwnDevice reports whether snapshot id has a device of its own rather than its chain's
// shared one.
func (o *Snapshotter) hasOwnDevice(id string) bool {
	return o.hasWritableDevice(id) || o.askedOwnDevice(id)
}

// hasWritableDevice reports whether snapshot id writes to its own device (rwMode dev).
func (o *Snapshotter) hasWritableDevice(id string) bool {
	_, err := os.Stat(o.deviceUpperPath(id))
	return err == nil
}

// askedOwnDevice reports whether snapshot id asked for a device of its own
// (imagelabels.OwnDevice): its page trace is recorded when the device goes.
func (o *Snapshotter) askedOwnDevice(id string) bool {
	_, err := os.Stat(filepath.Join(o.snapshotDir(id), ownDeviceMarker))
	return err == nil
}
