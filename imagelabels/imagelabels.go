// Package imagelabels names the annotation keys of an overlaybd layer descriptor in an image
// manifest and the snapshot labels containerd hands the snapshotter.
//
// It is the contract between the writers and the readers of an image (docs/FORMAT.md,
// "Annotations and labels"): convert puts the annotations on the layers it writes, ctr-plugin
// adds the image reference while it pulls, and containerd's unpacker passes every layer
// annotation under containerd.io/snapshot/ on to the snapshotter as a label of the same key,
// where snapshotter reads them. The layer keys are those of upstream's overlaybd snapshotter,
// so images converted by either pull with the other; OwnDevice is obd's own, a label that
// ctr-plugin's record-trace puts on its container's snapshot.
package imagelabels

import (
	"fmt"
	"strconv"

	"github.com/opencontainers/go-digest"
)

// Annotations on each overlaybd layer descriptor, which reach the snapshotter as labels.
const (
	// BlobDigest is the digest of the overlaybd layer blob; its presence marks a layer as one.
	BlobDigest = "containerd.io/snapshot/overlaybd/blob-digest"
	// BlobSize is the blob's size in bytes, in decimal.
	BlobSize = "containerd.io/snapshot/overlaybd/blob-size"
	// FSType is the filesystem inside the blob's block device ("ext4").
	FSType = "containerd.io/snapshot/overlaybd/blob-fs-type"
	// Version is the overlaybd format version the blob was written in.
	Version = "containerd.io/snapshot/overlaybd/version"
	// RangeTable is the digest of the blob's range table (package rangetable), which the
	// blob carries at RangeTableOffset, after the end of its tar. It is obd's own: upstream
	// ignores it. Pinned by the manifest, it lets a reader check each fetched range of the
	// blob before using it; a layer without it is verified only as a whole.
	RangeTable = "containerd.io/snapshot/obd/range-table"
	// RangeTableOffset is where in the blob the range table starts, in decimal: the table
	// covers the bytes before it and runs to the end of the blob.
	RangeTableOffset = "containerd.io/snapshot/obd/range-table-offset"
	// IPFSURL is the layer's ipfs://<CID> URL, the one its descriptor's urls name (the IPFS
	// image convention of nerdctl and stargz, package ipfsnode): containerd hands the
	// snapshotter annotations, not urls, so obd convert writes it in both. It is obd's own.
	IPFSURL = "containerd.io/snapshot/obd/ipfs-url"
)

// Labels that a pull adds to a layer for the snapshotter.
const (
	// ImageRef is the reference of the image a layer is pulled for (set by ctr-plugin's rpull);
	// it tells the snapshotter which repository holds the blob.
	ImageRef = "containerd.io/snapshot/image-ref"
	// CRIImageRef is the image reference nerdctl and CRI attach to layers for remote
	// snapshotters; used when ImageRef is absent (containerd's snapshotters.TargetRefLabel).
	CRIImageRef = "containerd.io/snapshot/cri.image-ref"
	// CRIImageLayers lists, on each layer containerd unpacks, the digests of that layer and of
	// those above it, comma-separated (containerd's snapshotters.TargetImageLayersLabel).
	CRIImageLayers = "containerd.io/snapshot/cri.image-layers"
	// CRIManifestDigest is the digest of the platform manifest a layer is pulled for
	// (containerd's snapshotters.TargetManifestDigestLabel, which nerdctl and CRI set; rpull
	// sets it too): the subject of the image's start-trace artifacts.
	CRIManifestDigest = "containerd.io/snapshot/cri.manifest-digest"
	// CRILayerDigest is the digest of the layer blob being unpacked (containerd's
	// snapshotters.TargetLayerDigestLabel, which nerdctl and CRI set): with CRIManifestDigest
	// it finds an ordinary OCI layer's lazy-start index.
	CRILayerDigest = "containerd.io/snapshot/cri.layer-digest"
)

// MaxBlobSize bounds the blob size an annotation, a label or a request to bdd may claim
// (1 TiB). Sizes come from outside (a manifest, containerd, a client) and size what bdd
// allocates for a blob before it reads a byte, so a larger claim is refused, not trusted.
const MaxBlobSize = 1 << 40

// ParseBlobSize parses a BlobSize value: a decimal size in (0, MaxBlobSize].
func ParseBlobSize(s string) (int64, error) {
	size, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s %q is not a decimal size", BlobSize, s)
	}
	if err := CheckBlobSize(size); err != nil {
		return 0, fmt.Errorf("%s: %w", BlobSize, err)
	}
	return size, nil
}

// CheckBlobSize says whether size is a blob size obd accepts: positive and at most
// MaxBlobSize.
func CheckBlobSize(size int64) error {
	if size <= 0 || size > MaxBlobSize {
		return fmt.Errorf("size %d is not in (0, %d]", size, int64(MaxBlobSize))
	}
	return nil
}

// Labels a client puts on a container's snapshot.
const (
	// OwnDevice, set to "true" on the active snapshot of a container on an overlaybd image,
	// gives that snapshot a device of its own rather than the image's shared one: a fresh page
	// cache, so that every read of the container's start reaches the device (and bdd's
	// traces), and a page trace of that start alone, which replaces the image's page trace
	// when the snapshot is removed. `ctr-obd record-trace` sets it.
	OwnDevice = "containerd.io/snapshot/overlaybd/own-device"
)

// ParseRangeTable parses the RangeTable and RangeTableOffset values of a blob of blobSize
// bytes: a digest, and an offset inside the blob. Both empty is a blob without a table (""
// and 0, no error); one without the other is an error.
func ParseRangeTable(table, offset string, blobSize int64) (digest.Digest, int64, error) {
	if table == "" && offset == "" {
		return "", 0, nil
	}
	d, err := digest.Parse(table)
	if err != nil {
		return "", 0, fmt.Errorf("%s %q: %w", RangeTable, table, err)
	}
	off, err := strconv.ParseInt(offset, 10, 64)
	if err != nil || off <= 0 || off >= blobSize {
		return "", 0, fmt.Errorf("%s %q is not an offset inside the %d-byte blob", RangeTableOffset, offset, blobSize)
	}
	return d, off, nil
}
