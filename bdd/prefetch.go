package bdd

import (
	"cmp"
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/obdproject/obd/blockdev"
	"github.com/obdproject/obd/ext4meta"
	"github.com/obdproject/obd/layerblob"
	"github.com/obdproject/obd/lsmt"
	"github.com/opencontainers/go-digest"
)

// A device with remote layers fetches ahead of its workload in two ways, both in the
// background and both reading the lower layers through their blobs' Prefetchers (so that
// they start no readahead and stay out of traces of the workload's own reads):
//
//   - right after attach it walks the ext4 metadata (ext4meta.Walk): inode tables,
//     directories and extent trees arrive in a few concurrent rounds instead of one
//     round trip per block a path lookup touches, much as an eStargz layer's table of
//     contents arrives with its mount;
//   - when a read of a regular file's data misses the cache, it fetches the rest of that
//     file (up to Cache.PrefetchFileMax), several pieces at once: a program that faults in
//     a page of a binary or library goes on to fault in many more, each otherwise a
//     round trip of its own.
const (
	filePieceSize   = 512 << 10 // device bytes per prefetch read of a file
	filePieceReads  = 4         // such reads in flight per device
	prefetchTimeout = 5 * time.Minute
)

// prefetcher is what a device's transports serve: its stack, plus the prefetching above.
type prefetcher struct {
	blockdev.Backend // the device's stack

	layers  []*openLayer
	names   []string
	blobs   []digest.Digest // of the remote layers
	maxFile int64
	walk    bool
	replays *replays
	log     *slog.Logger

	files   atomic.Pointer[ext4meta.Files] // set when the walk is done
	quiet   io.ReaderAt                    // the lower layers through their Prefetchers
	mu      sync.Mutex
	fetched map[int]bool      // files whose prefetch has started
	queue   []ext4meta.Extent // pieces of files waiting for a worker, in order
	workers bool              // the filePieceReads workers have started
	work    chan struct{}     // signalled when queue has pieces

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func (s *Server) newPrefetcher(d *device) *prefetcher {
	p := &prefetcher{
		Backend: d.stack, layers: d.layers, maxFile: int64(s.cfg.Cache.PrefetchFileMax), replays: s.replays,
		log: s.log.With("device", d.spec.ID), fetched: map[int]bool{}, work: make(chan struct{}, 1),
	}
	for i, l := range d.layers {
		if l.blob != nil {
			p.blobs = append(p.blobs, l.blob.Digest())
		}
		p.names = append(p.names, d.spec.Layers[i].Name())
	}
	p.walk = len(p.blobs) > 0 && s.cfg.Cache.PrefetchMetadata
	p.ctx, p.cancel = context.WithTimeout(context.Background(), prefetchTimeout)
	return p
}

// start begins the metadata walk, if the device has remote layers, it is enabled and no
// trace replay covers the device.
func (p *prefetcher) start() {
	if !p.walk {
		return
	}
	if !p.replays.register(p) {
		p.log.Info("metadata and file prefetch skipped: a trace replay covers the device")
		p.cancel()
		return
	}
	p.wg.Go(func() {
		start := time.Now()
		st, files, err := p.walkMetadataGuarded()
		switch {
		case p.ctx.Err() != nil:
		case errors.Is(err, ext4meta.ErrNotExt4):
			p.log.Info("metadata prefetch skipped: the device holds no ext4")
		case err != nil:
			p.log.Warn("metadata prefetch failed", "err", err)
		default:
			p.files.Store(files)
			p.log.Info("metadata prefetched", "took", time.Since(start), "bytes", st.Bytes, "reads", st.Reads,
				"inodes", st.Inodes, "dirs", st.Dirs, "files", files.Len(), "truncated", st.Truncated)
		}
	})
}

// yield stops fetching ahead because a trace replay now covers the device.
func (p *prefetcher) yield() {
	p.log.Info("metadata and file prefetch stopped: a trace replay covers the device")
	p.cancel()
}

// stop ends the prefetching and waits for the reads in flight.
func (p *prefetcher) stop() {
	p.replays.unregister(p)
	p.cancel()
	p.wg.Wait()
}

// walkMetadataGuarded is walkMetadata with a panic (the walk parses bytes of the image)
// turned into its error: the device goes on without prefetching.
func (p *prefetcher) walkMetadataGuarded() (st ext4meta.Stats, files *ext4meta.Files, err error) {
	defer blockdev.Recovered(&err, "metadata walk")
	return p.walkMetadata()
}

// walkMetadata opens the lower layers again over their blobs' Prefetchers (which reads
// only their cached indexes) and walks the ext4 on them.
func (p *prefetcher) walkMetadata() (ext4meta.Stats, *ext4meta.Files, error) {
	var lower []lsmt.Layer
	for i, l := range p.layers {
		if l.blob == nil || l.indexed {
			// An indexed layer's metadata is in memory; its map reads file data only.
			lower = append(lower, l.layers...)
			continue
		}
		f, err := layerblob.Open(l.blob.Prefetcher(), l.blob.Size(), p.names[i])
		if err != nil {
			return ext4meta.Stats{}, nil, err
		}
		lower = append(lower, f)
	}
	stack, err := lsmt.NewStack(lower, nil)
	if err != nil {
		return ext4meta.Stats{}, nil, err
	}
	p.quiet = stack
	return ext4meta.Walk(p.ctx, stack, ext4meta.Options{})
}

// ReadAt reads the stack and, when the read missed the cache, starts fetching the rest of
// the files it read.
func (p *prefetcher) ReadAt(b []byte, off int64) (int, error) {
	files := p.files.Load()
	if files == nil || p.maxFile <= 0 || p.ctx.Err() != nil {
		return p.Backend.ReadAt(b, off)
	}
	before := p.misses()
	n, err := p.Backend.ReadAt(b, off)
	if p.misses() != before {
		files.Owners(off, int64(len(b)), func(file int) { p.fetchFile(files, file, off) })
	}
	return n, err
}

// misses counts the reads of the remote layers that went to the registry so far.
func (p *prefetcher) misses() (n uint64) {
	for _, l := range p.layers {
		if l.blob != nil {
			n += l.blob.Stats().Misses
		}
	}
	return n
}

// fetchFile queues file's pieces to be read through the quiet stack, the pieces from at
// onward first (where the reader is heading). filePieceReads workers per device read the
// queue in order (started on first use: most devices never prefetch a file), however many
// pieces there are. The pieces are decoded and dropped: what matters is that their blocks
// are in the cache.
func (p *prefetcher) fetchFile(files *ext4meta.Files, file int, at int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fetched[file] || files.Size(file) > p.maxFile || p.ctx.Err() != nil {
		return
	}
	p.fetched[file] = true
	var pieces []ext4meta.Extent
	for _, e := range files.Extents(file) {
		for off := e.Off; off < e.End(); off += filePieceSize {
			pieces = append(pieces, ext4meta.Extent{Off: off, Len: min(filePieceSize, e.End()-off)})
		}
	}
	slices.SortStableFunc(pieces, func(a, b ext4meta.Extent) int {
		return cmp.Compare(boolInt(a.End() <= at), boolInt(b.End() <= at))
	})
	p.queue = append(p.queue, pieces...)
	if !p.workers {
		p.workers = true
		for range filePieceReads {
			p.wg.Go(p.readPieces)
		}
	}
	p.signal()
}

// signal wakes a worker waiting for pieces.
func (p *prefetcher) signal() {
	select {
	case p.work <- struct{}{}:
	default:
	}
}

// readPieces is a worker of fetchFile: it reads queued pieces until the prefetch ends.
func (p *prefetcher) readPieces() {
	var buf []byte
	for {
		p.mu.Lock()
		if len(p.queue) == 0 {
			p.mu.Unlock()
			select {
			case <-p.work:
				continue
			case <-p.ctx.Done():
				return
			}
		}
		piece := p.queue[0]
		p.queue = p.queue[1:]
		if len(p.queue) > 0 {
			p.signal()
		}
		p.mu.Unlock()
		if p.ctx.Err() != nil {
			return
		}
		if buf == nil {
			buf = make([]byte, filePieceSize)
		}
		if err := p.readPiece(buf[:piece.Len], piece.Off); errors.Is(err, blockdev.ErrPanic) {
			p.log.Error("file prefetch failed", "off", piece.Off, "err", err)
		} else if err != nil && p.ctx.Err() == nil {
			p.log.Debug("file prefetch failed", "off", piece.Off, "err", err)
		}
	}
}

// readPiece reads a piece of a file through the quiet stack; a panic becomes its error.
func (p *prefetcher) readPiece(buf []byte, off int64) (err error) {
	defer blockdev.Recovered(&err, "file prefetch")
	_, err = p.quiet.ReadAt(buf, off)
	return err
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
