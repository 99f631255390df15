// Package ext4fs makes the converter's ext4 filesystem reproducible: it formats
// the first layer with fixed parameters (docs/FORMAT.md, "The filesystem inside")
// and, after each layer is applied and unmounted, rewrites the fields the
// kernel fills from the clock or the random pool (inode change/creation/deletion
// times, inode generations and change counters, superblock mount and write
// times) to fixed values. Access and modification times are left to whoever
// applied the layer (convert/tarapply sets every one it causes), except in
// freed inodes; so nothing depends on when the conversion ran.
//
// It sits in the converter (docs/DESIGN.md, "The write paths") between the block device
// exposing the writable LSMT stack and the commit: Format runs on the device,
// Normalize on the stack itself (an io.ReaderAt + io.WriterAt) once the
// filesystem is unmounted.
package ext4fs

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"

	"github.com/obdproject/obd/ext4meta"
)

// FixedTime is the Unix time written wherever the kernel would write "now"
// (2000-01-01T00:00:00Z): mkfs times, every inode change and creation time,
// deletion times and the times of freed inodes.
const FixedTime = 946684800

// ErrNotExt4 is returned when the device does not hold the ext4 Format made.
var ErrNotExt4 = errors.New("ext4fs: not an ext4 filesystem made by obd")

// MountOptions are the ext4 mount data the converter uses (with MS_NOATIME):
// allocation at write time in the writing thread (not in background
// writeback), no lazy inode table zeroing thread, no discards, and a plain
// linear block group scan without background bitmap prefetch (whose
// completion order would steer the optimized scan).
const MountOptions = "nodelalloc,noinit_itable,nodiscard,mb_optimize_scan=0,no_prefetch_block_bitmaps"

// Format makes the filesystem on dev: 4 KiB blocks, 256-byte inodes, one inode
// per 16 KiB, features 64bit, flex_bg, extents, sparse_super2, resize_inode,
// dir_index and no journal, with uuid as the filesystem UUID and hash seed and
// FixedTime as every mkfs time. mke2fs's config file is not read, so the result
// does not depend on the machine.
func Format(ctx context.Context, dev, uuid string) error {
	args := []string{
		"-q", "-F", "-t", "ext4",
		"-b", "4096", "-I", "256", "-i", "16384", "-m", "0",
		"-O", "64bit,flex_bg,extent,sparse_super2,resize_inode,dir_index,filetype,sparse_super,large_file,huge_file,dir_nlink,extra_isize,^has_journal,^metadata_csum",
		"-U", uuid,
		"-E", "hash_seed=" + uuid + ",lazy_itable_init=1,nodiscard,root_owner=0:0",
		dev,
	}
	cmd := exec.CommandContext(ctx, "mkfs.ext4", args...)
	cmd.Env = append(os.Environ(),
		"MKE2FS_CONFIG=/dev/null",
		"E2FSPROGS_FAKE_TIME="+strconv.Itoa(FixedTime),
		"MKE2FS_DEVICE_SECTSIZE=512")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ext4fs: mkfs.ext4 %s: %w: %s", dev, err, out)
	}
	return nil
}

// Superblock and inode fields Normalize rewrites (Linux fs/ext4/ext4.h).
const (
	inodeExtraFields  = 0x80 // start of the large-inode fields
	sbKbytesWritten   = 0x178
	sbLastMounted     = 0x88
	sbLastMountedSize = 64
)

// Device is what Normalize edits: the writable stack, before commit.
type Device interface {
	io.ReaderAt
	io.WriterAt
}

// readGeometry reads the superblock and group descriptors (ext4meta.ReadGeometry) of a
// filesystem Format made: 4 KiB blocks, large inodes.
func readGeometry(dev io.ReaderAt) (*ext4meta.Geometry, error) {
	g, err := ext4meta.ReadGeometry(dev)
	if errors.Is(err, ext4meta.ErrNotExt4) {
		return nil, fmt.Errorf("%w: %v", ErrNotExt4, err)
	}
	if err != nil {
		return nil, fmt.Errorf("ext4fs: %w", err)
	}
	if g.BlockSize != 4096 || g.BlocksPerGroup != 8*g.BlockSize || g.InodeSize < 256 {
		return nil, fmt.Errorf("%w: block size %d, inode size %d", ErrNotExt4, g.BlockSize, g.InodeSize)
	}
	return g, nil
}

// Normalize rewrites nondeterministic fields of the unmounted filesystem on
// dev: every non-zero inode change, creation and deletion time, all times of
// freed inodes (a non-zero deletion time) and the superblock's mount and write
// times become FixedTime; generations and change counters 0. Access and
// modification times of live inodes stay as they are, whatever their value:
// userspace set them, and deciding by the clock would make the result depend
// on when the layer was converted. Only blocks whose bytes change are
// written, so inodes the layer did not touch stay in the lower layers.
func Normalize(dev Device) error {
	g, err := readGeometry(dev)
	if err != nil {
		return err
	}
	// Superblock: mount/write times, bytes written, last mount point.
	sb := g.Superblock
	orig := string(sb)
	fixTime32(sb[0x2C:]) // s_mtime
	fixTime32(sb[0x30:]) // s_wtime
	binary.LittleEndian.PutUint64(sb[sbKbytesWritten:], 0)
	clear(sb[sbLastMounted : sbLastMounted+sbLastMountedSize])
	if string(sb) != orig {
		if _, err := dev.WriteAt(sb, ext4meta.SuperblockOffset); err != nil {
			return fmt.Errorf("ext4fs: write superblock: %w", err)
		}
	}
	for i := range g.Groups {
		gr := g.Group(i)
		used := g.InodesPerGroup - gr.ItableUnused
		if gr.Flags&ext4meta.GroupInodeUninit != 0 || used <= 0 {
			continue
		}
		if err := normalizeInodes(dev, gr.InodeTable*g.BlockSize, used, g.InodeSize, g.BlockSize); err != nil {
			return fmt.Errorf("ext4fs: group %d: %w", i, err)
		}
	}
	return nil
}

// FreeBlocks reads the block bitmaps and reports, for a byte offset of the
// device, whether the 4 KiB block there is free. Groups whose bitmap is not
// initialized report no block free.
func FreeBlocks(dev io.ReaderAt) (func(off int64) bool, error) {
	g, err := readGeometry(dev)
	if err != nil {
		return nil, err
	}
	bitmaps := make([][]byte, g.Groups)
	for i := range g.Groups {
		gr := g.Group(i)
		if gr.Flags&ext4meta.GroupBlockUninit != 0 {
			continue
		}
		bm := make([]byte, g.BlockSize)
		if _, err := dev.ReadAt(bm, gr.BlockBitmap*g.BlockSize); err != nil {
			return nil, fmt.Errorf("ext4fs: group %d block bitmap: %w", i, err)
		}
		bitmaps[i] = bm
	}
	return func(off int64) bool {
		blk := off/g.BlockSize - g.FirstDataBlock
		grp, bit := blk/g.BlocksPerGroup, blk%g.BlocksPerGroup
		if blk < 0 || grp >= g.Groups || bitmaps[grp] == nil {
			return false
		}
		return bitmaps[grp][bit/8]&(1<<(bit%8)) == 0
	}, nil
}

// normalizeInodes rewrites the first n inodes of the table at off, a block at
// a time, writing back only blocks that changed.
func normalizeInodes(dev Device, off, n, inodeSize, blockSize int64) error {
	buf := make([]byte, blockSize)
	perBlock := blockSize / inodeSize
	for b := int64(0); b*perBlock < n; b++ {
		at := off + b*blockSize
		if _, err := dev.ReadAt(buf, at); err != nil {
			return fmt.Errorf("read inode table at %d: %w", at, err)
		}
		changed := false
		for i := int64(0); i < perBlock && b*perBlock+i < n; i++ {
			if normalizeInode(buf[i*inodeSize : (i+1)*inodeSize]) {
				changed = true
			}
		}
		if changed {
			if _, err := dev.WriteAt(buf, at); err != nil {
				return fmt.Errorf("write inode table at %d: %w", at, err)
			}
		}
	}
	return nil
}

// Inode fields (fs/ext4/ext4.h struct ext4_inode): a 32-bit seconds field and,
// in the large-inode area, its "extra" word (2 epoch bits, 30 nanosecond bits).
// userSet marks the times userspace sets (utimensat).
var inodeTimes = []struct {
	sec, extra int
	userSet    bool
}{
	{0x08, 0x8C, true},  // atime
	{0x0C, 0x84, false}, // ctime
	{0x10, 0x88, true},  // mtime
	{0x90, 0x94, false}, // crtime (lives in the extra area itself)
}

const (
	inodeDtime      = 0x14
	inodeVersionLo  = 0x24 // osd1: the change counter, bumped as often as the clock ticks
	inodeGeneration = 0x64
	inodeExtraIsize = 0x80
	inodeVersionHi  = 0x98
)

// normalizeInode fixes one inode in place and reports whether it changed. A
// time that is zero (in a slot never used) stays zero.
func normalizeInode(ino []byte) bool {
	le := binary.LittleEndian
	extra := inodeExtraFields + int(le.Uint16(ino[inodeExtraIsize:]))
	orig := string(ino)
	freed := le.Uint32(ino[inodeDtime:]) != 0
	for _, f := range inodeTimes {
		if f.sec >= inodeExtraFields && f.extra+4 > extra {
			continue // crtime absent from this inode
		}
		if f.userSet && !freed {
			continue
		}
		hasExtra := f.extra+4 <= extra
		if le.Uint32(ino[f.sec:]) == 0 && (!hasExtra || le.Uint32(ino[f.extra:]) == 0) {
			continue
		}
		le.PutUint32(ino[f.sec:], FixedTime)
		if hasExtra {
			le.PutUint32(ino[f.extra:], 0)
		}
	}
	fixTime32(ino[inodeDtime:])
	le.PutUint32(ino[inodeGeneration:], 0)
	le.PutUint32(ino[inodeVersionLo:], 0)
	if inodeVersionHi+4 <= extra {
		le.PutUint32(ino[inodeVersionHi:], 0)
	}
	return string(ino) != orig
}

// fixTime32 replaces a non-zero 32-bit Unix time at b with FixedTime.
func fixTime32(b []byte) {
	if binary.LittleEndian.Uint32(b) != 0 {
		binary.LittleEndian.PutUint32(b, FixedTime)
	}
}
