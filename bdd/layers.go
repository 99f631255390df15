package bdd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/obdproject/obd/gzindex"
	"github.com/obdproject/obd/ipfsnode"
	"github.com/obdproject/obd/layerblob"
	"github.com/obdproject/obd/lsmt"
	"github.com/obdproject/obd/ociindex"
	"github.com/obdproject/obd/remotefetch"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"
)

// openLayer is one opened lower layer, shared by every device that stacks it.
type openLayer struct {
	key  layerKey
	refs int // guarded by layerPool.mu
	// layers are what the layer stacks as: one file, or for an indexed OCI layer its
	// metadata layer and its map over the tar stream.
	layers []lsmt.Layer
	// indexed is set for an indexed OCI layer: blob is the unchanged OCI blob, read through
	// the seek index, and the layer cannot be reopened over blob.Prefetcher with layerblob.
	indexed bool
	// source is the layer file or remote blob under file.
	source io.Closer
	// blob is set for remote layers; its counters feed Stats.
	blob *remotefetch.Blob
	// index is an indexed layer's seek index blob, read in pieces beside blob, and seek the
	// seek index it holds.
	index *remotefetch.Blob
	seek  *gzindex.Index
	// opening are the ranges of blob that opening the layer read (offset, length).
	opening [][2]int64
}

// retrace enters the reads that opened l into a running trace: a device that stacks a layer
// already open does not read them again, but the same start on a node where the layer is not
// open does, and a trace must not depend on which node recorded it.
func (l *openLayer) retrace() {
	if l.blob == nil {
		return
	}
	for _, r := range l.opening {
		l.blob.RecordRead(r[0], r[1])
	}
}

// maxOpeningReads bounds the ranges an opening layer has noted: a well-formed layer opens in a
// handful (tar header, ZFile header, trailer and jump table, LSMT index; a table read in
// pieces is one range).
const maxOpeningReads = 256

// openingReads is a remote layer's reader that notes the ranges read while the layer opens.
// It stays under the opened layer, passing reads through.
type openingReads struct {
	r       io.ReaderAt
	opening atomic.Bool
	mu      sync.Mutex
	ranges  [][2]int64
}

func (o *openingReads) ReadAt(p []byte, off int64) (int, error) {
	if o.opening.Load() {
		o.mu.Lock()
		n := len(o.ranges)
		switch {
		case n > 0 && o.ranges[n-1][0]+o.ranges[n-1][1] == off: // a table read in pieces
			o.ranges[n-1][1] += int64(len(p))
		case n < maxOpeningReads:
			o.ranges = append(o.ranges, [2]int64{off, int64(len(p))})
		}
		o.mu.Unlock()
	}
	return o.r.ReadAt(p, off)
}

// opened stops noting reads and returns those noted.
func (o *openingReads) opened() [][2]int64 {
	o.opening.Store(false)
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.ranges
}

// layerKey identifies a layer's content: a remote blob by digest, what its bytes are checked
// against (its range table) and the repository they come from, as remotefetch shares its
// blobs (a registry that serves wrong bytes then fails only its own images' reads); a local
// file by its inode and change time (so a file replaced at the same path is opened anew).
type layerKey struct {
	digest        string
	table         string // range table digest and offset
	repo          string // the blob's repository
	dev, ino      uint64
	size, ctimeNs int64
}

// layerPool opens each lower layer once, however many devices stack it, so its
// index and jump table are in memory once. Layers are safe for concurrent reads.
type layerPool struct {
	fetcher *remotefetch.Fetcher

	mu     sync.Mutex
	layers map[layerKey]*openLayer
}

func newLayerPool(fetcher *remotefetch.Fetcher) *layerPool {
	return &layerPool{fetcher: fetcher, layers: map[layerKey]*openLayer{}}
}

func localKey(path string) (layerKey, error) {
	st, err := os.Stat(path)
	if err != nil {
		return layerKey{}, err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok || !st.Mode().IsRegular() {
		return layerKey{}, fmt.Errorf("%w: %s is not a regular file", ErrInvalidRequest, path)
	}
	return layerKey{dev: sys.Dev, ino: sys.Ino, size: st.Size(), ctimeNs: sys.Ctim.Nano()}, nil
}

// acquire returns the opened layer of ls, opening it on first use. Each acquire
// needs one release.
func (p *layerPool) acquire(ctx context.Context, ls LayerSpec) (*openLayer, error) {
	key := layerKey{digest: ls.Digest, repo: ls.Ref}
	if ls.RangeTable != "" {
		key.table = fmt.Sprintf("%s@%d", ls.RangeTable, ls.RangeTableOffset)
	}
	if ix := ls.Indexed; ix != nil {
		key.table = "indexed " + ix.GzIndex.Digest + " " + ix.Meta.Digest + " " + ix.Map.Digest
	}
	if ls.Path != "" {
		var err error
		if key, err = localKey(ls.Path); err != nil {
			return nil, err
		}
	}
	p.mu.Lock()
	if l := p.layers[key]; l != nil {
		l.refs++
		p.mu.Unlock()
		l.retrace()
		return l, nil
	}
	p.mu.Unlock()

	// Opening may read from a registry, so it runs unlocked; a concurrent open of the
	// same layer is resolved below by keeping the first.
	l, err := p.open(ctx, ls)
	if err != nil {
		return nil, err
	}
	l.key, l.refs = key, 1
	p.mu.Lock()
	defer p.mu.Unlock()
	if first := p.layers[key]; first != nil {
		first.refs++
		return first, l.source.Close()
	}
	p.layers[key] = l
	return l, nil
}

func (p *layerPool) open(ctx context.Context, ls LayerSpec) (*openLayer, error) {
	if ls.Path != "" {
		b, err := layerblob.OpenFile(ls.Path)
		if err != nil {
			return nil, err
		}
		return &openLayer{layers: []lsmt.Layer{b.File}, source: b}, nil
	}
	if ls.Indexed != nil {
		return p.openIndexed(ctx, ls)
	}
	blob, err := p.fetcher.Open(ctx, ls.Ref, digest.Digest(ls.Digest), ls.Size, blobOptions(ls)...)
	if err != nil {
		return nil, err
	}
	reads := &openingReads{r: blob}
	reads.opening.Store(true)
	f, err := layerblob.Open(reads, blob.Size(), ls.Name())
	if err != nil {
		return nil, errors.Join(err, blob.Close())
	}
	return &openLayer{layers: []lsmt.Layer{f}, source: blob, blob: blob, opening: reads.opened()}, nil
}

// blobOptions are the fetcher's options for the registry blob of ls. Its URLs were checked
// when the layer came in (bddclient.CheckLayer).
func blobOptions(ls LayerSpec) []remotefetch.OpenOption {
	if ls.RangeTable == "" {
		return nil
	}
	opts := []remotefetch.OpenOption{remotefetch.WithRangeTable(digest.Digest(ls.RangeTable), ls.RangeTableOffset)}
	if cid, err := ipfsnode.FromURLs(ls.URLs); err == nil && cid != "" {
		opts = append(opts, remotefetch.WithIPFS(cid))
	}
	return opts
}

// maxWholeMeta bounds the metadata layer of an indexed layer, which is fetched whole and
// kept in memory: an image's ext4 metadata, ZFile-compressed, is a few MiB.
const maxWholeMeta = 512 << 20

// openIndexed opens an indexed OCI layer: its map and metadata layer are fetched whole and
// checked against their digests; the seek index is read in pieces, its head (span records
// and the layer blob's range table) now and each window when a read needs it, every piece
// checked against the index's range table; the layer blob itself is read lazily, each chunk
// checked against the seek index's table of it.
func (p *layerPool) openIndexed(ctx context.Context, ls LayerSpec) (*openLayer, error) {
	ix := ls.Indexed
	// The blobs are fetched and opened at once: each is a round trip to the registry.
	var mp, meta []byte
	var gz *remotefetch.Blob
	var g errgroup.Group
	for _, part := range []struct {
		name  string
		ref   BlobRef
		limit int64
		dst   *[]byte
	}{{"map", ix.Map, ociindex.MaxMapBytes, &mp}, {"metadata layer", ix.Meta, maxWholeMeta, &meta}} {
		g.Go(func() error {
			data, err := p.fetchWhole(ctx, ls.Ref, part.ref, part.limit)
			if err != nil {
				return fmt.Errorf("indexed layer %s: %s: %w", ls.Name(), part.name, err)
			}
			*part.dst = data
			return nil
		})
	}
	// The seek index is read quietly: a trace names the image's layer blobs alone (a
	// registry trace may name nothing else). A replay of a trace fetches the windows its
	// blob ranges need beside them (Server.warmSeekIndexes). Its head is read here, beside
	// the other blobs.
	var seek *gzindex.Index
	g.Go(func() error {
		b, err := p.openSeekIndex(ctx, ls)
		if err != nil {
			return fmt.Errorf("indexed layer %s: seek index: %w", ls.Name(), err)
		}
		gz = b
		if seek, err = gzindex.Open(b.Prefetcher(), ix.GzIndex.RangeTableOffset, ls.Name()+" seek index"); err != nil {
			return fmt.Errorf("%w: indexed layer %s: %w", ErrInvalidRequest, ls.Name(), err)
		}
		return nil
	})
	err := g.Wait()
	if err != nil {
		if gz != nil {
			err = errors.Join(err, gz.Close())
		}
		return nil, err
	}
	blob, err := p.fetcher.Open(ctx, ls.Ref, digest.Digest(ls.Digest), ls.Size, remotefetch.WithCallerChecks())
	if err != nil {
		return nil, errors.Join(err, gz.Close())
	}
	layers, seek, err := ociindex.OpenIndexed(ociindex.Parts{Meta: bytes.NewReader(meta), MetaSize: int64(len(meta)),
		Seek: seek, Map: mp, Blob: blob, Name: ls.Name()})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("%w: %w", ErrInvalidRequest, err), blob.Close(), gz.Close())
	}
	return &openLayer{layers: layers, indexed: true, source: multiCloser{blob, gz}, blob: blob, index: gz, seek: seek}, nil
}

// openSeekIndex opens the seek index blob of an indexed layer for reads in pieces, checked
// against its range table.
func (p *layerPool) openSeekIndex(ctx context.Context, ls LayerSpec) (*remotefetch.Blob, error) {
	b := ls.Indexed.GzIndex
	d, err := digest.Parse(b.Digest)
	if err != nil {
		return nil, fmt.Errorf("%w: digest %q: %v", ErrInvalidRequest, b.Digest, err)
	}
	if b.Size <= 0 || b.Size > ociindex.MaxGzIndexBytes || b.RangeTable == "" {
		return nil, fmt.Errorf("%w: blob %s of %d bytes (1 to %d) with range table %q", ErrInvalidRequest, d, b.Size, ociindex.MaxGzIndexBytes, b.RangeTable)
	}
	return p.fetcher.Open(ctx, ls.Ref, d, b.Size, remotefetch.WithRangeTable(digest.Digest(b.RangeTable), b.RangeTableOffset))
}

// seekIndex returns the seek index, and the blob holding it, of an open indexed layer whose
// layer blob is d; nil if none is open.
func (p *layerPool) seekIndex(d digest.Digest) (*gzindex.Index, *remotefetch.Blob) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, l := range p.layers {
		if l.seek != nil && k.digest == d.String() {
			return l.seek, l.index
		}
	}
	return nil, nil
}

// multiCloser closes each of its parts.
type multiCloser []io.Closer

func (m multiCloser) Close() error {
	var errs []error
	for _, c := range m {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// fetchWhole reads a small blob of repository ref whole, outside traces, and checks it
// against its digest.
func (p *layerPool) fetchWhole(ctx context.Context, ref string, b BlobRef, limit int64) ([]byte, error) {
	d, err := digest.Parse(b.Digest)
	if err != nil {
		return nil, fmt.Errorf("%w: digest %q: %v", ErrInvalidRequest, b.Digest, err)
	}
	if b.Size <= 0 || b.Size > limit {
		return nil, fmt.Errorf("%w: blob %s of %d bytes (1 to %d)", ErrInvalidRequest, d, b.Size, limit)
	}
	blob, err := p.fetcher.Open(ctx, ref, d, b.Size, remotefetch.WithCallerChecks())
	if err != nil {
		return nil, err
	}
	defer blob.Close()
	data := make([]byte, b.Size)
	if n, err := blob.Prefetcher().ReadAt(data, 0); n != len(data) {
		return nil, fmt.Errorf("read blob %s: %d of %d bytes: %w", d, n, b.Size, err)
	}
	if got := d.Algorithm().FromBytes(data); got != d {
		return nil, fmt.Errorf("%w: blob %s has digest %s", ErrInvalidRequest, d, got)
	}
	return data, nil
}

// virtualSize is the disk size of the layer (of its top part, for an indexed layer).
func (l *openLayer) virtualSize() int64 { return l.layers[len(l.layers)-1].VirtualSize() }

// release drops one use of each layer and closes those no device uses any more.
func (p *layerPool) release(layers []*openLayer) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for _, l := range layers {
		l.refs--
		if l.refs == 0 {
			delete(p.layers, l.key)
			errs = append(errs, l.source.Close())
		}
	}
	return errors.Join(errs...)
}
