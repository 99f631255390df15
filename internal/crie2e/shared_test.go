package crie2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/obdproject/obd/internal/testenv"
)

// TestE2ESharedLayerNeedsCredentials: two private images share their base layer, which a
// container of the first brings to the node. A pull of the second that gave bdd no
// credentials (straight to containerd) does not let its container start from those cached
// bytes; once its pull brings bdd the credentials, it does.
func TestE2ESharedLayerNeedsCredentials(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: runs bdd, the snapshotter, containerd with CRI and containers")
	}
	pauseReg, reg, first := privateImages(t)
	// The second image: the first one's layer and one more, in another repository.
	layout := filepath.Join(t.TempDir(), "layout")
	extra := filepath.Join(t.TempDir(), "extra")
	if err := os.MkdirAll(extra, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(extra, "second"), []byte("second image\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, cmd := range [][]string{
		{"cp", "-a", first.plain.Layout, layout},
		{testenv.Bin(t, "umoci"), "insert", "--image", layout + ":" + first.plain.Tag, extra, "/extra"},
		{testenv.Bin(t, "skopeo"), "copy", "--dest-tls-verify=false", "--dest-creds", reg.Username() + ":" + secret,
			"oci:" + layout + ":" + first.plain.Tag, "docker://" + reg.Host + "/obdtest/second:plain"},
	} {
		if out, err := exec.CommandContext(ctx, cmd[0], cmd[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(cmd[:2], " "), err, out)
		}
	}
	second := reg.Host + "/obdtest/second:obd"
	obdConvert(t, reg, reg.Host+"/obdtest/second:plain", second)

	_, noConfig := noDockerConfig(t)
	n := startNode(t, nodeOptions{pauseRef: first.pauseRef, criImageProxy: true, bdd: []testenv.BDDOption{noConfig}},
		pauseReg.Host, reg.Host)
	creds := reg.Username() + ":" + secret
	n.crictl.Run(t, "pull", "--creds", creds, first.obdRef)
	n.runBusybox(t, "first", first.obdRef, first.busyboxMD5)

	// kubelet's image calls go to the proxy; this pull goes around it, as if from another
	// client of containerd: bdd learns no credentials for the second image.
	n.ctrd.Crictl("").Run(t, "pull", "--creds", creds, second)
	p := n.runPod(t, "second")
	t.Cleanup(func() { _, _ = n.crictl.Try("rmp", "-f", p.id) })
	if _, err := n.createContainer(t, p, "app", second, "/bin/sh", "-c", sleepCmd); err == nil ||
		!strings.Contains(err.Error(), "refuses it to this node") {
		t.Fatalf("container of the second image without its credentials: %v, want the cached base layer refused", err)
	}
	n.crictl.Run(t, "pull", "--creds", creds, second)
	_, id := n.runBusybox(t, "second-again", second, first.busyboxMD5)
	if out := n.crictl.Run(t, "exec", "-s", id, "cat", "/extra/second"); out != "second image" {
		t.Fatalf("the second image's own layer: %q", out)
	}
}
