package ctrplugin

import (
	"encoding/json"
	"errors"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// FuzzOverlaybdBlobs feeds registry-supplied manifests to overlaybdBlobs: it must return one
// valid digest per layer or ErrNotOverlaybd, never panic.
func FuzzOverlaybdBlobs(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		var m ocispec.Manifest
		if json.Unmarshal(data, &m) != nil {
			return
		}
		blobs, err := overlaybdBlobs(m)
		if err != nil {
			if !errors.Is(err, ErrNotOverlaybd) {
				t.Fatalf("error %v does not wrap ErrNotOverlaybd", err)
			}
			return
		}
		if len(blobs) != len(m.Layers) {
			t.Fatalf("%d blobs for %d layers", len(blobs), len(m.Layers))
		}
		for _, b := range blobs {
			if b.Validate() != nil {
				t.Fatalf("invalid digest %q returned", b)
			}
		}
	})
}
