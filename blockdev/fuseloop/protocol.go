package fuseloop

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The subset of the FUSE wire protocol (include/uapi/linux/fuse.h) a one-file
// filesystem needs. Structures are little-endian on every Linux architecture we run on.
const (
	opGetattr     = 3
	opSetattr     = 4
	opOpen        = 14
	opRead        = 15
	opWrite       = 16
	opStatfs      = 17
	opRelease     = 18
	opFsync       = 20
	opFlush       = 25
	opInit        = 26
	opForget      = 2
	opInterrupt   = 36
	opDestroy     = 38
	opBatchForget = 42
	opFallocate   = 43

	inHeaderLen  = 40
	outHeaderLen = 16
	writeInLen   = 40

	kernelMajor = 7
	// minMinor is the oldest protocol whose structure layouts this server assumes
	// (Linux 5.11); ourMinor is what it speaks.
	minMinor = 31
	ourMinor = 40

	initAsyncRead   = 1 << 0
	initBigWrites   = 1 << 5
	initAsyncDIO    = 1 << 15
	initParallelDir = 1 << 18
	initMaxPages    = 1 << 22
	initNoOpendir   = 1 << 24
	initExt         = 1 << 30

	fopenDirectIO             = 1 << 0
	fopenParallelDirectWrites = 1 << 6

	notifyResend = 7

	fattrSize = 1 << 3

	fallocKeepSize  = 0x01
	fallocPunchHole = 0x02
	fallocZeroRange = 0x10

	// maxWrite is the largest READ/WRITE the kernel sends (256 pages).
	maxWrite = 1 << 20
	// readBufferLen fits the largest request: header, write_in and maxWrite bytes.
	readBufferLen = maxWrite + 4096

	// attrValidSeconds: the file's attributes never change while mounted.
	attrValidSeconds = 24 * 3600
)

var errShortRequest = errors.New("fuseloop: short request")

// inHeader is struct fuse_in_header.
type inHeader struct {
	length uint32
	opcode uint32
	unique uint64
	nodeID uint64
}

func parseInHeader(b []byte) (inHeader, error) {
	if len(b) < inHeaderLen {
		return inHeader{}, fmt.Errorf("%w: %d bytes", errShortRequest, len(b))
	}
	h := inHeader{
		length: binary.LittleEndian.Uint32(b[0:]),
		opcode: binary.LittleEndian.Uint32(b[4:]),
		unique: binary.LittleEndian.Uint64(b[8:]),
		nodeID: binary.LittleEndian.Uint64(b[16:]),
	}
	if int(h.length) != len(b) {
		return inHeader{}, fmt.Errorf("%w: header says %d bytes, read %d", errShortRequest, h.length, len(b))
	}
	return h, nil
}

func putOutHeader(b []byte, length int, errno int32, unique uint64) {
	binary.LittleEndian.PutUint32(b[0:], uint32(length))
	binary.LittleEndian.PutUint32(b[4:], uint32(-errno))
	binary.LittleEndian.PutUint64(b[8:], unique)
}

// putAttr encodes struct fuse_attr (88 bytes) for the single regular file.
func putAttr(b []byte, size int64, readOnly bool) {
	clear(b[:88])
	// Root only: the kernel checks this mode (the mount has default_permissions), so no
	// other user of the node reads the image or writes the device through the file.
	mode := uint32(0o100600)
	if readOnly {
		mode = 0o100400
	}
	binary.LittleEndian.PutUint64(b[0:], 1)                     // ino
	binary.LittleEndian.PutUint64(b[8:], uint64(size))          // size
	binary.LittleEndian.PutUint64(b[16:], uint64(size+511)/512) // blocks
	binary.LittleEndian.PutUint32(b[60:], mode)
	binary.LittleEndian.PutUint32(b[64:], 1)    // nlink
	binary.LittleEndian.PutUint32(b[80:], 4096) // blksize
}

// putAttrOut encodes struct fuse_attr_out (104 bytes).
func putAttrOut(b []byte, size int64, readOnly bool) {
	clear(b[:16])
	binary.LittleEndian.PutUint64(b[0:], attrValidSeconds)
	putAttr(b[16:], size, readOnly)
}

// initReply builds struct fuse_init_out for the kernel's INIT request, asking for the
// features that make a loop device on the file fast: async direct I/O (many requests
// in flight) and 1 MiB requests.
func initReply(in []byte) ([]byte, error) {
	if len(in) < 16 {
		return nil, fmt.Errorf("fuseloop: INIT of %d bytes", len(in))
	}
	major := binary.LittleEndian.Uint32(in[0:])
	minor := binary.LittleEndian.Uint32(in[4:])
	kflags := binary.LittleEndian.Uint32(in[12:])
	if major != kernelMajor || minor < minMinor {
		return nil, fmt.Errorf("fuseloop: kernel FUSE protocol %d.%d, need %d.%d or later", major, minor, kernelMajor, minMinor)
	}
	out := make([]byte, 64)
	binary.LittleEndian.PutUint32(out[0:], kernelMajor)
	binary.LittleEndian.PutUint32(out[4:], min(minor, ourMinor))
	binary.LittleEndian.PutUint32(out[8:], binary.LittleEndian.Uint32(in[8:])) // max_readahead
	want := uint32(initAsyncRead | initBigWrites | initAsyncDIO | initParallelDir | initMaxPages | initNoOpendir | initExt)
	binary.LittleEndian.PutUint32(out[12:], want&kflags)
	binary.LittleEndian.PutUint16(out[16:], 256) // max_background: async DIO requests in flight
	binary.LittleEndian.PutUint16(out[18:], 192) // congestion_threshold
	binary.LittleEndian.PutUint32(out[20:], maxWrite)
	binary.LittleEndian.PutUint32(out[24:], 1)             // time_gran
	binary.LittleEndian.PutUint16(out[28:], maxWrite/4096) // max_pages
	return out, nil
}
