package crie2e

import (
	"strings"
	"testing"

	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/internal/testregistry"
)

// TestE2ECtrPullRun runs an obd image with containerd's ctr on the Kubernetes node's
// containerd, both ways users reach for: a plain `ctr image pull` (the whole image arrives in
// the content store and is unpacked like any image), then `ctr run --snapshotter overlaybd`,
// whose unpack hands the snapshotter the layer file itself, which bdd serves with no second
// download; and `ctr image pull --snapshotter overlaybd`, which pulls only the metadata, the
// layers read lazily.
func TestE2ECtrPullRun(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: runs bdd, the snapshotter, containerd and containers")
	}
	reg := testregistry.Start(t, testregistry.Options{})
	im := pushImages(t, reg, reg, "obdtest/ctr")
	// Another image (other layers), as the first one's snapshots stay after it is removed.
	lazy := pushImages(t, reg, reg, "obdtest/ctr-lazy", testenv.WithDataFile("lazy", []byte("lazy\n")))
	n := startNode(t, nodeOptions{pauseRef: im.pauseRef}, reg.Host)
	layers := manifestLayers(t, reg, "obdtest/ctr", "obd")

	gets := reg.BlobGets()
	n.ctrd.Ctr(t, "image", "pull", "--plain-http", im.obdRef)
	if got := reg.BlobGets() - gets; got != 1+int64(len(layers)) {
		t.Fatalf("plain pull fetched %d blobs, want the config and %d layers", got, len(layers))
	}
	if content := n.ctrd.Ctr(t, "content", "ls", "-q"); !strings.Contains(content, layers[0].Digest.String()) {
		t.Fatalf("layer %s is not in the content store after a plain pull", layers[0].Digest)
	}
	gets = reg.BlobGets()
	out := n.ctrd.Ctr(t, "run", "--rm", "--snapshotter", "overlaybd", im.obdRef, "plain", "md5sum", "/bin/busybox")
	if !strings.HasPrefix(out, im.busyboxMD5) {
		t.Fatalf("ctr run after a plain pull: md5sum = %q, want %s", out, im.busyboxMD5)
	}
	if got := reg.BlobGets() - gets; got != 0 {
		t.Fatalf("ctr run after a plain pull fetched %d blobs: the layers were downloaded twice", got)
	}
	if !logContains(t, n.snapshotterLog, "served from its file") {
		t.Fatal("the snapshotter did not serve the unpacked layer file")
	}

	gets = reg.BlobGets()
	n.ctrd.Ctr(t, "image", "pull", "--plain-http", "--snapshotter", "overlaybd", lazy.obdRef)
	if got := reg.BlobGets() - gets; got != 1 {
		t.Fatalf("pull --snapshotter overlaybd fetched %d blobs, want only the config", got)
	}
	gets = reg.BlobGets()
	out = n.ctrd.Ctr(t, "run", "--rm", "--snapshotter", "overlaybd", lazy.obdRef, "lazy", "md5sum", "/bin/busybox")
	if !strings.HasPrefix(out, lazy.busyboxMD5) {
		t.Fatalf("ctr run after pull --snapshotter overlaybd: md5sum = %q, want %s", out, im.busyboxMD5)
	}
	if got := reg.BlobGets() - gets; got == 0 {
		t.Fatal("the lazy run fetched nothing from the registry: its root was not read lazily")
	}
}
