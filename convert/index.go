package convert

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/convert/ext4fs"
	"github.com/obdproject/obd/convert/tarapply"
	"github.com/obdproject/obd/gzindex"
	"github.com/obdproject/obd/layerblob"
	"github.com/obdproject/obd/lsmt"
	"github.com/obdproject/obd/ociartifact"
	"github.com/obdproject/obd/ociindex"
	"github.com/obdproject/obd/rangetable"
	"github.com/obdproject/obd/zfile"
)

// IndexedLayer is the index of one source layer: three files in the work
// directory (kept until the Converter's work directory is removed).
type IndexedLayer struct {
	Source  ocispec.Descriptor // the unchanged layer blob
	GzIndex string             // gzindex encoding, then its range table
	// GzIndexTable is the digest of the range table at the end of the
	// GzIndex file, at GzIndexTableOffset (the index's own length).
	GzIndexTable       digest.Digest
	GzIndexTableOffset int64
	Meta               string // metadata layer: an overlaybd layer blob (tar-wrapped ZFile LSMT)
	Map                string // ociindex map encoding
	// MappedBytes is the file data the map sends to the tar stream: what the
	// metadata layer does not store.
	MappedBytes int64
}

// indexedLower is an indexed layer opened as the two lsmt layers it stacks as.
type indexedLower struct {
	meta, mapped lsmt.Layer
	close        func() error
}

// scannedFile is a regular file of a layer tar whose contents lie in one
// piece in the tar stream.
type scannedFile struct {
	off, size int64
}

// scanTar lists the regular files of a tar stream with the offset of their
// contents. A later entry at the same path drops an earlier one; sparse files
// are left out (their contents are not one piece of the stream).
func scanTar(r io.Reader) (map[string]scannedFile, error) {
	cr := &countingReader{r: r}
	tr := tar.NewReader(cr)
	files := map[string]scannedFile{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("tar: %w", err)
		}
		name := path.Clean("/" + h.Name)
		delete(files, name)
		if (h.Typeflag != tar.TypeReg && h.Typeflag != tar.TypeRegA) || h.Size == 0 || isSparse(h) {
			continue
		}
		if cr.n%512 != 0 {
			return nil, fmt.Errorf("tar: %s: contents at %d, not a 512-byte boundary", h.Name, cr.n)
		}
		files[name] = scannedFile{off: cr.n, size: h.Size}
	}
	// The stream goes on (padding, zero blocks): the caller's writer must not block.
	_, err := io.Copy(io.Discard, cr)
	return files, err
}

func isSparse(h *tar.Header) bool {
	if h.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// indexKind returns how a layer blob of mediaType is indexed.
func indexKind(mediaType string) (gzindex.Kind, error) {
	switch {
	case strings.HasSuffix(mediaType, "+gzip") || mediaType == dockerLayerGzip || mediaType == dockerForeignGzip:
		return gzindex.KindGzip, nil
	case mediaType == ocispec.MediaTypeImageLayer || mediaType == ocispec.MediaTypeImageLayerNonDistributable: //nolint:staticcheck // still found in images
		return gzindex.KindRaw, nil
	case strings.HasSuffix(mediaType, "+zstd"):
		return gzindex.KindZstd, nil
	}
	return 0, fmt.Errorf("layer media type %q cannot be indexed (gzip, zstd and uncompressed tars can)", mediaType)
}

// indexLayer indexes one layer whose blob is the local file blobPath: it
// builds the seek index while listing the tar's files, applies the tar to the
// stack of the lower indexed layers as convert does, records where the
// kernel put each file's blocks, and commits everything else as the metadata
// layer. The tar is read through the new seek index, which checks it.
func (c *Converter) indexLayer(ctx context.Context, src ocispec.Descriptor, blobPath string, diffID digest.Digest, lowers []indexedLower, b layerBuild, spacing int64, dir string) (IndexedLayer, error) {
	out := IndexedLayer{Source: src, GzIndex: filepath.Join(dir, "gzindex"), Meta: filepath.Join(dir, "meta.tar"), Map: filepath.Join(dir, "map")}
	kind, err := indexKind(src.MediaType)
	if err != nil {
		return out, err
	}
	blob, err := os.Open(blobPath)
	if err != nil {
		return out, err
	}
	defer blob.Close()

	start := time.Now()
	pr, pw := io.Pipe()
	scanned := make(chan error, 1)
	var files map[string]scannedFile
	go func() {
		var err error
		files, err = scanTar(pr)
		pr.CloseWithError(err)
		scanned <- err
	}()
	tarDigest := digest.Canonical.Digester()
	x, err := gzindex.Build(blob, gzindex.BuildOptions{Kind: kind, Spacing: spacing}, io.MultiWriter(pw, tarDigest.Hash()))
	pw.CloseWithError(err)
	if serr := <-scanned; err == nil && serr != nil {
		err = serr
	}
	if err != nil {
		return out, fmt.Errorf("index: %w", err)
	}
	if got := tarDigest.Digest(); got != diffID {
		return out, fmt.Errorf("uncompressed content is %s, the config says %s", got, diffID)
	}
	// The seek index carries a range table, as a converted layer does, so that
	// a node fetches its head first and each window only when a read needs it.
	enc := x.Encode()
	tb, err := rangetable.NewBuilder(rangetable.DefaultChunk)
	if err != nil {
		return out, err
	}
	tb.Write(enc)
	table := tb.Table()
	out.GzIndexTable, out.GzIndexTableOffset = digest.FromBytes(table), int64(len(enc))
	if err := writeFileAtomic(out.GzIndex, io.MultiReader(bytes.NewReader(enc), bytes.NewReader(table)), ""); err != nil {
		return out, err
	}
	stream := gzindex.NewReader(blob, x, gzindex.ReaderOptions{Name: src.Digest.String()})
	indexed := time.Now()

	vsize := c.opts.VirtualSize
	var layers []lsmt.Layer
	for _, l := range lowers {
		layers = append(layers, l.meta, l.mapped)
		vsize = l.meta.VirtualSize()
	}
	work, err := os.MkdirTemp(c.workDir, "index-")
	if err != nil {
		return out, err
	}
	defer os.RemoveAll(work)
	copts := lsmt.CreateOptions{VirtualSize: vsize, UUID: b.uuid, ParentUUID: b.parentUUID}
	upper, err := lsmt.Create(filepath.Join(work, "upper"), copts)
	if err != nil {
		return out, err
	}
	stack, err := lsmt.NewStack(layers, upper)
	if err != nil {
		upper.Close()
		return out, err
	}
	defer stack.Close()

	var extents []fileExtents
	err = c.onDevice(ctx, stack, work, len(lowers) == 0, b.uuid, func(mnt string) error {
		if _, err := tarapply.Apply(ctx, mnt, io.NewSectionReader(stream, 0, stream.Size()), applyOptions(stack.Size())); err != nil {
			return err
		}
		var err error
		extents, err = mappedExtents(mnt, files)
		return err
	})
	if err != nil {
		return out, err
	}
	if err := ext4fs.Normalize(stack); err != nil {
		return out, err
	}
	if err := stack.Sync(); err != nil {
		return out, err
	}
	free, err := ext4fs.FreeBlocks(stack)
	if err != nil {
		return out, err
	}
	m, mappedBlocks, err := buildMap(extents, x.Size, vsize)
	if err != nil {
		return out, err
	}
	out.MappedBytes = int64(len(mappedBlocks)) * 4096
	// The metadata layer keeps what the filesystem needs besides the mapped
	// file blocks; those it leaves as holes for the map above it.
	canon, err := canonicalize(upper, work, copts, func(off int64) bool { return free(off) || mappedBlocks[off] })
	if err != nil {
		return out, err
	}
	defer canon.Close()
	if err := writeFileAtomic(out.Map, strings.NewReader(string(ociindex.EncodeMap(m))), ""); err != nil {
		return out, err
	}
	metaFile, err := os.Create(out.Meta)
	if err != nil {
		return out, err
	}
	defer metaFile.Close()
	zopts := zfile.Options{Algorithm: c.opts.Algorithm, Level: c.opts.Level, BlockSize: c.opts.BlockSize}
	err = layerblob.Write(metaFile, layerblob.WriteOptions{ZFile: &zopts, Tar: true, TempDir: work}, func(w io.Writer) error {
		_, err := canon.Commit(w, lsmt.CommitOptions{UUID: b.uuid, ParentUUID: b.parentUUID})
		return err
	})
	if err != nil {
		return out, fmt.Errorf("commit metadata layer: %w", err)
	}
	if err := metaFile.Sync(); err != nil {
		return out, err
	}
	c.log.Debug("layer indexed", "layer", b.name, "index", indexed.Sub(start), "apply+commit", time.Since(indexed),
		"files", len(files), "mapped", out.MappedBytes)
	return out, nil
}

// openIndexedLower opens a layer indexLayer made, over its blob file.
func openIndexedLower(l IndexedLayer, blob io.ReaderAt) (indexedLower, error) {
	meta, err := os.Open(l.Meta)
	if err != nil {
		return indexedLower{}, err
	}
	fi, err := meta.Stat()
	if err != nil {
		meta.Close()
		return indexedLower{}, err
	}
	p := ociindex.Parts{Meta: meta, MetaSize: fi.Size(), Blob: blob, Name: l.Source.Digest.String(), GzIndexSize: l.GzIndexTableOffset}
	gz, err := os.Open(l.GzIndex)
	if err == nil {
		p.GzIndex = gz
		p.Map, err = os.ReadFile(l.Map)
	}
	closeAll := func() error { return errors.Join(meta.Close(), gz.Close()) }
	if err != nil {
		closeAll()
		return indexedLower{}, err
	}
	layers, err := ociindex.Open(p)
	if err != nil {
		closeAll()
		return indexedLower{}, err
	}
	return indexedLower{meta: layers[0], mapped: layers[1], close: closeAll}, nil
}

// fileExtents is where the kernel put a mapped file's blocks.
type fileExtents struct {
	file    scannedFile
	extents []extentMap
}

// mappedExtents asks the mounted filesystem where each scanned file's blocks
// are. A file whose extents cannot be mapped one to one onto its tar contents
// (inline, unwritten, another size than the tar says) is left out: its data
// then stays in the metadata layer.
func mappedExtents(mnt string, files map[string]scannedFile) ([]fileExtents, error) {
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	seen := map[uint64]bool{} // inodes: hard links map once
	var out []fileExtents
	for _, n := range names {
		sf := files[n]
		ext, ino, ok, err := fiemap(filepath.Join(mnt, n), sf.size)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", n, err)
		}
		if !ok || seen[ino] {
			continue
		}
		seen[ino] = true
		out = append(out, fileExtents{file: sf, extents: ext})
	}
	return out, nil
}

// buildMap turns file extents into the map's segments (file data to tar
// sectors, the rest of each file's last block zeroed) and the set of 4 KiB
// device blocks they cover.
func buildMap(files []fileExtents, streamSize, vsize int64) (ociindex.Map, map[int64]bool, error) {
	const sec = lsmt.SectorSize
	blocks := map[int64]bool{}
	var segs []lsmt.Segment
	add := func(dev, n, tarOff int64, zeroed bool) {
		for n > 0 {
			l := min(n, lsmt.MaxSegmentLength)
			s := lsmt.Segment{Offset: uint64(dev), Length: uint32(l), Zeroed: zeroed}
			if !zeroed {
				s.MOffset = uint64(tarOff)
				tarOff += l
			}
			segs = append(segs, s)
			dev += l
			n -= l
		}
	}
	for _, f := range files {
		dataSectors := (f.file.size + sec - 1) / sec
		for _, e := range f.extents {
			if e.physical%4096 != 0 || e.length%4096 != 0 || e.logical%4096 != 0 {
				return ociindex.Map{}, nil, fmt.Errorf("extent %+v not block aligned", e)
			}
			for b := e.physical; b < e.physical+e.length; b += 4096 {
				blocks[b] = true
			}
			first := e.logical / sec
			n := e.length / sec
			data := max(0, min(n, dataSectors-first))
			add(e.physical/sec, data, (f.file.off+e.logical)/sec, false)
			add(e.physical/sec+data, n-data, 0, true)
		}
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i].Offset < segs[j].Offset })
	// Merge neighbours contiguous on the disk and in the tar.
	merged := segs[:0]
	for _, s := range segs {
		if k := len(merged) - 1; k >= 0 {
			p := &merged[k]
			if p.End() == s.Offset && p.Zeroed == s.Zeroed && uint64(p.Length)+uint64(s.Length) <= lsmt.MaxSegmentLength &&
				(s.Zeroed || p.MOffset+uint64(p.Length) == s.MOffset) {
				p.Length += s.Length
				continue
			}
		}
		merged = append(merged, s)
	}
	m := ociindex.Map{StreamSize: streamSize, VirtualSize: vsize, Segments: merged}
	if _, err := m.Layer(nil, "map"); err != nil {
		return m, nil, fmt.Errorf("map: %w", err)
	}
	return m, blocks, nil
}

// IndexOptions configure Index.
type IndexOptions struct {
	// Spacing is the seek index's checkpoint spacing (0: gzindex.DefaultSpacing).
	Spacing int64
	// Push stores each image's index in the source's repository as an
	// artifact whose subject is the image's manifest (a registry source only).
	Push bool
}

// IndexedImage is the index of one platform manifest of the source.
type IndexedImage struct {
	Manifest ocispec.Descriptor // the source's platform manifest: the artifact's subject
	Platform *ocispec.Platform  // from the source's index, when it had one
	Layers   []IndexedLayer     // one per layer of the manifest, in order
	// Artifact is the pushed index artifact's manifest (IndexOptions.Push).
	Artifact ocispec.Descriptor
	// IndexBytes is the size of the index blobs (seek indexes, metadata
	// layers, maps) and the artifact manifest.
	IndexBytes int64
	// ReferrersTag is the referrers tag the push updated, for a registry
	// without the referrers API.
	ReferrersTag string
}

// IndexResult describes the indexes Index built.
type IndexResult struct {
	Images    []IndexedImage
	BlobBytes int64 // the indexed layer blobs, every platform
	Duration  time.Duration
}

// Index builds the lazy-start index of every selected platform manifest of
// the image at src (gzip or uncompressed layers), leaving the image as it is.
// The files it returns live under the Converter's work directory.
func (c *Converter) Index(ctx context.Context, src string, opts IndexOptions) (IndexResult, error) {
	start := time.Now()
	loc, err := ParseLocation(src)
	if err != nil {
		return IndexResult{}, err
	}
	r := &run{progress: newProgress(c.opts.Progress, c.log)}
	defer r.progress.wait()
	withLog := *c
	withLog.log = r.progress.log
	r.c, c = &withLog, &withLog
	if r.src, err = openStore(ctx, loc, c.opts.Registry); err != nil {
		return IndexResult{}, err
	}
	root, err := r.src.resolve(ctx)
	if err != nil {
		return IndexResult{}, fmt.Errorf("index: source %s: %w", loc, err)
	}
	var res IndexResult
	switch {
	case isIndex(root.MediaType):
		var idx ocispec.Index
		if _, err := r.fetchJSON(ctx, root, maxManifestSize, &idx); err != nil {
			return res, fmt.Errorf("index %s: %w", loc, err)
		}
		for _, m := range idx.Manifests {
			if !isManifest(m.MediaType) || (c.platform != nil && (m.Platform == nil || !c.platform.Match(*m.Platform))) {
				continue
			}
			img, err := r.indexManifest(ctx, m, opts)
			if err != nil {
				return res, fmt.Errorf("index %s: platform %s: %w", loc, platformString(m.Platform), err)
			}
			img.Platform = m.Platform
			res.Images = append(res.Images, img)
		}
		if len(res.Images) == 0 {
			return res, fmt.Errorf("index %s: no manifest matches platforms %v", loc, c.opts.Platforms)
		}
	case isManifest(root.MediaType):
		img, err := r.indexManifest(ctx, root, opts)
		if err != nil {
			return res, fmt.Errorf("index %s: %w", loc, err)
		}
		res.Images = append(res.Images, img)
	default:
		return res, fmt.Errorf("index %s: unsupported media type %q", loc, root.MediaType)
	}
	for i := range res.Images {
		img := &res.Images[i]
		for _, l := range img.Layers {
			res.BlobBytes += l.Source.Size
		}
		layers, manifest, err := artifactOf(*img, start)
		if err != nil {
			return res, err
		}
		img.Artifact = ociartifact.Descriptor(ocispec.MediaTypeImageManifest, manifest)
		img.IndexBytes = img.Artifact.Size
		for _, l := range layers {
			img.IndexBytes += l.GzIndex.Size + l.Meta.Size + l.Map.Size
		}
		if opts.Push {
			if err := r.pushIndex(ctx, img, layers, manifest, start); err != nil {
				return res, fmt.Errorf("index %s: push: %w", loc, err)
			}
		}
	}
	res.Duration = time.Since(start)
	return res, nil
}

// artifactOf describes an image's index files and returns its artifact
// manifest.
func artifactOf(img IndexedImage, created time.Time) ([]ociindex.Layer, []byte, error) {
	var layers []ociindex.Layer
	for _, l := range img.Layers {
		il := ociindex.Layer{Source: l.Source, GzIndexTable: l.GzIndexTable, GzIndexTableOffset: l.GzIndexTableOffset}
		for _, f := range []struct {
			path, mediaType string
			d               *ocispec.Descriptor
		}{{l.GzIndex, ociindex.MediaTypeGzIndex, &il.GzIndex}, {l.Meta, ociindex.MediaTypeMeta, &il.Meta}, {l.Map, ociindex.MediaTypeMap, &il.Map}} {
			d, err := fileDescriptor(f.path, f.mediaType)
			if err != nil {
				return nil, nil, err
			}
			*f.d = d
		}
		layers = append(layers, il)
	}
	manifest, err := ociindex.BuildManifest(img.Manifest, layers, created)
	return layers, manifest, err
}

func fileDescriptor(p, mediaType string) (ocispec.Descriptor, error) {
	f, err := os.Open(p)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer f.Close()
	dg := digest.Canonical.Digester()
	n, err := io.Copy(dg.Hash(), f)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	return ocispec.Descriptor{MediaType: mediaType, Digest: dg.Digest(), Size: n}, nil
}

// pushIndex pushes an image's index blobs, then its artifact manifest, and
// attaches it to the image's manifest.
func (r *run) pushIndex(ctx context.Context, img *IndexedImage, layers []ociindex.Layer, manifest []byte, created time.Time) error {
	rs, ok := r.src.(*registryStore)
	if !ok {
		return errors.New("an index is pushed to the image's registry repository; the source is not a registry")
	}
	repo, err := ociartifact.Repository(rs.ref)
	if err != nil {
		return err
	}
	pusher, err := rs.resolver.Pusher(ctx, repo)
	if err != nil {
		return err
	}
	if err := ociartifact.PushBytes(ctx, pusher, repo, ociartifact.EmptyConfig(), ocispec.DescriptorEmptyJSON.Data); err != nil {
		return err
	}
	for i, l := range layers {
		files := []string{img.Layers[i].GzIndex, img.Layers[i].Meta, img.Layers[i].Map}
		for k, d := range []ocispec.Descriptor{l.GzIndex, l.Meta, l.Map} {
			f, err := os.Open(files[k])
			if err != nil {
				return err
			}
			in, done := r.progress.track(f, "push "+shortDigest(d.Digest), d.Size)
			err = ociartifact.Push(ctx, pusher, repo, d, in)
			done()
			f.Close()
			if err != nil {
				return err
			}
		}
	}
	if err := ociartifact.PushBytes(ctx, pusher, repo, img.Artifact, manifest); err != nil {
		return err
	}
	// As a registry with the referrers API lists it: the artifact type and the manifest's
	// annotations (created: the newest index wins).
	attached := img.Artifact
	attached.ArtifactType = ociindex.ArtifactType
	attached.Annotations = map[string]string{ociindex.AnnotationCreated: created.UTC().Format(time.RFC3339)}
	tag, err := ociartifact.Attach(ctx, rs.resolver, repo, img.Manifest.Digest, attached)
	img.ReferrersTag = tag
	return err
}

func (r *run) indexManifest(ctx context.Context, desc ocispec.Descriptor, opts IndexOptions) (IndexedImage, error) {
	img := IndexedImage{Manifest: desc}
	var m ocispec.Manifest
	if _, err := r.fetchJSON(ctx, desc, maxManifestSize, &m); err != nil {
		return img, err
	}
	if isConverted(m) {
		return img, fmt.Errorf("%w: an overlaybd image needs no index", ErrAlreadyConverted)
	}
	cfgBytes, err := r.fetchJSON(ctx, m.Config, maxConfigSize, new(map[string]json.RawMessage))
	if err != nil {
		return img, fmt.Errorf("config: %w", err)
	}
	cfg, err := parseConfig(cfgBytes)
	if err != nil {
		return img, err
	}
	if len(cfg.diffIDs) != len(m.Layers) {
		return img, fmt.Errorf("config lists %d diff_ids for %d layers", len(cfg.diffIDs), len(m.Layers))
	}
	if 2*len(m.Layers) > lsmt.MaxLayers {
		return img, fmt.Errorf("%d layers: an indexed image stacks two per layer, at most %d", len(m.Layers), lsmt.MaxLayers)
	}
	blobs := filepath.Join(r.c.opts.WorkDir, "blobs")
	if err := os.MkdirAll(blobs, 0o700); err != nil {
		return img, err
	}
	chains := chainIDs(cfg.diffIDs)
	var lowers []indexedLower
	parentUUID := ""
	for i, l := range m.Layers {
		name := fmt.Sprintf("layer %d (%s)", i+1, l.Digest)
		if err := l.Digest.Validate(); err != nil || l.Size <= 0 {
			return img, fmt.Errorf("%s: bad descriptor", name)
		}
		blobPath, err := r.blobFile(ctx, l, blobs)
		if err != nil {
			return img, fmt.Errorf("%s: %w", name, err)
		}
		dir := filepath.Join(r.c.opts.WorkDir, "index", desc.Digest.Encoded(), strconv.Itoa(i))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return img, err
		}
		uuid := layerUUID(chains[i])
		b := layerBuild{uuid: uuid, parentUUID: parentUUID, name: l.Digest.String()}
		il, err := r.c.indexLayer(ctx, l, blobPath, cfg.diffIDs[i], lowers, b, opts.Spacing, dir)
		if err != nil {
			return img, fmt.Errorf("%s: %w", name, err)
		}
		f, err := os.Open(blobPath)
		if err != nil {
			return img, err
		}
		defer f.Close()
		lower, err := openIndexedLower(il, f)
		if err != nil {
			return img, fmt.Errorf("%s: %w", name, err)
		}
		defer lower.close()
		lowers = append(lowers, lower)
		parentUUID = uuid
		img.Layers = append(img.Layers, il)
		r.c.log.Info("layer indexed", "layer", l.Digest.String(), "blob", l.Size, "mapped", il.MappedBytes)
	}
	return img, nil
}

// blobFile fetches a layer blob to a file in dir, checking its digest.
func (r *run) blobFile(ctx context.Context, desc ocispec.Descriptor, dir string) (string, error) {
	p := filepath.Join(dir, desc.Digest.Encoded())
	if fi, err := os.Stat(p); err == nil && fi.Size() == desc.Size {
		return p, nil
	}
	rc, err := r.src.fetch(ctx, desc)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	in, done := r.progress.track(rc, "fetch "+shortDigest(desc.Digest), desc.Size)
	defer done()
	if err := writeFileAtomic(p, io.LimitReader(in, desc.Size), desc.Digest); err != nil {
		return "", err
	}
	if fi, err := os.Stat(p); err != nil || fi.Size() != desc.Size {
		os.Remove(p)
		return "", fmt.Errorf("blob %s: want %d bytes", desc.Digest, desc.Size)
	}
	return p, nil
}
