package convert_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/convert/internal/fixture"
	"github.com/obdproject/obd/internal/testenv"
)

// TestConvertThroughBddMatchesUmoci converts the fixture into a registry,
// attaches the result through the bdd daemon (lazy registry reads), mounts it
// and compares the whole tree with `umoci unpack` of the source image.
func TestConvertThroughBddMatchesUmoci(t *testing.T) {
	requireDevices(t)
	umoci := fixture.Umoci(t)
	tmp := t.TempDir()
	reg, cfgPath, c := registryConverter(t, tmp)
	src := fixtureLayout(t)
	ctx := context.Background()
	repo := reg.Host + "/fixture/bdd"
	if _, err := c.Convert(ctx, "oci:"+src+":v1", repo+":obd"); err != nil {
		t.Fatal(err)
	}
	layout := filepath.Join(tmp, "layout")
	if _, err := c.Convert(ctx, "oci:"+src+":v1", "oci:"+layout+":obd"); err != nil {
		t.Fatal(err)
	}
	man := readManifest(t, layout, "obd") // the same image the registry holds (reproducible)

	client := testenv.StartBDD(t, testenv.WithDockerConfig(cfgPath)).Client
	req := &bddv1.AttachRequest{ReadOnly: true, Transport: bddv1.Transport_TRANSPORT_FUSE}
	for _, l := range man.Layers {
		req.Layers = append(req.Layers, &bddv1.Layer{Source: &bddv1.Layer_Blob{Blob: &bddv1.RemoteBlob{Ref: repo, Digest: l.Digest.String(), Size: l.Size}}})
	}
	actx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	resp, err := client.Attach(actx, req)
	if err != nil {
		t.Fatalf("bdd attach: %v", err)
	}
	dev := resp.GetDevice()
	mnt := filepath.Join(tmp, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(dev.GetDevicePath(), mnt, "ext4", unix.MS_RDONLY, "noload"); err != nil {
		t.Fatalf("mount %s: %v", dev.GetDevicePath(), err)
	}
	mounted := true
	defer func() {
		if mounted {
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
	}()

	checkMatchesUmoci(t, umoci, src, mnt)

	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	mounted = false
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		_, err := client.Detach(actx, &bddv1.DetachRequest{Id: dev.GetId()})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bdd detach: %v", err)
		}
	}
}
