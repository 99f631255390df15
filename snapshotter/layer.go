package snapshotter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"

	"github.com/obdproject/obd/imagelabels"
	"github.com/obdproject/obd/ipfsnode"
	"github.com/obdproject/obd/layerblob"
	"github.com/obdproject/obd/tracestore"
)

// RemoteLayer is one overlaybd layer blob in a registry, or, with Path, a local copy of one.
type RemoteLayer struct {
	Ref string `json:"ref"` // image reference the blob belongs to
	// Path is a local file holding the layer (the blob's overlaybd.commit, which containerd
	// unpacked itself: see unpackedLayer); bdd reads it instead of the registry. Ref and the
	// range table are empty then, and Digest is the file's.
	Path   string        `json:"path,omitempty"`
	Digest digest.Digest `json:"digest"`
	Size   int64         `json:"size"`
	// Manifest is the digest of the image manifest the layer was pulled for, "" when the pull
	// did not say: the subject of the image's start traces in the registry.
	Manifest digest.Digest `json:"manifest,omitempty"`
	// RangeTable and RangeTableOffset pin the blob's range table (imagelabels.RangeTable),
	// which bdd checks every fetched range against; empty for a blob without one.
	RangeTable       digest.Digest `json:"rangeTable,omitempty"`
	RangeTableOffset int64         `json:"rangeTableOffset,omitempty"`
	// IPFSURL is the blob's ipfs://<CID> URL (imagelabels.IPFSURL), which bdd reads it
	// through when it has an IPFS gateway; empty for a blob without one.
	IPFSURL string `json:"ipfsURL,omitempty"`
	// Index, for an ordinary OCI layer blob read through its lazy-start index (obd index),
	// names the index's blobs in the same repository; nil for an overlaybd blob.
	Index *LayerIndex `json:"index,omitempty"`
}

// LayerIndex names the blobs of an OCI layer's lazy-start index (docs/FORMAT.md, "Indexed
// OCI images").
type LayerIndex struct {
	GzIndex IndexBlob `json:"gzIndex"`
	Meta    IndexBlob `json:"meta"`
	Map     IndexBlob `json:"map"`
}

// IndexBlob is one blob of a layer's index.
type IndexBlob struct {
	Digest digest.Digest `json:"digest"`
	Size   int64         `json:"size"`
	// RangeTable and RangeTableOffset pin the blob's range table (the seek index has one).
	RangeTable       digest.Digest `json:"rangeTable,omitempty"`
	RangeTableOffset int64         `json:"rangeTableOffset,omitempty"`
}

// DeviceManager attaches the block devices of lazy chains (bdd, through its API, in production).
type DeviceManager interface {
	// Attach returns a block device holding the merged ext4 of the chain (lowest layer first).
	// upperDir names a directory for the device's writable layer; "" makes a read-only device.
	// Attaching a key that is already attached returns its device.
	Attach(ctx context.Context, key string, layers []RemoteLayer, upperDir string) (devPath string, err error)
	// Detach tears the device of key down. Detaching a key that is not attached is not an error.
	Detach(ctx context.Context, key string) error
}

// ErrBadLayerLabels is returned when a snapshot's overlaybd labels cannot be used.
var ErrBadLayerLabels = errors.New("invalid overlaybd layer labels")

// remoteLayerFromLabels returns the overlaybd blob the labels name. ok is false when the labels
// do not mark an overlaybd layer at all (no blob digest label).
func remoteLayerFromLabels(labels map[string]string) (layer RemoteLayer, ok bool, err error) {
	rawDigest, ok := labels[imagelabels.BlobDigest]
	if !ok {
		return RemoteLayer{}, false, nil
	}
	dgst, err := digest.Parse(rawDigest)
	if err != nil {
		return RemoteLayer{}, true, fmt.Errorf("%w: %s %q: %v", ErrBadLayerLabels, imagelabels.BlobDigest, rawDigest, err)
	}
	rawSize := labels[imagelabels.BlobSize]
	size, err := imagelabels.ParseBlobSize(rawSize)
	if err != nil {
		return RemoteLayer{}, true, fmt.Errorf("%w: %w", ErrBadLayerLabels, err)
	}
	ref := labels[imagelabels.ImageRef]
	if ref == "" {
		ref = labels[imagelabels.CRIImageRef]
	}
	if ref == "" {
		return RemoteLayer{}, true, fmt.Errorf("%w: blob %s has neither %s nor %s", ErrBadLayerLabels, dgst, imagelabels.ImageRef, imagelabels.CRIImageRef)
	}
	var manifest digest.Digest
	if raw, ok := labels[imagelabels.CRIManifestDigest]; ok {
		if manifest, err = digest.Parse(raw); err != nil {
			return RemoteLayer{}, true, fmt.Errorf("%w: %s %q: %v", ErrBadLayerLabels, imagelabels.CRIManifestDigest, raw, err)
		}
	}
	table, tableOff, err := imagelabels.ParseRangeTable(labels[imagelabels.RangeTable], labels[imagelabels.RangeTableOffset], size)
	if err != nil {
		return RemoteLayer{}, true, fmt.Errorf("%w: blob %s: %w", ErrBadLayerLabels, dgst, err)
	}
	ipfsURL := labels[imagelabels.IPFSURL]
	if ipfsURL != "" {
		if _, err := ipfsnode.ParseURL(ipfsURL); err != nil {
			return RemoteLayer{}, true, fmt.Errorf("%w: blob %s: %s: %w", ErrBadLayerLabels, dgst, imagelabels.IPFSURL, err)
		}
	}
	return RemoteLayer{Ref: ref, Digest: dgst, Size: size, Manifest: manifest, RangeTable: table, RangeTableOffset: tableOff,
		IPFSURL: ipfsURL}, true, nil
}

// writeLayerRecord stores the blob of a lazy snapshot in its directory; the record's presence is
// what makes a snapshot lazy (labels can be changed through Update, the record cannot).
func writeLayerRecord(path string, layer RemoteLayer) error {
	data, err := json.Marshal(layer)
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o600)
}

// readLayerRecord returns the blob of a lazy snapshot; ok is false for any other snapshot.
func readLayerRecord(path string) (layer RemoteLayer, ok bool, err error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return RemoteLayer{}, false, nil
	}
	if err != nil {
		return RemoteLayer{}, false, err
	}
	if err := json.Unmarshal(data, &layer); err != nil {
		return RemoteLayer{}, false, fmt.Errorf("layer record %s: %w", path, err)
	}
	if err := layer.Digest.Validate(); err != nil {
		return RemoteLayer{}, false, fmt.Errorf("layer record %s: %w", path, err)
	}
	if layer.Manifest != "" {
		if err := layer.Manifest.Validate(); err != nil {
			return RemoteLayer{}, false, fmt.Errorf("layer record %s: manifest: %w", path, err)
		}
	}
	return layer, true, nil
}

// chainID is the tracestore key of a chain of remote layers, lowest first.
func chainID(layers []RemoteLayer) (digest.Digest, error) {
	blobs := make([]digest.Digest, len(layers))
	for i, l := range layers {
		blobs[i] = l.Digest
	}
	return tracestore.ChainID(blobs)
}

// commitMember is the one member of an overlaybd layer tar (tarblob), the layer file itself.
const commitMember = "overlaybd.commit"

// unpackedLayer recognizes an overlaybd layer that containerd unpacked into the active
// snapshot at dir like any tar layer: a client-side unpack (`ctr run` after a plain `ctr image
// pull`, or any pull without the layer annotations) passes the snapshotter no labels, and
// applies the layer tar, whose only member is the layer file. Such a directory holds nothing
// but overlaybd.commit, a valid overlaybd layer; its record names that file, so the layer is
// served from it, with no second download. ok is false for any other directory.
func unpackedLayer(dir string) (layer RemoteLayer, ok bool, err error) {
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 || entries[0].Name() != commitMember || !entries[0].Type().IsRegular() {
		return RemoteLayer{}, false, nil
	}
	path := filepath.Join(dir, commitMember)
	blob, err := layerblob.OpenFile(path)
	if err != nil {
		return RemoteLayer{}, false, nil // a file of that name that is no overlaybd layer
	}
	blob.Close()
	f, err := os.Open(path)
	if err != nil {
		return RemoteLayer{}, false, err
	}
	defer f.Close()
	digester := digest.Canonical.Digester()
	size, err := io.Copy(digester.Hash(), f)
	if err != nil {
		return RemoteLayer{}, false, fmt.Errorf("digest %s: %w", path, err)
	}
	return RemoteLayer{Path: path, Digest: digester.Digest(), Size: size}, true, nil
}
