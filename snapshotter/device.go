package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/obdproject/obd/imagelabels"
)

// A lazy chain's read-only device is attached for its top lazy layer and mounted in that
// layer's directory (block/mnt); a container's own device (rwMode dev, or asked for with
// imagelabels.OwnDevice) is attached for the container's snapshot and mounted in its own
// directory. Whether a device is needed is always recomputed
// from the metadata, so nothing about devices has to be persisted besides the mounts themselves.

// chain is what an active or view snapshot sits on.
type chain struct {
	parentIDs []string      // committed parents, highest first
	lazyTop   int           // index in parentIDs of the highest lazy layer; -1 when none
	layers    []RemoteLayer // the lazy layers, lowest first
}

// chainOf reads the lazy layer records of a snapshot's parents.
func (o *Snapshotter) chainOf(parentIDs []string) (chain, error) {
	c := chain{parentIDs: parentIDs, lazyTop: -1}
	for i, id := range parentIDs {
		layer, ok, err := readLayerRecord(o.layerRecordPath(id))
		if err != nil {
			return c, err
		}
		if !ok {
			if c.lazyTop >= 0 {
				return c, fmt.Errorf("snapshot %s lies below overlaybd layer %s but is not one", id, parentIDs[c.lazyTop])
			}
			continue
		}
		if c.lazyTop < 0 {
			c.lazyTop = i
		}
		c.layers = append(c.layers, layer)
	}
	slices.Reverse(c.layers)
	return c, nil
}

// lowerDirs returns the overlay lower directories of chain c, highest first: the upper
// directories of ordinary parents, then the device of the lazy layers below them, mounted in
// the directory of snapshot deviceID.
func (o *Snapshotter) lowerDirs(c chain, deviceID string) []string {
	lowers := make([]string, 0, len(c.parentIDs))
	for i, id := range c.parentIDs {
		if i == c.lazyTop {
			return append(lowers, o.deviceMountPath(deviceID))
		}
		lowers = append(lowers, o.upperPath(id))
	}
	return lowers
}

// deviceOf returns the snapshot in whose directory the device of snapshot s on chain c is
// mounted (s itself when it has a device of its own, else the chain's top lazy layer; "" on
// a chain without lazy layers) and that device's upper directory ("": read-only).
func (o *Snapshotter) deviceOf(s storage.Snapshot, c chain) (id, upperDir string) {
	switch {
	case c.lazyTop < 0:
		return "", ""
	case o.hasWritableDevice(s.ID):
		return s.ID, o.deviceUpperPath(s.ID)
	case o.hasOwnDevice(s.ID):
		return s.ID, ""
	}
	return c.parentIDs[c.lazyTop], ""
}

// ensureDevices attaches and mounts the device snapshot s needs, if it needs one and it is not
// mounted yet.
func (o *Snapshotter) ensureDevices(ctx context.Context, s storage.Snapshot, c chain) error {
	id, upperDir := o.deviceOf(s, c)
	if id == "" {
		return nil
	}
	defer o.devLocks.lock(id)()
	return o.mountDevice(ctx, id, c.layers, upperDir)
}

// mountDevice attaches the device of snapshot id and mounts it in the snapshot's directory,
// read-only when upperDir is "". A device a snapshot asked for (imagelabels.OwnDevice) starts
// recording its page trace; the chain's shared one reads the chain's page trace in. The caller
// holds the device's lock.
func (o *Snapshotter) mountDevice(ctx context.Context, id string, layers []RemoteLayer, upperDir string) error {
	mnt := o.deviceMountPath(id)
	if mounted, err := isMountPoint(mnt); err != nil || mounted {
		return err
	}
	if o.cfg.devices == nil {
		return ErrNoDeviceManager
	}
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return fmt.Errorf("device mount point: %w", err)
	}
	key := o.deviceKey(id)
	dev, err := o.cfg.devices.Attach(ctx, key, layers, upperDir)
	if err != nil {
		return fmt.Errorf("attach device %s (%d layers): %w", key, len(layers), err)
	}
	var flags uintptr
	if upperDir == "" {
		flags = unix.MS_RDONLY
	}
	if err := mountLazy(dev, mnt, o.cfg.fsType, flags); err != nil {
		if detachErr := o.cfg.devices.Detach(ctx, key); detachErr != nil {
			o.cfg.logger.WarnContext(ctx, "detach after failed mount", "key", key, "err", detachErr)
		}
		return fmt.Errorf("mount %s (%s) on %s: %w", dev, o.cfg.fsType, mnt, err)
	}
	o.cfg.logger.InfoContext(ctx, "device mounted", "key", key, "device", dev, "mountpoint", mnt, "writable", upperDir != "")
	switch {
	case o.askedOwnDevice(id):
		o.startRecording(ctx, id, layers)
	case upperDir == "":
		o.startWarmup(ctx, id, layers)
	}
	return nil
}

// lazyExt4Options keep ext4 from reading every block group's bitmap in the background
// after mount (Linux 5.9+ does that to speed up allocation): on a lazily fetched device
// those reads are sequential in the top layer's blob and drew megabytes of readahead over
// the link just as the container started.
const lazyExt4Options = "no_prefetch_block_bitmaps"

// mountLazy mounts a device's file system, with lazyExt4Options for ext4 where the
// kernel knows them, always nosuid and nodev: the image's setuid files and device nodes
// are its author's say, not the node's (containers get their own /dev).
func mountLazy(dev, mnt, fsType string, flags uintptr) error {
	flags |= unix.MS_NOSUID | unix.MS_NODEV
	if fsType == "ext4" {
		err := unix.Mount(dev, mnt, fsType, flags, lazyExt4Options)
		if !errors.Is(err, unix.EINVAL) {
			return err
		}
	}
	return unix.Mount(dev, mnt, fsType, flags, "")
}

// teardownDevice unmounts and detaches the device of snapshot id, if it ever had one.
// The caller holds the device's lock.
func (o *Snapshotter) teardownDevice(ctx context.Context, id string) error {
	if _, err := os.Stat(filepath.Join(o.snapshotDir(id), "block")); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	mnt := o.deviceMountPath(id)
	mounted, err := isMountPoint(mnt)
	if err != nil {
		return err
	}
	if mounted {
		o.finishWarmup(ctx, id)
		if err := unix.Unmount(mnt, 0); err != nil {
			return fmt.Errorf("unmount device of snapshot %s at %s: %w", id, mnt, err)
		}
	}
	if o.cfg.devices == nil {
		return nil
	}
	key := o.deviceKey(id)
	if err := o.cfg.devices.Detach(ctx, key); err != nil {
		return fmt.Errorf("detach device %s: %w", key, err)
	}
	o.cfg.logger.InfoContext(ctx, "device detached", "key", key)
	return nil
}

// chainDeviceID returns the ID of the lazy layer whose shared device serves the chain below
// parentIDs: the topmost lazy one.
func (o *Snapshotter) chainDeviceID(parentIDs []string) (string, bool) {
	for _, id := range parentIDs {
		if o.isLazy(id) {
			return id, true
		}
	}
	return "", false
}

// releaseChainDevice detaches the shared device of the lazy chain below parentIDs when nothing
// needs it any more. Failures are logged; Cleanup retries them.
func (o *Snapshotter) releaseChainDevice(ctx context.Context, parentIDs []string) {
	if id, ok := o.chainDeviceID(parentIDs); ok {
		o.releaseSharedDeviceLogged(ctx, id)
	}
}

func (o *Snapshotter) releaseSharedDeviceLogged(ctx context.Context, id string) {
	if err := o.releaseSharedDevice(ctx, id); err != nil {
		o.cfg.logger.WarnContext(ctx, "shared device left for Cleanup", "id", id, "err", err)
	}
}

// releaseChainDeviceLater is releaseChainDevice after the configured linger, in the
// background; at once when there is none.
func (o *Snapshotter) releaseChainDeviceLater(ctx context.Context, parentIDs []string) {
	id, ok := o.chainDeviceID(parentIDs)
	if !ok {
		return
	}
	if o.cfg.deviceLinger == 0 {
		o.releaseSharedDeviceLogged(ctx, id)
		return
	}
	o.lingerMu.Lock()
	defer o.lingerMu.Unlock()
	if o.closed {
		return
	}
	o.lingerWG.Add(1)
	var t *time.Timer
	t = time.AfterFunc(o.cfg.deviceLinger, func() {
		defer o.lingerWG.Done()
		o.lingerMu.Lock()
		delete(o.lingering, t)
		o.lingerMu.Unlock()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		o.releaseSharedDeviceLogged(ctx, id)
	})
	o.lingering[t] = id
}

// isLingering says whether a delayed release of lazy layer id's device is pending: until
// then the device stays, needed or not.
func (o *Snapshotter) isLingering(id string) bool {
	o.lingerMu.Lock()
	defer o.lingerMu.Unlock()
	for _, lingeringID := range o.lingering {
		if lingeringID == id {
			return true
		}
	}
	return false
}

// isTopLayer says whether the labels of a layer being unpacked mark the image's top layer.
func isTopLayer(labels map[string]string) bool {
	v, ok := labels[imagelabels.CRIImageLayers]
	return ok && v != "" && !strings.Contains(v, ",")
}

// preattach attaches and mounts, in the background, the device of the lazy chain topped by
// parentIDs[0] as soon as an image's top layer is recorded during a pull, so that the
// container created next finds it ready (attaching opens every layer's index: several round
// trips each). With no device linger configured it does nothing; a device nobody uses is
// released after the linger.
func (o *Snapshotter) preattach(ctx context.Context, parentIDs []string) {
	if o.cfg.deviceLinger == 0 || o.cfg.devices == nil {
		return
	}
	c, err := o.chainOf(parentIDs)
	if err != nil || c.lazyTop != 0 {
		return
	}
	o.lingerMu.Lock()
	defer o.lingerMu.Unlock()
	if o.closed {
		return
	}
	o.lingerWG.Go(func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		start := time.Now()
		unlock := o.devLocks.lock(parentIDs[0])
		defer unlock()
		if err := o.mountDevice(ctx, parentIDs[0], c.layers, ""); err != nil {
			o.cfg.logger.WarnContext(ctx, "device not attached ahead of use", "id", parentIDs[0], "err", err)
			return
		}
		o.cfg.logger.InfoContext(ctx, "device attached ahead of use", "id", parentIDs[0], "took", time.Since(start))
		// Before the device is unlocked, so no release (a Cleanup) sees it unused and not lingering.
		o.releaseChainDeviceLater(ctx, parentIDs[:1])
	})
}

// releaseSharedDevice tears down the read-only device of lazy layer id unless an active or
// view snapshot still sits directly on its chain or its linger is pending.
func (o *Snapshotter) releaseSharedDevice(ctx context.Context, id string) error {
	if _, err := os.Stat(filepath.Join(o.snapshotDir(id), "block")); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	defer o.devLocks.lock(id)()
	// A device with a pending linger waits for it, whoever asks: containerd calls Cleanup
	// after each collection, one comes right after a pull, and the pull's device must stay.
	if o.isLingering(id) {
		return nil
	}
	needed, err := o.sharedDeviceNeeded(ctx, id)
	if err != nil || needed {
		return err
	}
	return o.teardownDevice(ctx, id)
}

// sharedDeviceNeeded reports whether an active or view snapshot without its own device has
// lazy layer id as the top of its lazy chain.
func (o *Snapshotter) sharedDeviceNeeded(ctx context.Context, id string) (bool, error) {
	needed := false
	err := o.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		return storage.WalkInfo(ctx, func(ctx context.Context, info snapshots.Info) error {
			if needed || info.Kind == snapshots.KindCommitted {
				return nil
			}
			s, err := storage.GetSnapshot(ctx, info.Name)
			if err != nil {
				return err
			}
			if o.hasOwnDevice(s.ID) {
				return nil
			}
			for _, parentID := range s.ParentIDs {
				if o.isLazy(parentID) {
					needed = parentID == id
					break
				}
			}
			return nil
		})
	})
	return needed, err
}

func (o *Snapshotter) deviceKey(id string) string { return o.cfg.deviceKeys + id }

// keyedLocks hands out one mutex per key, so that the operations on one device serialise
// while different devices (images) attach in parallel.
type keyedLocks struct {
	mu    sync.Mutex
	locks map[string]*keyedLock
}

type keyedLock struct {
	sync.Mutex
	users int
}

// lock locks key and returns the function that unlocks it.
func (k *keyedLocks) lock(key string) (unlock func()) {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = map[string]*keyedLock{}
	}
	l := k.locks[key]
	if l == nil {
		l = &keyedLock{}
		k.locks[key] = l
	}
	l.users++
	k.mu.Unlock()

	l.Lock()
	return func() {
		l.Unlock()
		k.mu.Lock()
		if l.users--; l.users == 0 {
			delete(k.locks, key)
		}
		k.mu.Unlock()
	}
}

// isMountPoint reports whether path is a mount point; a missing path is not.
func isMountPoint(path string) (bool, error) {
	mounted, err := mountinfo.Mounted(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return mounted, err
}
