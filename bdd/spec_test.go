package bdd

import (
	"errors"
	"reflect"
	"testing"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/bddclient"
	"github.com/obdproject/obd/lsmt"
)

func pathLayer(p string) *bddv1.Layer { return &bddv1.Layer{Source: &bddv1.Layer_Path{Path: p}} }

func blobLayer(ref, dgst string, size int64) *bddv1.Layer {
	return &bddv1.Layer{Source: &bddv1.Layer_Blob{Blob: &bddv1.RemoteBlob{Ref: ref, Digest: dgst, Size: size}}}
}

const goodDigest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

func TestSpecFromRequest(t *testing.T) {
	req := &bddv1.AttachRequest{
		Layers: []*bddv1.Layer{pathLayer("/a/../b/layer"), blobLayer("127.0.0.1:5000/app", goodDigest, 42),
			{Source: &bddv1.Layer_Blob{Blob: &bddv1.RemoteBlob{Ref: "127.0.0.1:5000/app", Digest: goodDigest, Size: 42,
				RangeTable: goodDigest, RangeTableOffset: 10, Urls: []string{"ipfs://bafybeiey4h6pdr6wjkphvtrighj6gnxwsl63kaqy5xzx5hpaox3ujxxm4i"}}}}},
		UpperDir: "/up",
	}
	spec, err := specFromRequest("x1", req, bddclient.TransportFUSE)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Transport != bddclient.TransportFUSE || spec.Layers[0].Path != "/b/layer" || spec.Layers[1].Size != 42 {
		t.Fatalf("spec = %+v", spec)
	}
	for i, l := range spec.Layers {
		back, err := layerSpecFromAPI(l.toAPI())
		if err != nil || !reflect.DeepEqual(back, l) {
			t.Errorf("layer %d does not round-trip: %+v %v", i, back, err)
		}
	}
}

func TestSpecFromRequestRejects(t *testing.T) {
	for name, req := range map[string]*bddv1.AttachRequest{
		"empty":          {},
		"relative path":  {Layers: []*bddv1.Layer{pathLayer("layer")}},
		"empty layer":    {Layers: []*bddv1.Layer{{}}},
		"bad digest":     {Layers: []*bddv1.Layer{blobLayer("r/x", "sha256:zz", 1)}},
		"no ref":         {Layers: []*bddv1.Layer{blobLayer("", goodDigest, 1)}},
		"zero size":      {Layers: []*bddv1.Layer{blobLayer("r/x", goodDigest, 0)}},
		"relative upper": {UpperDir: "up"},
		"odd upper size": {UpperDir: "/up", UpperSize: 1000},
		"size no upper":  {Layers: []*bddv1.Layer{pathLayer("/l")}, UpperSize: 4096},
		"bad transport":  {Layers: []*bddv1.Layer{pathLayer("/l")}, Transport: 99},
		"too many":       {Layers: make([]*bddv1.Layer, lsmt.MaxLayers+1)},
	} {
		if _, err := specFromRequest("x", req, bddclient.TransportFUSE); !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("%s: got %v, want ErrInvalidRequest", name, err)
		}
	}
}
