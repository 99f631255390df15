package snapshotter

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
	"github.com/moby/sys/mountinfo"
	"github.com/opencontainers/go-digest"

	"github.com/obdproject/obd/imagelabels"
	"github.com/obdproject/obd/internal/testenv"
)

func lazyLabels(layer RemoteLayer, target string) snapshots.Opt {
	return snapshots.WithLabels(map[string]string{
		snapshots.LabelSnapshotRef: target,
		imagelabels.BlobDigest:     layer.Digest.String(),
		imagelabels.BlobSize:       strconv.FormatInt(layer.Size, 10),
		imagelabels.CRIImageRef:    layer.Ref,
	})
}

// prepareLazyChain records layers (lowest first) the way containerd's unpacker does and
// returns the name of the top layer.
func prepareLazyChain(t testing.TB, sn *Snapshotter, name string, layers ...RemoteLayer) string {
	t.Helper()
	ctx := context.Background()
	parent := ""
	for i, layer := range layers {
		target := name + "-layer-" + strconv.Itoa(i)
		_, err := sn.Prepare(ctx, "extract-"+target, parent, lazyLabels(layer, target))
		if !errdefs.IsAlreadyExists(err) {
			t.Fatalf("Prepare of lazy layer %s: err = %v, want AlreadyExists", target, err)
		}
		parent = target
	}
	return parent
}

// mountRootfs mounts a snapshot's mounts on a new directory, unmounted at cleanup.
func mountRootfs(t *testing.T, mounts []mount.Mount) string {
	t.Helper()
	target := t.TempDir()
	if err := mount.All(mounts, target); err != nil {
		t.Fatalf("mount %+v: %v", mounts, err)
	}
	t.Cleanup(func() {
		if err := mount.UnmountAll(target, 0); err != nil {
			t.Errorf("unmount %s: %v", target, err)
		}
	})
	return target
}

func unmountRootfs(t *testing.T, target string) {
	t.Helper()
	if err := mount.UnmountAll(target, 0); err != nil {
		t.Fatalf("unmount %s: %v", target, err)
	}
}

func assertFile(t *testing.T, path, want string) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	if string(got) != want {
		t.Fatalf("%s = %q, want %q", path, got, want)
	}
}

func assertMounted(t *testing.T, path string, want bool) {
	t.Helper()
	got, err := isMountPoint(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("%s mounted = %v, want %v", path, got, want)
	}
}

// assertLazyMountsHardened checks that every device file system mounted under root is
// mounted nosuid and nodev: an image's setuid files and device nodes are the image's say,
// not the node's (containers get their own /dev).
func assertLazyMountsHardened(t *testing.T, root string) {
	t.Helper()
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(root))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, m := range mounts {
		if m.FSType != "ext4" {
			continue
		}
		n++
		if opts := "," + m.Options + ","; !strings.Contains(opts, ",nosuid,") || !strings.Contains(opts, ",nodev,") {
			t.Errorf("device mount %s has options %s, want nosuid and nodev", m.Mountpoint, m.Options)
		}
	}
	if n == 0 {
		t.Fatalf("no device file system mounted under %s", root)
	}
}

func assertCounts(t *testing.T, d *loopDevices, attached, attaches, detaches int) {
	t.Helper()
	a, at, de := d.counts()
	if a != attached || at != attaches || de != detaches {
		t.Fatalf("devices: attached=%d attaches=%d detaches=%d, want %d %d %d", a, at, de, attached, attaches, detaches)
	}
}

// lazyFixture is a Snapshotter with loop devices and a one-layer lazy image whose file "base"
// reads "lazy"; top names the image's top layer.
type lazyFixture struct {
	root    string
	devices *loopDevices
	sn      *Snapshotter
	top     string
}

func newLazyFixture(t testing.TB, opts ...Opt) *lazyFixture {
	t.Helper()
	requireOverlay(t)
	f := &lazyFixture{root: t.TempDir(), devices: newLoopDevices(t)}
	f.open(t, opts...)
	t.Cleanup(func() {
		// A failed test can leave devices mounted under the root; unmount them before the
		// devices are detached and the root removed.
		if err := testenv.UnmountAll(f.root); err != nil {
			t.Error(err)
		}
	})
	f.top = prepareLazyChain(t, f.sn, "app", f.devices.addBlob(map[string]string{"base": "lazy"}))
	return f
}

// open starts a Snapshotter on the fixture's root, as a (re)started process would.
func (f *lazyFixture) open(t testing.TB, opts ...Opt) {
	t.Helper()
	sn, err := NewSnapshotter(f.root, append([]Opt{WithDeviceManager(f.devices)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	f.sn = sn
	t.Cleanup(func() { sn.Close() })
}

func (f *lazyFixture) prepare(t testing.TB, key, parent string, opts ...snapshots.Opt) []mount.Mount {
	t.Helper()
	mounts, err := f.sn.Prepare(context.Background(), key, parent, opts...)
	if err != nil {
		t.Fatalf("Prepare(%s, %s): %v", key, parent, err)
	}
	return mounts
}

func (f *lazyFixture) remove(t testing.TB, keys ...string) {
	t.Helper()
	for _, key := range keys {
		if err := f.sn.Remove(context.Background(), key); err != nil {
			t.Fatalf("Remove(%s): %v", key, err)
		}
	}
}

func TestLazyLayerIsRecordedWithoutFetching(t *testing.T) {
	ctx := context.Background()
	sn, err := NewSnapshotter(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	lower := RemoteLayer{Ref: "registry.test/app:v1", Digest: digest.Digest("sha256:" + strings.Repeat("a", 64)), Size: 1000}
	upper := RemoteLayer{Ref: "registry.test/app:v1", Digest: digest.Digest("sha256:" + strings.Repeat("b", 64)), Size: 2000}
	top := prepareLazyChain(t, sn, "app", lower, upper)

	info, err := sn.Stat(ctx, top)
	if err != nil {
		t.Fatal(err)
	}
	if info.Kind != snapshots.KindCommitted || info.Parent != "app-layer-0" || info.Labels[imagelabels.BlobDigest] != upper.Digest.String() {
		t.Fatalf("Stat(%s) = %+v, want a committed snapshot on app-layer-0 keeping its labels", top, info)
	}
	if _, err := sn.Stat(ctx, "extract-"+top); !errdefs.IsNotFound(err) {
		t.Fatalf("the extraction key must not survive the lazy commit: err = %v", err)
	}
	usage, err := sn.Usage(ctx, top)
	if err != nil || usage.Size != 0 {
		t.Fatalf("Usage(%s) = %+v, %v; want zero (nothing stored)", top, usage, err)
	}

	// Preparing the same layer again (a second pull) reports it as existing too.
	if _, err := sn.Prepare(ctx, "extract-again", "app-layer-0", lazyLabels(upper, top)); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("second Prepare of %s: err = %v, want AlreadyExists", top, err)
	}

	var names []string
	if err := sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		names = append(names, info.Name)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if strings.Join(names, ",") != "app-layer-0,app-layer-1" {
		t.Fatalf("Walk = %v, want the two lazy layers", names)
	}
}

func TestLazyLayerRefusals(t *testing.T) {
	ctx := context.Background()
	sn, err := NewSnapshotter(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	layer := RemoteLayer{Ref: "registry.test/app:v1", Digest: digest.Digest("sha256:" + strings.Repeat("c", 64)), Size: 10}

	bad := snapshots.WithLabels(map[string]string{
		snapshots.LabelSnapshotRef: "bad", imagelabels.BlobDigest: "sha256:nothex", imagelabels.BlobSize: "10", imagelabels.ImageRef: "r",
	})
	if _, err := sn.Prepare(ctx, "extract-bad", "", bad); !errdefs.IsInvalidArgument(err) || !errors.Is(err, ErrBadLayerLabels) {
		t.Fatalf("bad digest label: err = %v, want InvalidArgument and ErrBadLayerLabels", err)
	}

	// An overlaybd layer cannot sit on an ordinary one: there is no device to merge them into.
	if _, err := sn.Prepare(ctx, "plain-active", ""); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "plain", "plain-active"); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Prepare(ctx, "extract-x", "plain", lazyLabels(layer, "x")); !errdefs.IsNotImplemented(err) {
		t.Fatalf("lazy layer on a plain parent: err = %v, want NotImplemented", err)
	}
	if _, err := sn.Stat(ctx, "x"); !errdefs.IsNotFound(err) {
		t.Fatalf("refused lazy layer was recorded: err = %v", err)
	}

	// Without a device manager a container on a lazy chain cannot start; nothing is left behind.
	top := prepareLazyChain(t, sn, "app", layer)
	if _, err := sn.Prepare(ctx, "container", top); !errors.Is(err, ErrNoDeviceManager) {
		t.Fatalf("Prepare on a lazy chain without devices: err = %v, want ErrNoDeviceManager", err)
	}
	if _, err := sn.Stat(ctx, "container"); !errdefs.IsNotFound(err) {
		t.Fatalf("failed Prepare left its snapshot: err = %v", err)
	}
}

func TestLazyChainSharesOneDevice(t *testing.T) {
	ctx := context.Background()
	f := newLazyFixture(t)
	lower := f.devices.addBlob(map[string]string{"etc/os": "lower", "shadowed": "from lower"})
	upper := f.devices.addBlob(map[string]string{"bin/app": "upper", "shadowed": "from upper"})
	top := prepareLazyChain(t, f.sn, "two", lower, upper)
	assertCounts(t, f.devices, 0, 0, 0)

	m1 := f.prepare(t, "c1", top)
	if len(m1) != 1 || m1[0].Type != "overlay" {
		t.Fatalf("container mounts = %+v, want one overlay", m1)
	}
	rootfs1 := mountRootfs(t, m1)
	assertLazyMountsHardened(t, f.root)
	assertFile(t, filepath.Join(rootfs1, "etc/os"), "lower")
	assertFile(t, filepath.Join(rootfs1, "bin/app"), "upper")
	assertFile(t, filepath.Join(rootfs1, "shadowed"), "from upper")
	if err := os.WriteFile(filepath.Join(rootfs1, "written"), []byte("c1"), 0o644); err != nil {
		t.Fatal(err)
	}

	rootfs2 := mountRootfs(t, f.prepare(t, "c2", top))
	if _, err := os.Stat(filepath.Join(rootfs2, "written")); !os.IsNotExist(err) {
		t.Fatalf("c2 sees c1's write: %v", err)
	}
	view, err := f.sn.View(ctx, "v", top)
	if err != nil {
		t.Fatal(err)
	}
	if len(view) != 1 || view[0].Type != "bind" || view[0].Options[0] != "ro" {
		t.Fatalf("view mounts = %+v, want a read-only bind of the device", view)
	}
	assertCounts(t, f.devices, 1, 1, 0)

	usage, err := f.sn.Usage(ctx, "c1")
	if err != nil || usage.Size == 0 {
		t.Fatalf("Usage(c1) = %+v, %v; want the written file counted", usage, err)
	}

	unmountRootfs(t, rootfs1)
	f.remove(t, "c1")
	assertCounts(t, f.devices, 1, 1, 0) // c2 and v still use it
	f.remove(t, "v")
	unmountRootfs(t, rootfs2)
	f.remove(t, "c2")
	assertCounts(t, f.devices, 0, 1, 1)

	// The images can be removed once no container needs them; nothing stays mounted.
	f.remove(t, top, "two-layer-0", f.top)
	entries, err := os.ReadDir(filepath.Join(f.root, "snapshots"))
	if err != nil || len(entries) != 0 {
		t.Fatalf("snapshot directories left: %v %v", entries, err)
	}
}

// TestDeviceLingers: with a linger, the device of a chain whose last user is removed stays
// attached for a while, a user coming in that while reuses it, and it is detached once the
// linger passes with no user.
func TestDeviceLingers(t *testing.T) {
	ctx := context.Background()
	const linger = 300 * time.Millisecond
	f := newLazyFixture(t, WithDeviceLinger(linger))
	if _, err := f.sn.View(ctx, "passwd-view", f.top); err != nil {
		t.Fatal(err)
	}
	assertCounts(t, f.devices, 1, 1, 0)
	f.remove(t, "passwd-view")
	assertCounts(t, f.devices, 1, 1, 0) // lingering
	// containerd's collection after the removal calls Cleanup.
	if err := f.sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	assertCounts(t, f.devices, 1, 1, 0) // still lingering
	rootfs := mountRootfs(t, f.prepare(t, "c1", f.top))
	assertFile(t, filepath.Join(rootfs, "base"), "lazy")
	time.Sleep(2 * linger) // the first linger passes while c1 uses the device
	assertCounts(t, f.devices, 1, 1, 0)
	unmountRootfs(t, rootfs)
	f.remove(t, "c1")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if a, _, _ := f.devices.counts(); a == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("device still attached 10s after its last user was removed")
		}
	}
	assertCounts(t, f.devices, 0, 1, 1)
}

// TestTopLayerPreattaches: recording an image's top layer (the one whose image-layers label
// names itself alone) attaches the chain's device in the background; a Cleanup leaves it, a
// container then uses it without a second attach, and an unused one goes after the linger.
func TestTopLayerPreattaches(t *testing.T) {
	ctx := context.Background()
	const linger = 300 * time.Millisecond
	f := newLazyFixture(t, WithDeviceLinger(linger))
	lower := f.devices.addBlob(map[string]string{"etc/os": "lower"})
	upper := f.devices.addBlob(map[string]string{"bin/app": "upper"})
	parent := ""
	for i, layer := range []RemoteLayer{lower, upper} {
		target := "pre-layer-" + strconv.Itoa(i)
		labels := snapshots.WithLabels(map[string]string{imagelabels.CRIImageLayers: strings.Join([]string{lower.Digest.String(), upper.Digest.String()}[i:], ",")})
		if _, err := f.sn.Prepare(ctx, "extract-"+target, parent, lazyLabels(layer, target), labels); !errdefs.IsAlreadyExists(err) {
			t.Fatalf("Prepare of lazy layer %s: err = %v, want AlreadyExists", target, err)
		}
		parent = target
	}
	waitAttached := func(want int) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if a, _, _ := f.devices.counts(); a == want {
				return
			}
			if time.Now().After(deadline) {
				a, at, de := f.devices.counts()
				t.Fatalf("devices: attached=%d attaches=%d detaches=%d, want %d attached", a, at, de, want)
			}
		}
	}
	waitAttached(1)
	// containerd collects garbage after a pull (its extract- snapshots) and calls Cleanup: the
	// device, unused but lingering, stays for the container.
	if err := f.sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	rootfs := mountRootfs(t, f.prepare(t, "c1", parent))
	assertFile(t, filepath.Join(rootfs, "bin/app"), "upper")
	assertCounts(t, f.devices, 1, 1, 0)
	unmountRootfs(t, rootfs)
	f.remove(t, "c1")
	waitAttached(0)
	assertCounts(t, f.devices, 0, 1, 1)
}

func TestCommitOnLazyChain(t *testing.T) {
	f := newLazyFixture(t)

	// A committed container (nerdctl commit) becomes an ordinary layer over the device.
	rootfs := mountRootfs(t, f.prepare(t, "work", f.top))
	if err := os.WriteFile(filepath.Join(rootfs, "added"), []byte("diff"), 0o644); err != nil {
		t.Fatal(err)
	}
	unmountRootfs(t, rootfs)
	if err := f.sn.Commit(context.Background(), "committed", "work"); err != nil {
		t.Fatal(err)
	}
	assertCounts(t, f.devices, 0, 1, 1) // nothing runs on the chain between commit and the next container

	rootfs = mountRootfs(t, f.prepare(t, "next", "committed"))
	assertFile(t, filepath.Join(rootfs, "base"), "lazy")
	assertFile(t, filepath.Join(rootfs, "added"), "diff")
	unmountRootfs(t, rootfs)
	f.remove(t, "next")
	assertCounts(t, f.devices, 0, 2, 2)
}

func TestDevModeGivesEachContainerAWritableDevice(t *testing.T) {
	ctx := context.Background()
	f := newLazyFixture(t, WithRWMode(RWModeDev))

	mounts := f.prepare(t, "c1", f.top)
	if len(mounts) != 1 || mounts[0].Type != "bind" || mounts[0].Options[0] != "rw" {
		t.Fatalf("dev-mode mounts = %+v, want a writable bind of the device", mounts)
	}
	rootfs := mountRootfs(t, mounts)
	assertFile(t, filepath.Join(rootfs, "base"), "lazy")
	if err := os.WriteFile(filepath.Join(rootfs, "new"), []byte("on the device"), 0o644); err != nil {
		t.Fatal(err)
	}
	f.prepare(t, "c2", f.top)
	assertCounts(t, f.devices, 2, 2, 0) // one device per container

	if err := f.sn.Commit(ctx, "img", "c1"); !errdefs.IsNotImplemented(err) {
		t.Fatalf("Commit of a dev-mode snapshot: err = %v, want NotImplemented", err)
	}
	usage, err := f.sn.Usage(ctx, "c1")
	if err != nil || usage.Size == 0 {
		t.Fatalf("Usage(c1) = %+v, %v; want the device's upper counted", usage, err)
	}
	unmountRootfs(t, rootfs)
	f.remove(t, "c1", "c2")
	assertCounts(t, f.devices, 0, 2, 2)
}

func TestRestartKeepsContainersAndDevices(t *testing.T) {
	f := newLazyFixture(t)
	mounts := f.prepare(t, "running", f.top)
	rootfs := mountRootfs(t, mounts)
	if err := f.sn.Close(); err != nil {
		t.Fatal(err)
	}

	// The running container keeps its filesystem while the snapshotter is gone and after.
	assertFile(t, filepath.Join(rootfs, "base"), "lazy")
	f.open(t)
	again, err := f.sn.Mounts(context.Background(), "running")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(again[0].Options, ",") != strings.Join(mounts[0].Options, ",") {
		t.Fatalf("Mounts after restart = %+v, want %+v", again, mounts)
	}
	f.prepare(t, "new", f.top)
	assertCounts(t, f.devices, 1, 1, 0) // the mounted device was taken over, not attached again

	unmountRootfs(t, rootfs)
	f.remove(t, "running", "new")
	assertCounts(t, f.devices, 0, 1, 1)
}

func TestMountsReattachesAfterDeviceLoss(t *testing.T) {
	ctx := context.Background()
	f := newLazyFixture(t)
	f.prepare(t, "c", f.top)
	// As after a reboot: the mount and the device are gone, the metadata is not.
	topID := f.sn.mustID(t, f.top)
	unlock := f.sn.devLocks.lock(topID)
	if err := f.sn.teardownDevice(ctx, topID); err != nil {
		t.Fatal(err)
	}
	unlock()
	assertMounted(t, f.sn.deviceMountPath(topID), false)

	mounts, err := f.sn.Mounts(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	rootfs := mountRootfs(t, mounts)
	assertFile(t, filepath.Join(rootfs, "base"), "lazy")
	assertCounts(t, f.devices, 1, 2, 1)
	unmountRootfs(t, rootfs)
	f.remove(t, "c")
	assertCounts(t, f.devices, 0, 2, 2)
}

func TestCleanupDetachesLeftoverDevices(t *testing.T) {
	f := newLazyFixture(t)
	f.prepare(t, "c", f.top)
	f.devices.failDetach = true
	f.remove(t, "c") // succeeds: the metadata is gone, the device is left for Cleanup
	assertCounts(t, f.devices, 1, 1, 0)
	orphan := filepath.Join(f.root, "snapshots", "999")
	if err := os.MkdirAll(filepath.Join(orphan, "fs"), 0o755); err != nil {
		t.Fatal(err)
	}

	if err := f.sn.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	assertCounts(t, f.devices, 0, 1, 1)
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Fatalf("orphan directory survived Cleanup: %v", err)
	}
}

// mustID returns the snapshot ID of name.
func (o *Snapshotter) mustID(t *testing.T, name string) string {
	t.Helper()
	var id string
	if err := o.ms.WithTransaction(context.Background(), false, func(ctx context.Context) (err error) {
		id, _, _, err = storage.GetInfo(ctx, name)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return id
}

// gatedDevices makes the Attach of one chain wait until another chain's Attach has started,
// which only works if devices of different images attach in parallel.
type gatedDevices struct {
	*loopDevices
	waiter  digest.Digest // top layer of the chain whose Attach waits
	waiting chan struct{} // closed when the waiting Attach has begun
	started chan struct{} // closed when the other chain's Attach starts
}

func (g *gatedDevices) Attach(ctx context.Context, key string, layers []RemoteLayer, upperDir string) (string, error) {
	if layers[len(layers)-1].Digest == g.waiter {
		close(g.waiting)
		select {
		case <-g.started:
		case <-time.After(10 * time.Second):
			return "", errors.New("the other image's attach never started: attaches are serialised")
		}
	} else {
		close(g.started)
	}
	return g.loopDevices.Attach(ctx, key, layers, upperDir)
}

func TestDifferentImagesAttachInParallel(t *testing.T) {
	requireOverlay(t)
	devices := newLoopDevices(t)
	first := devices.addBlob(map[string]string{"image": "first"})
	second := devices.addBlob(map[string]string{"image": "second"})
	gated := &gatedDevices{loopDevices: devices, waiter: first.Digest, waiting: make(chan struct{}), started: make(chan struct{})}
	root := t.TempDir()
	sn, err := NewSnapshotter(root, WithDeviceManager(gated))
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	t.Cleanup(func() { _ = testenv.UnmountAll(root) })
	tops := []string{prepareLazyChain(t, sn, "first", first), prepareLazyChain(t, sn, "second", second)}

	errs := make(chan error, len(tops))
	for i, top := range tops {
		go func() {
			_, err := sn.Prepare(context.Background(), "c"+strconv.Itoa(i), top)
			errs <- err
		}()
		if i == 0 {
			<-gated.waiting // the first image's attach is under way before the second starts
		}
	}
	for range tops {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	assertCounts(t, devices, 2, 2, 0)
	for i := range tops {
		if err := sn.Remove(context.Background(), "c"+strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	assertCounts(t, devices, 0, 2, 2)
}
