package bdd_test

import (
	"math"
	"strings"
	"testing"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/internal/testregistry"
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
