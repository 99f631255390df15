package obdimage

import (
	"encoding/json"
	"errors"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/imagelabels"
)

// FuzzLayers: a manifest comes from a registry. Layers never panics, fails only with
// ErrNotOverlaybd, and what it accepts has a valid digest, a size in range and a range table
// inside the blob for every layer.
func FuzzLayers(f *testing.F) {
	blob := "sha256:" + "ab" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd"
	f.Add([]byte(`{"schemaVersion":2,"layers":[{"annotations":{"` + imagelabels.BlobDigest + `":"` + blob + `","` + imagelabels.BlobSize + `":"8192"}}]}`))
	f.Add([]byte(`{"schemaVersion":2,"layers":[{"annotations":{"` + imagelabels.BlobDigest + `":"` + blob + `","` + imagelabels.BlobSize + `":"8192","` +
		imagelabels.RangeTable + `":"` + blob + `","` + imagelabels.RangeTableOffset + `":"8000"}}]}`))
	f.Add([]byte(`{"layers":[{"annotations":{"` + imagelabels.BlobDigest + `":"sha256:zz","` + imagelabels.BlobSize + `":"-1"}}]}`))
	f.Add([]byte(`{"layers":[]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var m ocispec.Manifest
		if json.Unmarshal(data, &m) != nil {
			return
		}
		layers, err := Layers(m)
		if err != nil {
			if !errors.Is(err, ErrNotOverlaybd) {
				t.Fatalf("Layers: %v, want ErrNotOverlaybd", err)
			}
			return
		}
		for i, l := range layers {
			if l.Digest.Validate() != nil || imagelabels.CheckBlobSize(l.Size) != nil {
				t.Fatalf("accepted layer %d: %+v", i, l)
			}
			if l.RangeTable != "" && (l.RangeTable.Validate() != nil || l.RangeTableOffset <= 0 || l.RangeTableOffset >= l.Size) {
				t.Fatalf("accepted layer %d's range table: %+v", i, l)
			}
		}
	})
}
