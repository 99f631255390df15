package ext4meta

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"golang.org/x/sync/errgroup"
)

// Options tune Walk. Zero values take the defaults.
type Options struct {
	// Concurrency is how many reads are in flight at once (default 8): a walk is a few
	// rounds of independent reads, and on a lazy device each costs a round trip.
	Concurrency int
	// MaxBytes bounds the device bytes read (default 128 MiB), so that a hostile or huge
	// filesystem cannot make a walk unbounded.
	MaxBytes int64
	// MaxRead is the largest single read in bytes (default 256 KiB); adjacent blocks are
	// read together up to it.
	MaxRead int64
}

func (o Options) withDefaults() Options {
	if o.Concurrency <= 0 {
		o.Concurrency = 8
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = 128 << 20
	}
	if o.MaxRead <= 0 {
		o.MaxRead = 256 << 10
	}
	return o
}

// Stats says what a Walk read.
type Stats struct {
	Reads     int   // ReadAt calls
	Bytes     int64 // device bytes read
	Inodes    int   // live inodes found in the inode tables
	Dirs      int   // directories among them
	Truncated bool  // MaxBytes was reached: some metadata was not read
}

// Inode fields and flags (fs/ext4/ext4.h struct ext4_inode).
const (
	modeTypeMask    = 0xF000
	modeDir         = 0x4000
	modeRegular     = 0x8000
	modeSymlink     = 0xA000
	flagExtents     = 0x80000
	flagInlineData  = 0x10000000
	extentMagic     = 0xF30A
	maxExtentDepth  = 5
	fastSymlinkMax  = 60 // a shorter target is stored in i_block itself
	uninitExtentLen = 32768
	iBlock          = 0x28
	iBlockSize      = 60
	maxFileExtents  = 4 << 20 // 64 MiB of Files at most, however hostile the filesystem
)

// Walk reads dev's ext4 metadata: superblock and group descriptors, the inode bitmap of each
// group with inodes in use, the inode table up to its last used inode, the extent tree
// blocks of every inode and the blocks of every directory and slow symlink (inodes without
// extents, ext2-style block maps, are not followed). Reads of one round are concurrent;
// there are as many rounds as the deepest extent tree plus three. The reads warm whatever
// caches lie below dev; on the way Walk also learns where each regular file's data lies
// (Files). It returns an error only when dev cannot be read or holds no ext4, and stops
// early when ctx ends.
func Walk(ctx context.Context, dev io.ReaderAt, opts Options) (Stats, *Files, error) {
	g, err := ReadGeometry(dev)
	if err != nil {
		return Stats{}, nil, err
	}
	w := &walker{dev: dev, g: g, opts: opts.withDefaults(), seen: map[int64]bool{}}
	w.stats.Reads, w.stats.Bytes = 2, SuperblockSize+int64(len(g.GDT))

	// Round 1: inode bitmaps say how far each group's inode table is in use.
	used := map[int64]int64{} // group → inodes in use at its table's start
	bitmapGroups := map[int64][]int64{}
	var bitmaps []extent
	for i := range g.Groups {
		gr := g.Group(i)
		if gr.Flags&GroupInodeUninit != 0 || gr.FreeInodes >= g.InodesPerGroup {
			continue
		}
		if w.add(&bitmaps, gr.InodeBitmap, 1) {
			bitmapGroups[gr.InodeBitmap] = append(bitmapGroups[gr.InodeBitmap], i)
		}
	}
	err = w.read(ctx, bitmaps, func(block int64, data []byte) {
		w.mu.Lock()
		defer w.mu.Unlock()
		for b := int64(0); b*g.BlockSize < int64(len(data)); b++ {
			n := lastSetBit(data[b*g.BlockSize:(b+1)*g.BlockSize], g.InodesPerGroup) + 1
			for _, grp := range bitmapGroups[block+b] {
				used[grp] = n
			}
		}
	})
	if err != nil {
		return w.stats, nil, err
	}

	// Round 2: the used part of every inode table; each live inode names its extent tree
	// blocks and, for directories and slow symlinks, its data blocks.
	var tables []extent
	for grp, n := range used {
		gr := g.Group(grp)
		if g.UnusedValid {
			n = min(n, g.InodesPerGroup-gr.ItableUnused)
		}
		if n > 0 {
			w.add(&tables, gr.InodeTable, (n*g.InodeSize+g.BlockSize-1)/g.BlockSize)
		}
	}
	var next level
	err = w.read(ctx, tables, func(_ int64, data []byte) {
		for off := int64(0); off+g.InodeSize <= int64(len(data)); off += g.InodeSize {
			w.inode(data[off:off+g.InodeSize], &next)
		}
	})
	if err != nil {
		return w.stats, nil, err
	}

	// Further rounds: extent tree blocks (parsed) together with data blocks (just read).
	for round := 0; round <= maxExtentDepth && len(next.nodes)+len(next.data) > 0; round++ {
		cur := next
		next = level{}
		all := append(slices.Clone(cur.nodes), cur.data...)
		err = w.read(ctx, all, func(block int64, data []byte) {
			for b := int64(0); b*g.BlockSize < int64(len(data)); b++ {
				if n, ok := cur.nodeAt[block+b]; ok {
					w.mu.Lock()
					w.extentNode(data[b*g.BlockSize:(b+1)*g.BlockSize], n, &next)
					w.mu.Unlock()
				}
			}
		})
		if err != nil {
			return w.stats, nil, err
		}
	}
	return w.stats, newFiles(w.fileSizes, w.fileExtents, g.BlockSize), nil
}

// extent is a run of blocks.
type extent struct{ block, count int64 }

// node is an extent tree block to parse: the depth its header must carry (-1: any, for the
// root in the inode), whether its leaves' data is to be read, and the regular file whose
// extents its leaves are (-1: none).
type node struct {
	depth    int
	wantData bool
	file     int
}

// level is what one round reads.
type level struct {
	nodes  []extent // one block each
	nodeAt map[int64]node
	data   []extent
}

type walker struct {
	dev  io.ReaderAt
	g    *Geometry
	opts Options

	mu          sync.Mutex
	stats       Stats
	planned     int64          // bytes queued so far, against MaxBytes
	seen        map[int64]bool // blocks queued for parsing, so shared or looping trees are read once
	fileSizes   []int64        // regular files found, by number
	fileExtents []fileExtent
}

// add appends the blocks [block, block+count) to exts if they lie inside the filesystem and
// the byte budget allows; it reports whether they were added. w.mu is held by the caller
// when other goroutines may add at the same time.
func (w *walker) add(exts *[]extent, block, count int64) bool {
	if !w.inside(block, count) {
		return false
	}
	if w.planned+count*w.g.BlockSize > w.opts.MaxBytes {
		w.stats.Truncated = true
		return false
	}
	w.planned += count * w.g.BlockSize
	*exts = append(*exts, extent{block, count})
	return true
}

// inside says whether [block, block+count) is a non-empty run of the filesystem's blocks
// past the superblock.
func (w *walker) inside(block, count int64) bool {
	return block > w.g.FirstDataBlock && count > 0 && block < w.g.Blocks && count <= w.g.Blocks-block
}

// inode queues what the inode b points at and notes a regular file's extents.
func (w *walker) inode(b []byte, next *level) {
	le := binary.LittleEndian
	mode, links := le.Uint16(b[0x0:]), le.Uint16(b[0x1A:])
	if mode == 0 || links == 0 {
		return
	}
	typ := mode & modeTypeMask
	size := int64(le.Uint32(b[0x4:])) | int64(le.Uint32(b[0x6C:]))<<32
	n := node{depth: -1, file: -1, wantData: typ == modeDir || (typ == modeSymlink && size >= fastSymlinkMax)}
	flags := le.Uint32(b[0x20:])
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stats.Inodes++
	switch typ {
	case modeDir:
		w.stats.Dirs++
	case modeRegular:
		if size > 0 && flags&flagExtents != 0 && flags&flagInlineData == 0 {
			n.file = len(w.fileSizes)
			w.fileSizes = append(w.fileSizes, size)
		}
	}
	if flags&flagExtents != 0 && flags&flagInlineData == 0 {
		w.extentNode(b[iBlock:iBlock+iBlockSize], n, next)
	}
}

// extentNode queues a node's children: data extents of a leaf (read when wanted, noted when
// they are a regular file's) or the child blocks of an index node. w.mu is held.
func (w *walker) extentNode(b []byte, n node, next *level) {
	le := binary.LittleEndian
	if len(b) < 12 || le.Uint16(b[0:]) != extentMagic {
		return
	}
	entries, d := int(le.Uint16(b[2:])), int(le.Uint16(b[6:]))
	if d > maxExtentDepth || (n.depth >= 0 && d != n.depth) {
		return
	}
	entries = min(entries, (len(b)-12)/12)
	for i := range entries {
		e := b[12+12*i : 24+12*i]
		if d == 0 {
			count := int64(le.Uint16(e[4:]))
			start := int64(le.Uint32(e[8:])) | int64(le.Uint16(e[6:]))<<32
			switch {
			case count == 0 || count > uninitExtentLen: // allocated but never written
			case n.file >= 0:
				// Blocks past the file's size hold nothing of it: a hostile inode may claim
				// a small size over huge extents.
				bs, logical := w.g.BlockSize, int64(le.Uint32(e[0:]))
				count = min(count, (w.fileSizes[n.file]+bs-1)/bs-logical)
				if count > 0 && w.inside(start, count) && len(w.fileExtents) < maxFileExtents {
					w.fileExtents = append(w.fileExtents, fileExtent{Extent{start * bs, count * bs}, int32(n.file)})
				}
			case n.wantData:
				w.add(&next.data, start, count)
			}
			continue
		}
		child := int64(le.Uint32(e[4:])) | int64(le.Uint16(e[8:]))<<32
		if w.seen[child] || !w.add(&next.nodes, child, 1) {
			continue
		}
		w.seen[child] = true
		if next.nodeAt == nil {
			next.nodeAt = map[int64]node{}
		}
		next.nodeAt[child] = node{depth: d - 1, wantData: n.wantData, file: n.file}
	}
}

// read reads exts, merged where adjacent and split at MaxRead, with Concurrency reads in
// flight; parse (if not nil) gets each read's first block and bytes.
func (w *walker) read(ctx context.Context, exts []extent, parse func(block int64, data []byte)) error {
	pieces := merge(exts, max(1, w.opts.MaxRead/w.g.BlockSize))
	grp, gctx := errgroup.WithContext(ctx)
	grp.SetLimit(w.opts.Concurrency)
	for _, p := range pieces {
		if gctx.Err() != nil {
			break
		}
		grp.Go(func() error {
			buf := make([]byte, p.count*w.g.BlockSize)
			off := p.block * w.g.BlockSize
			if n, err := w.dev.ReadAt(buf, off); err != nil && !(errors.Is(err, io.EOF) && n == len(buf)) {
				return fmt.Errorf("ext4meta: read %d bytes at %d: %w", len(buf), off, err)
			}
			w.mu.Lock()
			w.stats.Reads++
			w.stats.Bytes += int64(len(buf))
			w.mu.Unlock()
			if parse != nil {
				parse(p.block, buf)
			}
			return nil
		})
	}
	if err := grp.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}

// merge sorts exts and joins overlapping or touching runs, then cuts them into pieces of at
// most maxBlocks.
func merge(exts []extent, maxBlocks int64) []extent {
	slices.SortFunc(exts, func(a, b extent) int { return cmp.Compare(a.block, b.block) })
	var joined []extent
	for _, e := range exts {
		if n := len(joined); n > 0 && e.block <= joined[n-1].block+joined[n-1].count {
			joined[n-1].count = max(joined[n-1].count, e.block+e.count-joined[n-1].block)
			continue
		}
		joined = append(joined, e)
	}
	var out []extent
	for _, e := range joined {
		for e.count > 0 {
			n := min(e.count, maxBlocks)
			out = append(out, extent{e.block, n})
			e.block, e.count = e.block+n, e.count-n
		}
	}
	return out
}

// lastSetBit returns the highest bit set among the first n bits of bm, or -1.
func lastSetBit(bm []byte, n int64) int64 {
	n = min(n, int64(len(bm))*8)
	for i := (n - 1) / 8; i >= 0; i-- {
		v := bm[i]
		if i == (n-1)/8 && n%8 != 0 {
			v &= byte(1<<(n%8)) - 1
		}
		for bit := int64(7); bit >= 0; bit-- {
			if v&(1<<bit) != 0 {
				return i*8 + bit
			}
		}
	}
	return -1
}
