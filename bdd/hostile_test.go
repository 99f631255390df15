package bdd_test

import (
	"log/slog"
	"math"
	"os"
	"strings"
	"testing"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/bdd"
	"github.com/obdproject/obd/internal/testregistry"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
)

// TestAttachHugeBlobSize asks for registry blobs whose sizes no layer has (as a manifest
// annotation would, through the snapshotter): each Attach fails with InvalidArgument naming
// the size, and the daemon goes on serving.
func TestAttachHugeBlobSize(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{})
	d := reg.PushBlob(t, "obd/app", []byte("not a layer at all"))
	p := startInProcess(t, testConfig(t))
	for _, size := range []int64{math.MaxInt64, 1 << 62, 1 << 50} {
		_, err := p.client.Attach(callCtx(t), &bddv1.AttachRequest{Layers: []*bddv1.Layer{{Source: &bddv1.Layer_Blob{
			Blob: &bddv1.RemoteBlob{Ref: reg.Host + "/obd/app", Digest: d.String(), Size: size}}}}})
		if grpcCode(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "size") {
			t.Errorf("size %d: got %v, want InvalidArgument about the size", size, err)
		}
	}
	if _, err := p.client.List(callCtx(t), &bddv1.ListRequest{}); err != nil {
		t.Fatalf("the daemon stopped serving: %v", err)
	}
}

// TestAttachDeviceLimit: past limits.max_devices an Attach fails with ResourceExhausted and
// leaves nothing behind; a Detach makes room again.
func TestAttachDeviceLimit(t *testing.T) {
	cfg := testConfig(t)
	cfg.Limits.MaxDevices = 2
	p := startInProcess(t, cfg)
	layers := pathLayers(splitImage(t, randomImage(t, 1<<20), 1, nil, false)...)
	var ids []string
	for range 2 {
		resp, err := p.client.Attach(callCtx(t), &bddv1.AttachRequest{Layers: layers})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, resp.GetDevice().GetId())
	}
	_, err := p.client.Attach(callCtx(t), &bddv1.AttachRequest{Layers: layers})
	if grpcCode(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "max_devices") {
		t.Fatalf("third attach: %v, want ResourceExhausted naming limits.max_devices", err)
	}
	if list, _ := p.client.List(callCtx(t), &bddv1.ListRequest{}); len(list.GetDevices()) != 2 {
		t.Fatalf("%d devices after a refused attach, want 2", len(list.GetDevices()))
	}
	if _, err := p.client.Detach(callCtx(t), &bddv1.DetachRequest{Id: ids[0]}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.client.Attach(callCtx(t), &bddv1.AttachRequest{Layers: layers}); err != nil {
		t.Fatalf("attach after a detach: %v", err)
	}
}

// TestRunDirIsPrivate: run_dir holds the devices' FUSE files and NBD sockets, through which
// anyone could read or write the devices: bdd makes it 0700 whatever mode it found, and
// refuses a run_dir that is a symbolic link.
func TestRunDirIsPrivate(t *testing.T) {
	cfg := testConfig(t)
	if err := os.MkdirAll(cfg.RunDir, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(cfg.RunDir, 0o777); err != nil {
		t.Fatal(err)
	}
	startInProcess(t, cfg)
	st, err := os.Stat(cfg.RunDir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o700 {
		t.Errorf("run_dir mode %v, want 0700", st.Mode().Perm())
	}
	link := testConfig(t)
	if err := os.Symlink(cfg.RunDir, link.RunDir); err != nil {
		t.Fatal(err)
	}
	if _, err := bdd.NewServer(link, slog.New(slog.DiscardHandler), prometheus.NewRegistry()); err == nil || !strings.Contains(err.Error(), "run_dir") {
		t.Errorf("a symlinked run_dir: %v, want an error naming run_dir", err)
	}
}

// TestAttachIdempotencyKey: an Attach with the key of a device bdd has returns that device
// (also after a restart), one with the same key for another stack fails with AlreadyExists,
// a detached device's key is free again, and a malformed key is refused.
func TestAttachIdempotencyKey(t *testing.T) {
	cfg := testConfig(t)
	p := startInProcess(t, cfg)
	layers := splitImage(t, randomImage(t, 1<<20), 2, nil, false)
	req := func(key string, paths ...string) *bddv1.AttachRequest {
		return &bddv1.AttachRequest{Layers: pathLayers(paths...), IdempotencyKey: key}
	}
	attach := func(p *inProcess, r *bddv1.AttachRequest) *bddv1.Device {
		t.Helper()
		resp, err := p.client.Attach(callCtx(t), r)
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetDevice()
	}
	a := attach(p, req("snap-1", layers...))
	if a.GetIdempotencyKey() != "snap-1" {
		t.Errorf("device key %q, want snap-1", a.GetIdempotencyKey())
	}
	if again := attach(p, req("snap-1", layers...)); again.GetId() != a.GetId() {
		t.Errorf("a second attach with the key made device %s, want %s", again.GetId(), a.GetId())
	}
	if _, err := p.client.Attach(callCtx(t), req("snap-1", layers[0])); grpcCode(err) != codes.AlreadyExists {
		t.Errorf("the key for another stack: %v, want AlreadyExists", err)
	}
	for _, bad := range []string{strings.Repeat("k", 257), "a\nb"} {
		if _, err := p.client.Attach(callCtx(t), req(bad, layers...)); grpcCode(err) != codes.InvalidArgument {
			t.Errorf("key %q: %v, want InvalidArgument", bad, err)
		}
	}
	p.stop()
	p = startInProcess(t, cfg)
	if again := attach(p, req("snap-1", layers...)); again.GetId() != a.GetId() {
		t.Errorf("after a restart the key made device %s, want %s", again.GetId(), a.GetId())
	}
	if list, _ := p.client.List(callCtx(t), &bddv1.ListRequest{}); len(list.GetDevices()) != 1 {
		t.Errorf("%d devices, want 1", len(list.GetDevices()))
	}
	if _, err := p.client.Detach(callCtx(t), &bddv1.DetachRequest{Id: a.GetId()}); err != nil {
		t.Fatal(err)
	}
	if b := attach(p, req("snap-1", layers...)); b.GetId() == a.GetId() {
		t.Errorf("a detached device's key still names it")
	}
}
