// Package dedup measures how much of a set of container images is duplicate, at the layer,
// file and block level (DupHunter's question: registries hold far more duplicate files and
// blocks than layer sharing shows), for OCI tar layers and for overlaybd layers alike. It is
// a measuring box beside the read path of docs/DESIGN.md: it reads layer blobs through the
// layer formats (layerblob, zfile, lsmt) and never through bdd or the fetcher. `obd
// dedup-report` runs it over images in registries or OCI layouts.
//
// Every measure is over the bytes the images reference, an image's layers counted once per
// image: a level's unique bytes are what a store deduplicating at that level would keep.
//
//   - layer: distinct layers (by digest);
//   - file (OCI layers): distinct regular-file contents;
//   - 4 KiB block: distinct 4 KiB blocks, of file contents for OCI layers (each file cut from
//     its start) and of the virtual device's written data for overlaybd layers;
//   - ZFile block (overlaybd layers): distinct original ZFile blocks of the layer's payload.
package dedup

import (
	"archive/tar"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

	"github.com/obdproject/obd/layerblob"
)

// BlockSize is the small block of the block-level measure.
const BlockSize = 4096

// key identifies content: the first half of its SHA-256.
type key [16]byte

func sum(b []byte) key {
	s := sha256.Sum256(b)
	return key(s[:16])
}

// Level is one measure: the bytes referenced and the bytes left when identical units are kept
// once.
type Level struct {
	Total, Unique int64
}

// Dup is the share of Total that is duplicate, 0..1.
func (l Level) Dup() float64 {
	if l.Total == 0 {
		return 0
	}
	return 1 - float64(l.Unique)/float64(l.Total)
}

// counter accumulates one Level.
type counter struct {
	Level
	seen map[key]struct{}
}

func (c *counter) add(k key, n int64) {
	if c.seen == nil {
		c.seen = map[key]struct{}{}
	}
	c.Total += n
	if _, ok := c.seen[k]; !ok {
		c.seen[k] = struct{}{}
		c.Unique += n
	}
}

// Kind sums the layers of one format over a set of images.
type Kind struct {
	Layers, DistinctLayers int
	Stored                 Level // the blobs as the registry stores them (compressed), by layer
	Layer                  Level // content bytes, by layer
	File                   Level // OCI: regular-file contents
	Block                  Level // 4 KiB blocks
	ZFileBlock             Level // overlaybd: original ZFile blocks
}

// Report is the measure of a set of images.
type Report struct {
	Images   []string
	OCI, OBD Kind
}

// Measurer accumulates a report image by image, layer by layer. Layers seen before (same
// digest) are not read again: their units are counted again from what the first read kept.
type Measurer struct {
	images []string
	oci    kindCounter
	obd    kindCounter
	layers map[string]*layerUnits // by blob digest
}

type kindCounter struct {
	layers                             int
	stored, layer, file, block, zblock counter
}

// layerUnits are a layer's content units, kept to count a shared layer again.
type layerUnits struct {
	obd                 bool
	stored, content     int64
	files, blocks, zblk []unit
}

type unit struct {
	k key
	n int64
}

// NewMeasurer starts an empty report.
func NewMeasurer() *Measurer { return &Measurer{layers: map[string]*layerUnits{}} }

// Image records the name of an image whose layers follow.
func (m *Measurer) Image(name string) { m.images = append(m.images, name) }

// Seen reports whether the layer blob with this digest was measured already; if so, AddSeen
// counts it for the current image without reading it.
func (m *Measurer) Seen(digest string) bool { return m.layers[digest] != nil }

// AddSeen counts a layer measured before for the current image.
func (m *Measurer) AddSeen(digest string) {
	lu := m.layers[digest]
	m.count(digest, lu)
}

// AddTar measures an OCI layer: digest and stored size of its blob, and its uncompressed tar
// stream.
func (m *Measurer) AddTar(digest string, stored int64, r io.Reader) error {
	lu := &layerUnits{stored: stored}
	tr := tar.NewReader(r)
	buf := make([]byte, BlockSize)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("dedup: layer %s: %w", digest, err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		fh := sha256.New()
		var size int64
		for {
			n, err := io.ReadFull(tr, buf)
			if n > 0 {
				fh.Write(buf[:n])
				lu.blocks = append(lu.blocks, unit{sum(buf[:n]), int64(n)})
				size += int64(n)
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				break
			}
			if err != nil {
				return fmt.Errorf("dedup: layer %s: %s: %w", digest, h.Name, err)
			}
		}
		var k key
		copy(k[:], fh.Sum(nil))
		lu.files = append(lu.files, unit{k, size})
		lu.content += size
	}
	m.layers[digest] = lu
	m.count(digest, lu)
	return nil
}

// AddOverlaybd measures an overlaybd layer blob (layer tar, ZFile or plain LSMT) read from r.
func (m *Measurer) AddOverlaybd(digest string, r io.ReaderAt, size int64) error {
	b, err := layerblob.Inspect(r, size, digest)
	if err != nil {
		return fmt.Errorf("dedup: layer %s: %w", digest, err)
	}
	lu := &layerUnits{obd: true, stored: size}
	buf := make([]byte, BlockSize)
	for _, s := range b.Segments() {
		if s.Zeroed {
			continue
		}
		// lsmt segments count 512-byte sectors; blocks are cut at 4 KiB boundaries of the
		// device.
		off, end := int64(s.Offset)*512, int64(s.End())*512
		for off < end {
			n := min(end-off, BlockSize-off%BlockSize)
			if _, err := b.ReadAt(buf[:n], off); err != nil {
				return fmt.Errorf("dedup: layer %s: device offset %d: %w", digest, off, err)
			}
			lu.blocks = append(lu.blocks, unit{sum(buf[:n]), n})
			lu.content += n
			off += n
		}
	}
	if z := b.ZFile; z != nil {
		info := z.Info()
		zbuf := make([]byte, info.BlockSize)
		for off := int64(0); off < info.OriginalSize; off += int64(info.BlockSize) {
			n := min(int64(info.BlockSize), info.OriginalSize-off)
			if _, err := z.ReadAt(zbuf[:n], off); err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("dedup: layer %s: ZFile offset %d: %w", digest, off, err)
			}
			lu.zblk = append(lu.zblk, unit{sum(zbuf[:n]), n})
		}
	}
	m.layers[digest] = lu
	m.count(digest, lu)
	return nil
}

func (m *Measurer) count(digest string, lu *layerUnits) {
	kc := &m.oci
	if lu.obd {
		kc = &m.obd
	}
	kc.layers++
	dk := sum([]byte(digest))
	kc.stored.add(dk, lu.stored)
	kc.layer.add(dk, lu.content)
	for _, u := range lu.files {
		kc.file.add(u.k, u.n)
	}
	for _, u := range lu.blocks {
		kc.block.add(u.k, u.n)
	}
	for _, u := range lu.zblk {
		kc.zblock.add(u.k, u.n)
	}
}

// Report returns what was measured so far.
func (m *Measurer) Report() Report {
	kind := func(kc *kindCounter) Kind {
		return Kind{Layers: kc.layers, DistinctLayers: len(kc.stored.seen), Stored: kc.stored.Level, Layer: kc.layer.Level,
			File: kc.file.Level, Block: kc.block.Level, ZFileBlock: kc.zblock.Level}
	}
	return Report{Images: append([]string(nil), m.images...), OCI: kind(&m.oci), OBD: kind(&m.obd)}
}
