package bdd

import (
	"errors"
	"fmt"
	"path/filepath"
	"unicode"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/bddclient"
	"github.com/obdproject/obd/lsmt"
)

// ErrInvalidRequest marks requests that can never succeed as given.
var ErrInvalidRequest = errors.New("invalid request")

// specFromRequest checks an Attach request and turns it into a spec with the given
// id, filling the transport with defaultTransport when the request leaves it open.
func specFromRequest(id string, req *bddv1.AttachRequest, defaultTransport string) (DeviceSpec, error) {
	spec := DeviceSpec{
		ID:        id,
		UpperDir:  cleanPath(req.GetUpperDir()),
		UpperSize: req.GetUpperSize(),
		ReadOnly:  req.GetReadOnly(),
		Transport: bddclient.TransportName(req.GetTransport()),
		Key:       req.GetIdempotencyKey(),
	}
	if err := checkKey(spec.Key); err != nil {
		return spec, fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	if spec.Transport == "" {
		if req.GetTransport() != bddv1.Transport_TRANSPORT_UNSPECIFIED {
			return spec, fmt.Errorf("%w: unknown transport %d", ErrInvalidRequest, req.GetTransport())
		}
		spec.Transport = defaultTransport
	}
	if len(req.GetLayers()) == 0 && spec.UpperDir == "" {
		return spec, fmt.Errorf("%w: no layers and no upper directory", ErrInvalidRequest)
	}
	if len(req.GetLayers()) > lsmt.MaxLayers {
		return spec, fmt.Errorf("%w: %d layers, at most %d", ErrInvalidRequest, len(req.GetLayers()), lsmt.MaxLayers)
	}
	if spec.UpperDir != "" && !filepath.IsAbs(spec.UpperDir) {
		return spec, fmt.Errorf("%w: upper dir %q is not an absolute path", ErrInvalidRequest, spec.UpperDir)
	}
	if spec.UpperDir == "" && spec.UpperSize != 0 {
		return spec, fmt.Errorf("%w: upper size given without an upper dir", ErrInvalidRequest)
	}
	if spec.UpperSize < 0 || spec.UpperSize%512 != 0 {
		return spec, fmt.Errorf("%w: upper size %d is not a non-negative multiple of 512", ErrInvalidRequest, spec.UpperSize)
	}
	for i, l := range req.GetLayers() {
		ls, err := layerSpecFromAPI(l)
		if err != nil {
			return spec, fmt.Errorf("%w: layer %d: %w", ErrInvalidRequest, i, err)
		}
		spec.Layers = append(spec.Layers, ls)
	}
	return spec, nil
}

// maxKeyLen bounds an idempotency key: it is kept in memory and in the state file.
const maxKeyLen = 256

// checkKey accepts an idempotency key of at most maxKeyLen bytes of printable text.
func checkKey(key string) error {
	if len(key) > maxKeyLen {
		return fmt.Errorf("idempotency key of %d bytes, at most %d", len(key), maxKeyLen)
	}
	for _, r := range key {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("idempotency key %q holds a control character", key)
		}
	}
	return nil
}

// cleanPath is filepath.Clean that keeps "" empty.
func cleanPath(p string) string {
	if p == "" {
		return ""
	}
	return filepath.Clean(p)
}

func layerSpecFromAPI(l *bddv1.Layer) (LayerSpec, error) {
	if err := bddclient.CheckLayer(l); err != nil {
		return LayerSpec{}, err
	}
	if p := l.GetPath(); p != "" {
		return LayerSpec{Path: filepath.Clean(p)}, nil
	}
	if ix := l.GetIndexed(); ix != nil {
		b := ix.GetBlob()
		ref := func(r *bddv1.RemoteBlob) BlobRef {
			return BlobRef{Digest: r.GetDigest(), Size: r.GetSize(), RangeTable: r.GetRangeTable(), RangeTableOffset: r.GetRangeTableOffset()}
		}
		return LayerSpec{Ref: b.GetRef(), Digest: b.GetDigest(), Size: b.GetSize(),
			Indexed: &IndexSpec{GzIndex: ref(ix.GetGzIndex()), Meta: ref(ix.GetMeta()), Map: ref(ix.GetMap())}}, nil
	}
	b := l.GetBlob()
	return LayerSpec{Ref: b.GetRef(), Digest: b.GetDigest(), Size: b.GetSize(),
		RangeTable: b.GetRangeTable(), RangeTableOffset: b.GetRangeTableOffset(), URLs: b.GetUrls()}, nil
}

// toAPI describes the layer in API terms.
func (l LayerSpec) toAPI() *bddv1.Layer {
	if l.Path != "" {
		return &bddv1.Layer{Source: &bddv1.Layer_Path{Path: l.Path}}
	}
	if ix := l.Indexed; ix != nil {
		blob := func(b BlobRef) *bddv1.RemoteBlob {
			return &bddv1.RemoteBlob{Ref: l.Ref, Digest: b.Digest, Size: b.Size, RangeTable: b.RangeTable, RangeTableOffset: b.RangeTableOffset}
		}
		return &bddv1.Layer{Source: &bddv1.Layer_Indexed{Indexed: &bddv1.IndexedBlob{
			Blob:    &bddv1.RemoteBlob{Ref: l.Ref, Digest: l.Digest, Size: l.Size},
			GzIndex: blob(ix.GzIndex), Meta: blob(ix.Meta), Map: blob(ix.Map)}}}
	}
	return &bddv1.Layer{Source: &bddv1.Layer_Blob{Blob: &bddv1.RemoteBlob{Ref: l.Ref, Digest: l.Digest, Size: l.Size,
		RangeTable: l.RangeTable, RangeTableOffset: l.RangeTableOffset, Urls: l.URLs}}}
}
