// Package convert turns OCI images into overlaybd images (issue #6, docs/DESIGN.md
// "The write paths"). It sits before the read path: it produces the registry blobs
// that remotefetch, zfile and lsmt later read lazily.
//
// For each source layer, in order, the converter stacks the already converted
// layers (lsmt), adds a writable upper, exposes the stack as a block device
// (blockdev/fuseloop), mounts its ext4 (formatted on the first layer by
// ext4fs), applies the layer tar (tarapply), unmounts, normalizes the clock-
// and random-dependent ext4 fields (ext4fs), commits the upper with ZFile and
// wraps it in the layer tar (layerblob). Converted layers are cached by chain
// ID and options, so a chain converted before is reused.
//
// Nothing reaches the destination until every selected platform converted:
// then the layer blobs, configs and manifests are pushed and the tag is moved
// last. Sources and destinations are registries (containerd's resolver with
// hosts.toml and docker config.json, as remotefetch) or OCI layout
// directories ("oci:DIR[:TAG]").
package convert

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/platforms"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/imagelabels"
	"github.com/obdproject/obd/ipfsnode"
	"github.com/obdproject/obd/rangetable"
	"github.com/obdproject/obd/zfile"
)

// DefaultVirtualSize is the ext4 size of a converted image (64 GiB).
const DefaultVirtualSize = 64 << 30

// ErrAlreadyConverted is returned by Convert when the source already is an
// overlaybd image; nothing was done.
var ErrAlreadyConverted = errors.New("image is already an overlaybd image")

// Options configure a Converter.
type Options struct {
	Algorithm   zfile.Algorithm // ZFile codec; LZ4 when 0
	Level       int             // zstd level 1-22; zfile.DefaultZstdLevel when 0; LZ4 ignores it
	BlockSize   int             // ZFile block size; zfile.DefaultBlockSize when 0
	VirtualSize int64           // ext4 size; DefaultVirtualSize when 0
	// RangeChunk is the chunk size of the range table appended to each layer blob
	// (docs/FORMAT.md, "Range table"): rangetable.DefaultChunk when 0; < 0 writes no table,
	// as upstream and older obd do.
	RangeChunk int64
	// Platforms selects the platforms of a multi-platform source ("linux/amd64");
	// empty converts every platform.
	Platforms []string
	// WorkDir holds scratch space and the converted-layer cache (required).
	WorkDir  string
	Registry RegistryOptions
	// Progress is where progress bars go when it is a terminal; log lines otherwise.
	Progress *os.File
	Logger   *slog.Logger // slog.Default() when nil
	// BeforeTag, when set, runs once every blob and manifest of the converted image is at the
	// destination, before the destination's tag points at it (desc: the manifest or index
	// pushed). An error leaves the tag as it was and fails Convert. `obd convert
	// --record-trace` records the image's start here.
	BeforeTag func(ctx context.Context, desc ocispec.Descriptor) error
	// IPFS, when set, names each converted layer by its IPFS CID, as this kubo node computes
	// it (package ipfsnode): the ipfs://<CID> URL goes in the layer descriptor's urls (the
	// convention of nerdctl and stargz) and in its imagelabels.IPFSURL annotation, which
	// reaches the snapshotter and bdd. Nodes that hold the layer whole then serve it to their
	// peers. With IPFSPin this node stores the layers and serves them too; without, it only
	// computes the CIDs.
	IPFS    *ipfsnode.Client
	IPFSPin bool
}

// Converter converts images. It may be reused; converted layers are cached
// under Options.WorkDir.
type Converter struct {
	opts     Options
	log      *slog.Logger
	workDir  string // scratch
	cacheDir string
	platform platforms.MatchComparer // nil: all
}

// New checks opts and prepares the work directory.
func New(opts Options) (*Converter, error) {
	if opts.WorkDir == "" {
		return nil, errors.New("convert: a work directory is required")
	}
	if opts.Algorithm == 0 {
		opts.Algorithm = zfile.LZ4
	}
	if opts.BlockSize == 0 {
		opts.BlockSize = zfile.DefaultBlockSize
	}
	if opts.VirtualSize == 0 {
		opts.VirtualSize = DefaultVirtualSize
	}
	// A writer checks the codec options now rather than after the first layer.
	if opts.Algorithm != zfile.ZSTD {
		opts.Level = 0 // LZ4 has no levels: keep it out of the cache key
	}
	zw, err := zfile.NewWriter(io.Discard, zfile.Options{Algorithm: opts.Algorithm, Level: opts.Level, BlockSize: opts.BlockSize})
	if err != nil {
		return nil, fmt.Errorf("convert: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("convert: %w", err)
	}
	if opts.RangeChunk == 0 {
		opts.RangeChunk = rangetable.DefaultChunk
	}
	if opts.RangeChunk > 0 {
		if _, err := rangetable.NewBuilder(opts.RangeChunk); err != nil {
			return nil, fmt.Errorf("convert: %w", err)
		}
	}
	if opts.VirtualSize < 64<<20 || opts.VirtualSize%4096 != 0 {
		return nil, fmt.Errorf("convert: virtual size %d must be a multiple of 4096 and at least 64 MiB", opts.VirtualSize)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	c := &Converter{opts: opts, log: opts.Logger,
		workDir: filepath.Join(opts.WorkDir, "tmp"), cacheDir: filepath.Join(opts.WorkDir, "layers")}
	if len(opts.Platforms) > 0 {
		var ps []ocispec.Platform
		for _, s := range opts.Platforms {
			p, err := platforms.Parse(s)
			if err != nil {
				return nil, fmt.Errorf("convert: platform %q: %w", s, err)
			}
			ps = append(ps, p)
		}
		c.platform = platforms.Any(ps...)
	}
	for _, d := range []string{c.workDir, c.cacheDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("convert: %w", err)
		}
	}
	return c, nil
}

// Result describes a finished conversion.
type Result struct {
	Descriptor ocispec.Descriptor // the pushed manifest or index
	Layers     int                // layers converted (not from the cache)
	Reused     int                // layers taken from the cache
	LayerBytes int64              // size of all converted layer blobs, every platform
}

// pending is a blob or manifest to push once everything converted.
type pending struct {
	desc    ocispec.Descriptor
	body    []byte // in memory (manifests, configs) ...
	file    string // ... or a converted layer blob file ...
	fromSrc bool   // ... or copied from the source as it is
}

// run holds one conversion's state.
type run struct {
	c        *Converter
	src, dst store
	progress *progress
	pushes   []pending
	result   Result
}

// Convert converts the image at src and pushes the result to dst. Both are
// registry references or "oci:DIR[:TAG]". On error nothing was tagged at dst.
// An already converted source gives ErrAlreadyConverted.
func (c *Converter) Convert(ctx context.Context, src, dst string) (Result, error) {
	srcLoc, err := ParseLocation(src)
	if err != nil {
		return Result{}, err
	}
	dstLoc, err := ParseLocation(dst)
	if err != nil {
		return Result{}, err
	}
	r := &run{progress: newProgress(c.opts.Progress, c.log)}
	defer r.progress.wait()
	withLog := *c // this run logs where its progress display says
	withLog.log = r.progress.log
	r.c, c = &withLog, &withLog
	if r.src, err = openStore(ctx, srcLoc, c.opts.Registry); err != nil {
		return Result{}, err
	}
	if r.dst, err = openStore(ctx, dstLoc, c.opts.Registry); err != nil {
		return Result{}, err
	}
	root, err := r.src.resolve(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("convert: source %s: %w", srcLoc, err)
	}
	var out ocispec.Descriptor
	switch {
	case isIndex(root.MediaType):
		out, err = r.convertIndex(ctx, root)
	case isManifest(root.MediaType):
		out, err = r.convertManifest(ctx, root)
	default:
		err = fmt.Errorf("unsupported media type %q", root.MediaType)
	}
	if err != nil {
		if errors.Is(err, ErrAlreadyConverted) {
			c.log.Info("nothing to do: the source is already an overlaybd image", "src", srcLoc.String())
		}
		return Result{}, fmt.Errorf("convert %s: %w", srcLoc, err)
	}
	if err := r.pushAll(ctx, out); err != nil {
		var hookErr *beforeTagError
		if errors.As(err, &hookErr) {
			return Result{}, fmt.Errorf("convert: %s (%s, pushed, not tagged): %w", dstLoc, out.Digest, hookErr.err)
		}
		return Result{}, fmt.Errorf("convert: push to %s: %w", dstLoc, err)
	}
	r.result.Descriptor = out
	c.log.Info("converted", "src", srcLoc.String(), "dst", dstLoc.String(), "digest", out.Digest.String(),
		"layers", r.result.Layers, "reused", r.result.Reused)
	return r.result, nil
}

func (r *run) fetchJSON(ctx context.Context, desc ocispec.Descriptor, limit int64, v any) ([]byte, error) {
	if desc.Size > limit {
		return nil, fmt.Errorf("%s %s: size %d exceeds %d", desc.MediaType, desc.Digest, desc.Size, limit)
	}
	rc, err := r.src.fetch(ctx, desc)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := readJSON(rc, limit, desc.MediaType+" "+desc.Digest.String(), v)
	if err != nil {
		return nil, err
	}
	if got := digest.FromBytes(b); got != desc.Digest {
		return nil, fmt.Errorf("%s: content digest is %s", desc.Digest, got)
	}
	return b, nil
}

func (r *run) convertIndex(ctx context.Context, desc ocispec.Descriptor) (ocispec.Descriptor, error) {
	var idx ocispec.Index
	if _, err := r.fetchJSON(ctx, desc, maxManifestSize, &idx); err != nil {
		return desc, err
	}
	out := idx
	out.MediaType = ocispec.MediaTypeImageIndex
	out.Manifests = nil
	converted := 0
	for _, m := range idx.Manifests {
		if !isManifest(m.MediaType) {
			continue // attestations, nested indexes: not images to convert
		}
		if r.c.platform != nil && (m.Platform == nil || !r.c.platform.Match(*m.Platform)) {
			continue
		}
		nm, err := r.convertManifest(ctx, m)
		if errors.Is(err, ErrAlreadyConverted) {
			nm, err = m, nil
			converted++
		}
		if err != nil {
			return desc, fmt.Errorf("platform %s: %w", platformString(m.Platform), err)
		}
		nm.Platform = m.Platform
		out.Manifests = append(out.Manifests, nm)
	}
	if len(out.Manifests) == 0 {
		return desc, fmt.Errorf("no manifest matches platforms %v", r.c.opts.Platforms)
	}
	if converted == len(out.Manifests) {
		return desc, ErrAlreadyConverted
	}
	return r.addJSON(out.MediaType, out)
}

func platformString(p *ocispec.Platform) string {
	if p == nil {
		return "unknown"
	}
	return platforms.Format(*p)
}

// addJSON queues a manifest or config for pushing and returns its descriptor.
func (r *run) addJSON(mediaType string, v any) (ocispec.Descriptor, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	d := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(b), Size: int64(len(b))}
	r.pushes = append(r.pushes, pending{desc: d, body: b})
	return d, nil
}

func (r *run) convertManifest(ctx context.Context, desc ocispec.Descriptor) (ocispec.Descriptor, error) {
	var m ocispec.Manifest
	body, err := r.fetchJSON(ctx, desc, maxManifestSize, &m)
	if err != nil {
		return desc, err
	}
	if isConverted(m) {
		// Copied as it is should an index need it next to converted siblings.
		for _, l := range m.Layers {
			r.pushes = append(r.pushes, pending{desc: l, fromSrc: true})
		}
		r.pushes = append(r.pushes, pending{desc: m.Config, fromSrc: true}, pending{desc: desc, body: body})
		return desc, ErrAlreadyConverted
	}
	cfgBytes, err := r.fetchJSON(ctx, m.Config, maxConfigSize, new(map[string]json.RawMessage))
	if err != nil {
		return desc, fmt.Errorf("config: %w", err)
	}
	cfg, err := parseConfig(cfgBytes)
	if err != nil {
		return desc, err
	}
	if len(cfg.diffIDs) != len(m.Layers) {
		return desc, fmt.Errorf("config lists %d diff_ids for %d layers", len(cfg.diffIDs), len(m.Layers))
	}
	if len(m.Layers) > 255 {
		return desc, fmt.Errorf("%d layers: an overlaybd stack holds at most 255", len(m.Layers))
	}
	chains := chainIDs(cfg.diffIDs)
	var lowers []string
	var newLayers []ocispec.Descriptor
	var newDiffIDs []digest.Digest
	parentUUID := ""
	for i, l := range m.Layers {
		uuid := layerUUID(chains[i])
		blob, d, err := r.layer(ctx, l, cfg.diffIDs[i], chains[i], layerBuild{lowers: lowers, uuid: uuid, parentUUID: parentUUID, name: l.Digest.String()})
		if err == nil {
			d, err = r.nameIPFS(ctx, blob, d)
		}
		if err != nil {
			return desc, fmt.Errorf("layer %d (%s): %w", i+1, l.Digest, err)
		}
		lowers = append(lowers, blob)
		parentUUID = uuid
		newLayers = append(newLayers, d)
		newDiffIDs = append(newDiffIDs, d.Digest) // an uncompressed tar: digest = diff_id
		r.result.LayerBytes += d.Size
		r.pushes = append(r.pushes, pending{desc: d, file: blob})
	}
	newCfg, err := cfg.withDiffIDs(newDiffIDs)
	if err != nil {
		return desc, err
	}
	cfgDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(newCfg), Size: int64(len(newCfg))}
	r.pushes = append(r.pushes, pending{desc: cfgDesc, body: newCfg})
	out := ocispec.Manifest{
		MediaType:   ocispec.MediaTypeImageManifest,
		Config:      cfgDesc,
		Layers:      newLayers,
		Annotations: m.Annotations,
	}
	out.SchemaVersion = 2
	return r.addJSON(out.MediaType, out)
}

// layerUUID derives a layer's UUID from its chain ID, so the same chain always
// gives the same bytes.
func layerUUID(chain digest.Digest) string {
	h := sha256.Sum256([]byte("obd layer " + chain.String()))
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

// cacheKey names a converted layer: its chain and every option that changes
// the bytes.
func (c *Converter) cacheKey(chain digest.Digest) string {
	// times=tar names the inode time rules (docs/FORMAT.md, "The filesystem
	// inside"): layers cached under other rules are not reused.
	k := fmt.Sprintf("%s algo=%d bs=%d vsize=%d version=%s times=tar", chain, c.opts.Algorithm, c.opts.BlockSize, c.opts.VirtualSize, FormatVersion)
	if c.opts.Level != 0 && c.opts.Level != zfile.DefaultZstdLevel {
		k += fmt.Sprintf(" level=%d", c.opts.Level) // keys of default-level layers stay as they were
	}
	if c.opts.RangeChunk > 0 {
		k += fmt.Sprintf(" rangechunk=%d", c.opts.RangeChunk)
	}
	return digest.FromString(k).Encoded()
}

// layer returns the converted blob for one source layer, from the cache or by
// converting it.
func (r *run) layer(ctx context.Context, src ocispec.Descriptor, diffID, chain digest.Digest, b layerBuild) (string, ocispec.Descriptor, error) {
	dir := filepath.Join(r.c.cacheDir, r.c.cacheKey(chain))
	blob := filepath.Join(dir, "layer.tar")
	var d ocispec.Descriptor
	if meta, err := os.ReadFile(filepath.Join(dir, "descriptor.json")); err == nil && json.Unmarshal(meta, &d) == nil {
		if st, err := os.Stat(blob); err == nil && st.Size() == d.Size {
			r.result.Reused++
			r.c.log.Info("layer reused", "layer", src.Digest.String(), "chain", chain.String(), "blob", d.Digest.String())
			return blob, d, nil
		}
	}
	d, err := r.convertLayer(ctx, src, diffID, b, dir)
	if err != nil {
		return "", d, err
	}
	r.result.Layers++
	return blob, d, nil
}

// nameIPFS adds the converted layer blob at path to Options.IPFS, when set, and names it in
// d by the CID it got.
func (r *run) nameIPFS(ctx context.Context, path string, d ocispec.Descriptor) (ocispec.Descriptor, error) {
	if r.c.opts.IPFS == nil {
		return d, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return d, err
	}
	defer f.Close()
	cid, err := r.c.opts.IPFS.Add(ctx, f, r.c.opts.IPFSPin)
	if err != nil {
		return d, fmt.Errorf("IPFS: %w", err)
	}
	u := ipfsnode.Scheme + cid
	d.URLs = []string{u}
	d.Annotations = maps.Clone(d.Annotations)
	if d.Annotations == nil {
		d.Annotations = map[string]string{}
	}
	d.Annotations[imagelabels.IPFSURL] = u
	r.c.log.Info("layer named in IPFS", "blob", d.Digest.String(), "url", u, "pinned", r.c.opts.IPFSPin)
	return d, nil
}

func (r *run) convertLayer(ctx context.Context, src ocispec.Descriptor, diffID digest.Digest, b layerBuild, dir string) (ocispec.Descriptor, error) {
	rc, err := r.src.fetch(ctx, src)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer rc.Close()
	in, done := r.progress.track(rc, "apply "+shortDigest(src.Digest), src.Size)
	defer done()
	srcDigest := digest.Canonical.Digester()
	tarStream, closeTar, err := decompress(src.MediaType, io.TeeReader(in, srcDigest.Hash()))
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer closeTar()
	tarDigest := digest.Canonical.Digester()
	tarStream = io.TeeReader(tarStream, tarDigest.Hash())

	if err := os.MkdirAll(dir, 0o700); err != nil {
		return ocispec.Descriptor{}, err
	}
	tmp, err := os.CreateTemp(dir, ".layer-*")
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	outDigest := digest.Canonical.Digester()
	counted := &countingWriter{w: io.MultiWriter(tmp, outDigest.Hash())}
	var table *rangetable.Builder
	out := io.Writer(counted)
	if r.c.opts.RangeChunk > 0 {
		if table, err = rangetable.NewBuilder(r.c.opts.RangeChunk); err != nil {
			return ocispec.Descriptor{}, err
		}
		out = io.MultiWriter(counted, table)
	}
	st, err := r.c.buildLayer(ctx, b, tarStream, out)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	// The range table goes after the tar's end, where tar readers (upstream's too) do not
	// look; its digest goes in the descriptor's annotations.
	var tableDigest digest.Digest
	tableOffset := counted.n
	if table != nil {
		tbl := table.Table()
		if _, err := counted.Write(tbl); err != nil {
			return ocispec.Descriptor{}, err
		}
		tableDigest = digest.FromBytes(tbl)
	}
	// The tar ends before its stream does (padding, compression trailer): the
	// rest must be read for the digests.
	if _, err := io.Copy(io.Discard, tarStream); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("read to end: %w", err)
	}
	if got := tarDigest.Digest(); got != diffID {
		return ocispec.Descriptor{}, fmt.Errorf("uncompressed content is %s, the config says %s", got, diffID)
	}
	if got := srcDigest.Digest(); got != src.Digest {
		return ocispec.Descriptor{}, fmt.Errorf("blob content is %s", got)
	}
	if err := tmp.Sync(); err != nil {
		return ocispec.Descriptor{}, err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, "layer.tar")); err != nil {
		return ocispec.Descriptor{}, err
	}
	d := layerDescriptor(outDigest.Digest(), counted.n, tableDigest, tableOffset)
	meta, err := json.Marshal(d)
	if err != nil {
		return d, err
	}
	if err := writeFileAtomic(filepath.Join(dir, "descriptor.json"), bytes.NewReader(meta), ""); err != nil {
		return d, err
	}
	r.c.log.Info("layer converted", "layer", src.Digest.String(), "entries", st.Entries, "bytes", st.Bytes,
		"blob", d.Digest.String(), "size", d.Size)
	return d, nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func shortDigest(d digest.Digest) string {
	if e := d.Encoded(); len(e) > 12 {
		return e[:12]
	}
	return d.String()
}

// decompress returns the layer tar inside a blob of the given media type.
func decompress(mediaType string, r io.Reader) (io.Reader, func(), error) {
	switch {
	case strings.HasSuffix(mediaType, "+gzip") || mediaType == dockerLayerGzip || mediaType == dockerForeignGzip:
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, nil, fmt.Errorf("gzip: %w", err)
		}
		return zr, func() { zr.Close() }, nil
	case strings.HasSuffix(mediaType, "+zstd"):
		zr, err := zstd.NewReader(r)
		if err != nil {
			return nil, nil, fmt.Errorf("zstd: %w", err)
		}
		return zr, zr.Close, nil
	case mediaType == ocispec.MediaTypeImageLayer || mediaType == ocispec.MediaTypeImageLayerNonDistributable: //nolint:staticcheck // still found in images
		return r, func() {}, nil
	}
	return nil, nil, fmt.Errorf("unsupported layer media type %q", mediaType)
}

// pushAll pushes every queued blob and manifest in order (layers and configs
// before the manifests naming them), then tags root.
// beforeTagError is pushAll's error for a failed Options.BeforeTag.
type beforeTagError struct{ err error }

func (e *beforeTagError) Error() string { return e.err.Error() }
func (e *beforeTagError) Unwrap() error { return e.err }

func (r *run) pushAll(ctx context.Context, root ocispec.Descriptor) error {
	var rootBody []byte
	for _, p := range r.pushes {
		var in io.Reader
		switch {
		case p.fromSrc:
			rc, err := r.src.fetch(ctx, p.desc)
			if err != nil {
				return err
			}
			defer rc.Close()
			in = rc
		case p.file != "":
			f, err := os.Open(p.file)
			if err != nil {
				return err
			}
			defer f.Close()
			var done func()
			in, done = r.progress.track(f, "push "+shortDigest(p.desc.Digest), p.desc.Size)
			defer done()
		default:
			in = bytes.NewReader(p.body)
		}
		if p.desc.Digest == root.Digest {
			rootBody = p.body
		}
		if err := r.dst.push(ctx, p.desc, in); err != nil {
			return err
		}
	}
	if hook := r.c.opts.BeforeTag; hook != nil {
		if err := hook(ctx, root); err != nil {
			return &beforeTagError{err}
		}
	}
	return r.dst.tag(ctx, root, rootBody)
}
