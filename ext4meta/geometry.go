// Package ext4meta knows where an ext4 filesystem keeps its metadata and reads it through an
// io.ReaderAt: the superblock and group descriptors (Geometry), and, with Walk, the inode
// bitmaps, the used part of every inode table, extent tree blocks and the blocks of every
// directory and slow symlink.
//
// It sits beside the read path of docs/DESIGN.md, on top of a block device's lsmt.Stack: bdd walks
// a freshly attached lazy device so that the first path lookups and stat calls of a container
// find their blocks already fetched, instead of paying one registry round trip per inode
// table block and directory block. It is the block-level counterpart of the table of
// contents an eStargz layer carries. The converter (convert/ext4fs) uses Geometry too.
//
// Everything read is untrusted: bad fields end the walk of that structure, never the process.
package ext4meta

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// ErrNotExt4 reports a device that holds no ext4 filesystem ext4meta can read.
var ErrNotExt4 = errors.New("ext4meta: not an ext4 filesystem")

// Superblock and group descriptor layout (Linux fs/ext4/ext4.h).
const (
	SuperblockOffset = 1024
	SuperblockSize   = 1024
	superMagic       = 0xEF53
	incompat64bit    = 0x80
	roCompatGDTCsum  = 0x10
	roCompatMetaCsum = 0x400

	// Group descriptor flags.
	GroupInodeUninit = 0x1 // inode table and bitmap not initialized
	GroupBlockUninit = 0x2 // block bitmap not initialized

	maxGDTBytes = 16 << 20 // 256Ki groups of 64 bytes: a 32 TiB filesystem of 4 KiB blocks
)

// Geometry is a filesystem's superblock fields that locate everything else, plus its group
// descriptor table.
type Geometry struct {
	Superblock     []byte // the SuperblockSize bytes at SuperblockOffset
	BlockSize      int64
	FirstDataBlock int64
	BlocksPerGroup int64
	InodesPerGroup int64
	InodeSize      int64
	DescSize       int64
	Groups         int64
	Blocks         int64 // blocks in the filesystem
	GDT            []byte
	// UnusedValid says the descriptors' unused-inode counts are maintained (gdt_csum or
	// metadata_csum), so that a table's tail past them is known to be free.
	UnusedValid bool
}

// Group is one block group's descriptor.
type Group struct {
	Flags        uint16
	BlockBitmap  int64 // block numbers
	InodeBitmap  int64
	InodeTable   int64
	FreeInodes   int64
	ItableUnused int64 // inodes at the table's end never used; see Geometry.UnusedValid
}

// ReadGeometry reads and checks the superblock and the group descriptor table of dev.
func ReadGeometry(dev io.ReaderAt) (*Geometry, error) {
	sb := make([]byte, SuperblockSize)
	if _, err := dev.ReadAt(sb, SuperblockOffset); err != nil {
		return nil, fmt.Errorf("ext4meta: read superblock: %w", err)
	}
	le := binary.LittleEndian
	if le.Uint16(sb[0x38:]) != superMagic {
		return nil, ErrNotExt4
	}
	logBlock := le.Uint32(sb[0x18:])
	if logBlock > 6 {
		return nil, fmt.Errorf("%w: block size 2^%d KiB", ErrNotExt4, logBlock)
	}
	g := &Geometry{
		Superblock:     sb,
		BlockSize:      int64(1024) << logBlock,
		FirstDataBlock: int64(le.Uint32(sb[0x14:])),
		BlocksPerGroup: int64(le.Uint32(sb[0x20:])),
		InodesPerGroup: int64(le.Uint32(sb[0x28:])),
		InodeSize:      128,
		DescSize:       32,
		Blocks:         int64(le.Uint32(sb[0x4:])),
	}
	if le.Uint32(sb[0x4C:]) >= 1 { // dynamic revision: inode size is a field
		g.InodeSize = int64(le.Uint16(sb[0x58:]))
	}
	incompat, roCompat := le.Uint32(sb[0x60:]), le.Uint32(sb[0x64:])
	if incompat&incompat64bit != 0 {
		g.DescSize = int64(le.Uint16(sb[0xFE:]))
		g.Blocks |= int64(le.Uint32(sb[0x150:])) << 32
	}
	g.UnusedValid = roCompat&(roCompatGDTCsum|roCompatMetaCsum) != 0
	if g.BlocksPerGroup <= 0 || g.BlocksPerGroup > 8*g.BlockSize || g.InodesPerGroup <= 0 ||
		g.InodesPerGroup > 8*g.BlockSize || g.InodeSize < 128 || g.InodeSize > g.BlockSize ||
		g.InodeSize&(g.InodeSize-1) != 0 || g.DescSize < 32 || g.DescSize > 1024 ||
		g.FirstDataBlock >= g.Blocks {
		return nil, fmt.Errorf("%w: block size %d, %d blocks and %d inodes per group, inode size %d, descriptor size %d",
			ErrNotExt4, g.BlockSize, g.BlocksPerGroup, g.InodesPerGroup, g.InodeSize, g.DescSize)
	}
	g.Groups = (g.Blocks - g.FirstDataBlock + g.BlocksPerGroup - 1) / g.BlocksPerGroup
	if g.Groups <= 0 || g.Groups > maxGDTBytes/g.DescSize {
		return nil, fmt.Errorf("%w: %d block groups", ErrNotExt4, g.Groups)
	}
	g.GDT = make([]byte, g.Groups*g.DescSize)
	if _, err := dev.ReadAt(g.GDT, (g.FirstDataBlock+1)*g.BlockSize); err != nil {
		return nil, fmt.Errorf("ext4meta: read group descriptors: %w", err)
	}
	return g, nil
}

// Group returns the descriptor of group i (0 <= i < Groups).
func (g *Geometry) Group(i int64) Group {
	le := binary.LittleEndian
	d := g.GDT[i*g.DescSize : (i+1)*g.DescSize]
	out := Group{
		Flags:        le.Uint16(d[0x12:]),
		BlockBitmap:  int64(le.Uint32(d[0x0:])),
		InodeBitmap:  int64(le.Uint32(d[0x4:])),
		InodeTable:   int64(le.Uint32(d[0x8:])),
		FreeInodes:   int64(le.Uint16(d[0xE:])),
		ItableUnused: int64(le.Uint16(d[0x1C:])),
	}
	if g.DescSize >= 64 {
		out.BlockBitmap |= int64(le.Uint32(d[0x20:])) << 32
		out.InodeBitmap |= int64(le.Uint32(d[0x24:])) << 32
		out.InodeTable |= int64(le.Uint32(d[0x28:])) << 32
		out.FreeInodes |= int64(le.Uint16(d[0x2E:])) << 16
		out.ItableUnused |= int64(le.Uint16(d[0x32:])) << 16
	}
	return out
}
