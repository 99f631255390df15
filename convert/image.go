package convert

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/imagelabels"
)

// FormatVersion is the overlaybd format version of the layers the converter writes: the
// value of their imagelabels.Version annotation.
const FormatVersion = "0.1.0"

// Docker media types the converter reads besides the OCI ones.
const (
	dockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	dockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	dockerLayerGzip    = "application/vnd.docker.image.rootfs.diff.tar.gzip"
	dockerForeignGzip  = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
)

// Limits on JSON documents read from a source: far above real images, far
// below what would hurt.
const (
	maxManifestSize = 4 << 20
	maxConfigSize   = 32 << 20
)

func isIndex(mt string) bool { return mt == ocispec.MediaTypeImageIndex || mt == dockerManifestList }

func isManifest(mt string) bool { return mt == ocispec.MediaTypeImageManifest || mt == dockerManifest }

// layerDescriptor describes a converted layer blob, whose range table (if table is not "")
// starts at tableOffset.
func layerDescriptor(d digest.Digest, size int64, table digest.Digest, tableOffset int64) ocispec.Descriptor {
	desc := ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageLayer,
		Digest:    d,
		Size:      size,
		Annotations: map[string]string{
			imagelabels.BlobDigest: d.String(),
			imagelabels.BlobSize:   strconv.FormatInt(size, 10),
			imagelabels.FSType:     "ext4",
			imagelabels.Version:    FormatVersion,
		},
	}
	if table != "" {
		desc.Annotations[imagelabels.RangeTable] = table.String()
		desc.Annotations[imagelabels.RangeTableOffset] = strconv.FormatInt(tableOffset, 10)
	}
	return desc
}

// isConverted reports whether every layer of m is already an overlaybd blob.
func isConverted(m ocispec.Manifest) bool {
	for _, l := range m.Layers {
		if l.Annotations[imagelabels.BlobDigest] == "" {
			return false
		}
	}
	return len(m.Layers) > 0
}

// chainIDs returns the OCI chain ID of every prefix of diffIDs
// (image-spec config.md: ChainID(L0|...|Ln) = sha256(ChainID(..Ln-1) + " " + DiffID(Ln))).
func chainIDs(diffIDs []digest.Digest) []digest.Digest {
	out := make([]digest.Digest, len(diffIDs))
	for i, d := range diffIDs {
		if i == 0 {
			out[i] = d
			continue
		}
		out[i] = digest.FromString(out[i-1].String() + " " + d.String())
	}
	return out
}

// imageConfig is the part of an image config the converter reads; the rest
// is carried over byte for byte.
type imageConfig struct {
	raw     map[string]json.RawMessage
	diffIDs []digest.Digest
}

func parseConfig(b []byte) (imageConfig, error) {
	var c imageConfig
	if err := json.Unmarshal(b, &c.raw); err != nil {
		return c, fmt.Errorf("image config: %w", err)
	}
	var rootfs ocispec.RootFS
	if r, ok := c.raw["rootfs"]; ok {
		if err := json.Unmarshal(r, &rootfs); err != nil {
			return c, fmt.Errorf("image config rootfs: %w", err)
		}
	}
	for _, d := range rootfs.DiffIDs {
		if err := d.Validate(); err != nil {
			return c, fmt.Errorf("image config diff_id %q: %w", d, err)
		}
	}
	c.diffIDs = rootfs.DiffIDs
	return c, nil
}

// withDiffIDs returns the config with rootfs.diff_ids replaced; every other
// field (history, entrypoint, labels, ...) is kept.
func (c imageConfig) withDiffIDs(ids []digest.Digest) ([]byte, error) {
	out := make(map[string]json.RawMessage, len(c.raw)+1)
	for k, v := range c.raw {
		out[k] = v
	}
	rootfs, err := json.Marshal(ocispec.RootFS{Type: "layers", DiffIDs: ids})
	if err != nil {
		return nil, err
	}
	out["rootfs"] = rootfs
	return json.Marshal(out) // map keys are sorted: deterministic
}

// readJSON reads at most limit bytes of a document and decodes it into v.
func readJSON(r io.Reader, limit int64, what string, v any) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", what, limit)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return b, nil
}
