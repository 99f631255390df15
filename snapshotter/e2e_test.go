package snapshotter

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/opencontainers/go-digest"

	"github.com/obdproject/obd/imagelabels"
	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/internal/testregistry"
)

// servedSnapshotter is a Snapshotter served on a unix socket the way cmd/overlaybd-snapshotter
// serves it; stop and start simulate a restart of that process.
type servedSnapshotter struct {
	t       *testing.T
	root    string
	address string
	opts    []Opt
	sn      *Snapshotter
	cancel  context.CancelFunc
	served  chan error
}

func startServedSnapshotter(t *testing.T, opts ...Opt) *servedSnapshotter {
	t.Helper()
	dir := t.TempDir()
	s := &servedSnapshotter{t: t, root: filepath.Join(dir, "root"), address: filepath.Join(dir, "sn.sock"), opts: opts}
	s.start()
	t.Cleanup(func() {
		s.stop()
		// A failed test can leave devices mounted under the root; the temp dir removal
		// must not reach into them.
		if err := testenv.UnmountAll(dir); err != nil {
			t.Error(err)
		}
	})
	return s
}

func (s *servedSnapshotter) start() {
	s.t.Helper()
	sn, err := NewSnapshotter(s.root, s.opts...)
	if err != nil {
		s.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.sn, s.cancel, s.served = sn, cancel, make(chan error, 1)
	go func() { s.served <- Serve(ctx, sn, s.address) }()
}

func (s *servedSnapshotter) stop() {
	if s.sn == nil {
		return
	}
	s.cancel()
	if err := <-s.served; err != nil {
		s.t.Errorf("Serve: %v", err)
	}
	if err := s.sn.Close(); err != nil {
		s.t.Errorf("Close: %v", err)
	}
	s.sn = nil
}

// TestE2ENerdctlRunPlainImage is the drop-in property end to end: containerd with the proxy
// plugin `overlaybd`, nerdctl loading and running a plain OCI image on it, also across a
// restart of the snapshotter while a container runs.
func TestE2ENerdctlRunPlainImage(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: starts containerd and runs containers")
	}
	requireOverlay(t)
	served := startServedSnapshotter(t)
	ctrd := testenv.StartContainerd(t, testenv.ContainerdOptions{
		ProxyPlugins: []testenv.ProxyPlugin{{Name: "overlaybd", Type: "snapshot", Address: served.address}},
	})
	img := testenv.BuildBusyboxImage(t)
	nerdctl := func(args ...string) string {
		t.Helper()
		return ctrd.Nerdctl(t, append([]string{"--snapshotter", "overlaybd"}, args...)...)
	}

	nerdctl("load", "-i", img.Archive)
	layers := walkNames(t, served.sn, snapshots.KindCommitted)
	if len(layers) != 1 {
		t.Fatalf("committed snapshots after load = %v, want the image's one layer", layers)
	}

	if out := nerdctl("run", "--rm", "--net", "none", img.Ref, "echo", "hi"); strings.TrimSpace(out) != "hi" {
		t.Fatalf("nerdctl run output = %q, want %q", out, "hi")
	}

	// A container keeps running, and keeps its root, while the snapshotter restarts.
	nerdctl("run", "-d", "--name", "long", "--net", "none", img.Ref, "sh", "-c", "echo kept > /state; sleep 600")
	t.Cleanup(func() { ctrd.Nerdctl(t, "rm", "-f", "long") })
	served.stop()
	served.start()
	if out := nerdctl("exec", "long", "cat", "/state"); strings.TrimSpace(out) != "kept" {
		t.Fatalf("running container's file after restart = %q, want %q", out, "kept")
	}
	if out := nerdctl("run", "--rm", "--net", "none", img.Ref, "ls", "/bin/busybox"); strings.TrimSpace(out) != "/bin/busybox" {
		t.Fatalf("new container after restart: ls = %q", out)
	}
	// containerd removes snapshots of deleted containers in its garbage collection, shortly after.
	waitActiveSnapshots(t, served.sn, 1)
	nerdctl("rm", "-f", "long")
	waitActiveSnapshots(t, served.sn, 0)
}

// TestE2ELazyImageRunsFromADevice takes the lazy path through containerd: the image's layer
// is declared an overlaybd blob in its manifest, so pulling it records the layer without
// fetching it, and the container runs from an ext4 on a loop device that the test's device
// manager builds from the same files (bdd's place until it lands).
func TestE2ELazyImageRunsFromADevice(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: starts containerd and runs containers")
	}
	requireOverlay(t)
	skopeo := testenv.Bin(t, "skopeo")
	devices := newLoopDevices(t)
	served := startServedSnapshotter(t, WithDeviceManager(devices))
	ctrd := testenv.StartContainerd(t, testenv.ContainerdOptions{
		ProxyPlugins: []testenv.ProxyPlugin{{Name: "overlaybd", Type: "snapshot", Address: served.address}},
	})
	blob := digest.FromString("busybox as an overlaybd blob")
	img := testenv.BuildBusyboxImage(t, testenv.WithLayerAnnotations(map[string]string{
		imagelabels.BlobDigest: blob.String(),
		imagelabels.BlobSize:   "1048576",
	}))
	devices.blobs[blob] = img.RootFS
	registry := testregistry.Start(t, testregistry.Options{})
	ref := registry.Host + "/obdtest/busybox:lazy"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, skopeo, "copy", "--preserve-digests", "--dest-tls-verify=false",
		"oci:"+img.Layout+":"+img.Tag, "docker://"+ref).CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy: %v\n%s", err, out)
	}
	nerdctl := func(args ...string) string {
		t.Helper()
		return ctrd.Nerdctl(t, append([]string{"--snapshotter", "overlaybd", "--insecure-registry"}, args...)...)
	}

	blobGets := registry.BlobGets()
	nerdctl("pull", "--quiet", ref)
	if n := registry.BlobGets() - blobGets; n != 1 {
		t.Fatalf("pull fetched %d blobs, want only the config (the layer is read lazily)", n)
	}
	layers := walkNames(t, served.sn, snapshots.KindCommitted)
	if len(layers) != 1 {
		t.Fatalf("committed snapshots after pull = %v, want the image's one layer", layers)
	}
	id := served.sn.mustID(t, layers[0])
	if !served.sn.isLazy(id) {
		t.Fatalf("layer %s was not recorded as an overlaybd layer", layers[0])
	}
	assertCounts(t, devices, 0, 0, 0)

	out := nerdctl("run", "--rm", "--net", "none", ref, "sh", "-c", "echo hi; cat /proc/mounts")
	if !strings.HasPrefix(out, "hi\n") || !strings.Contains(out, served.sn.deviceMountPath(id)) {
		t.Fatalf("container output = %q, want hi and an overlay whose lower is the device mount", out)
	}

	// Across a restart of the snapshotter a running container keeps its device-backed root,
	// and a new container of the image shares the device instead of attaching another.
	nerdctl("run", "-d", "--name", "long", "--net", "none", ref, "sleep", "600")
	t.Cleanup(func() { ctrd.Nerdctl(t, "rm", "-f", "long") })
	_, attachesBefore, _ := devices.counts()
	served.stop()
	served.start()
	if out := nerdctl("exec", "long", "ls", "/bin/busybox"); strings.TrimSpace(out) != "/bin/busybox" {
		t.Fatalf("running container after restart: ls = %q", out)
	}
	if out := nerdctl("run", "--rm", "--net", "none", ref, "echo", "again"); strings.TrimSpace(out) != "again" {
		t.Fatalf("new container after restart: output %q", out)
	}
	if attached, attaches, _ := devices.counts(); attached != 1 || attaches != attachesBefore {
		t.Fatalf("after restart: attached=%d attaches=%d, want the running container's device reused (%d attaches)", attached, attaches, attachesBefore)
	}
	nerdctl("rm", "-f", "long")
	// Once containerd collects the container's snapshots (nerdctl also makes a short-lived
	// view to read the image's /etc/passwd), the device goes too.
	waitFor(t, "every device attach undone", func() bool {
		attached, attaches, detaches := devices.counts()
		return attached == 0 && attaches > 0 && attaches == detaches
	})
}

func waitActiveSnapshots(t *testing.T, sn *Snapshotter, want int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d active snapshots", want), func() bool {
		return len(walkNames(t, sn, snapshots.KindActive)) == want
	})
}

// waitFor polls cond until it holds; containerd collects garbage asynchronously.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func walkNames(t *testing.T, sn *Snapshotter, kind snapshots.Kind) []string {
	t.Helper()
	var names []string
	if err := sn.Walk(context.Background(), func(_ context.Context, info snapshots.Info) error {
		if info.Kind == kind {
			names = append(names, info.Name)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return names
}
