package crie2e

import (
	"strings"
	"testing"

	"github.com/obdproject/obd/imagelabels"
	"github.com/obdproject/obd/internal/testregistry"
)

// TestE2ECRI runs a pod from an obd image the way kubelet would, through containerd's CRI
// plugin configured by docs/containerd-cri.toml: crictl pulls the image (its manifest and
// config only), runs a host-network pod, creates, starts, reads the logs of and execs into a
// container whose root is the image's device served by bdd, then removes it all.
func TestE2ECRI(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: runs bdd, the snapshotter, containerd with CRI and containers")
	}
	reg := testregistry.Start(t, testregistry.Options{})
	im := pushImages(t, reg, reg, "obdtest/app")
	n := startNode(t, nodeOptions{pauseRef: im.pauseRef}, reg.Host)

	blobGets := reg.BlobGets()
	imageID := pulledID(t, n.crictl.Run(t, "pull", im.obdRef))
	if got := reg.BlobGets() - blobGets; got != 1 {
		t.Fatalf("crictl pull fetched %d blobs, want only the image config", got)
	}
	if out := n.crictl.Run(t, "images", "-q"); !strings.Contains(out, imageID) {
		t.Fatalf("crictl images = %q after the pull, want %s", out, imageID)
	}
	for _, l := range manifestLayers(t, reg, "obdtest/app", "obd") {
		if l.Annotations[imagelabels.BlobDigest] == "" {
			t.Fatalf("obd convert wrote a layer without %s: %v", imagelabels.BlobDigest, l)
		}
		// The layer stays in the registry: containerd's content store never held it.
		if out := n.ctrd.Ctr(t, "content", "ls", "-q"); strings.Contains(out, l.Digest.String()) {
			t.Fatalf("layer %s is in containerd's content store: the pull downloaded it", l.Digest)
		}
	}

	p := n.runPod(t, "web")
	id, err := n.createContainer(t, p, "app", im.obdRef, "/bin/sh", "-c", "echo hello from obd; exec sleep 600")
	if err != nil {
		t.Fatal(err)
	}
	n.crictl.Run(t, "start", id)
	waitFor(t, "the container's log line", func() bool {
		out, err := n.crictl.Try("logs", id)
		return err == nil && strings.Contains(out, "hello from obd")
	})
	if devs := n.devices(t); len(devs) != 1 || !devs[0].GetReadOnly() {
		t.Fatalf("bdd devices = %v, want the image's one read-only device", devs)
	}
	mounts := n.crictl.Run(t, "exec", "-s", id, "cat", "/proc/mounts")
	root := strings.SplitN(mounts, "\n", 2)[0]
	if !strings.HasPrefix(root, "overlay / overlay") || !strings.Contains(root, n.snapshotRoot) || !strings.Contains(root, "/block/mnt") {
		t.Fatalf("container root = %q, want an overlay on the device mount under %s", root, n.snapshotRoot)
	}
	if out := n.crictl.Run(t, "exec", "-s", id, "md5sum", "/bin/busybox"); !strings.HasPrefix(out, im.busyboxMD5) {
		t.Fatalf("md5sum /bin/busybox in the container = %q, want %s", out, im.busyboxMD5)
	}
	if got := reg.BlobGets() - blobGets; got <= 1 {
		t.Fatalf("the container's reads fetched no blob ranges (%d GETs): its root is not served lazily", got)
	}

	n.crictl.Run(t, "stop", id)
	n.crictl.Run(t, "rm", id)
	n.crictl.Run(t, "stopp", p.id)
	n.crictl.Run(t, "rmp", p.id)
	n.crictl.Run(t, "rmi", im.obdRef)
	waitFor(t, "bdd to have no devices", func() bool { return len(n.devices(t)) == 0 })
	if out := n.crictl.Run(t, "images", "-q"); strings.Contains(out, imageID) {
		t.Fatalf("crictl images after rmi = %q, still %s", out, imageID)
	}
}

// pulledID is the image ID in crictl pull's output ("Image is up to date for sha256:...").
func pulledID(t *testing.T, out string) string {
	t.Helper()
	_, id, ok := strings.Cut(out, " for ")
	if !ok || !strings.HasPrefix(id, "sha256:") {
		t.Fatalf("crictl pull printed %q, want the image ID", out)
	}
	return strings.TrimSpace(id)
}
