package convert

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// extentMap is one extent of a file: bytes [logical, logical+length) of the
// file are bytes [physical, physical+length) of the device.
type extentMap struct {
	logical, physical, length int64
}

// FIEMAP ioctl (linux/fiemap.h).
const (
	fsIocFiemap        = 0xC020660B
	fiemapFlagSync     = 0x1
	fiemapExtentLast   = 0x1
	fiemapBatch        = 128
	fiemapHeaderSize   = 32
	fiemapExtentSize   = 56
	fiemapExtentUnfit  = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800 // unknown, delalloc, encoded, encrypted, not aligned, inline, tail, unwritten
	fiemapMaxExtents   = 1 << 20
	fiemapMaxFileBytes = 1 << 50
)

// fiemap returns the extents of the regular file at p, which the tar says
// holds size bytes, and its inode. ok is false when the file cannot be mapped
// one to one (not a regular file of that size, or an extent the kernel marks
// as unwritten, inline, encoded or not aligned).
func fiemap(p string, size int64) (ext []extentMap, ino uint64, ok bool, err error) {
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, 0, false, nil // replaced by a later entry of another type
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, 0, false, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != size || size > fiemapMaxFileBytes {
		return nil, 0, false, nil
	}
	buf := make([]byte, fiemapHeaderSize+fiemapBatch*fiemapExtentSize)
	var start uint64
	for {
		clear(buf)
		*(*uint64)(unsafe.Pointer(&buf[0])) = start
		*(*uint64)(unsafe.Pointer(&buf[8])) = ^uint64(0) - start
		*(*uint32)(unsafe.Pointer(&buf[16])) = fiemapFlagSync
		*(*uint32)(unsafe.Pointer(&buf[24])) = fiemapBatch
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&buf[0]))); errno != 0 {
			return nil, 0, false, fmt.Errorf("FIEMAP: %w", errno)
		}
		n := *(*uint32)(unsafe.Pointer(&buf[20]))
		if n == 0 {
			return ext, st.Ino, true, nil
		}
		for i := 0; i < int(n); i++ {
			e := buf[fiemapHeaderSize+i*fiemapExtentSize:]
			x := extentMap{
				logical:  int64(*(*uint64)(unsafe.Pointer(&e[0]))),
				physical: int64(*(*uint64)(unsafe.Pointer(&e[8]))),
				length:   int64(*(*uint64)(unsafe.Pointer(&e[16]))),
			}
			flags := *(*uint32)(unsafe.Pointer(&e[40]))
			if flags&fiemapExtentUnfit != 0 || x.logical >= size {
				return nil, 0, false, nil
			}
			ext = append(ext, x)
			if len(ext) > fiemapMaxExtents {
				return nil, 0, false, nil
			}
			start = uint64(x.logical + x.length)
			if flags&fiemapExtentLast != 0 {
				return ext, st.Ino, true, nil
			}
		}
	}
}
