// Package blockdev is the blockdev box of the read path in docs/DESIGN.md: it names what a
// transport serves (a Backend, in practice the merged *lsmt.Stack) and what a transport
// produces (a Device the kernel exposes as /dev/loopN or /dev/nbdN, on which ext4 is
// mounted), and the readahead every such device is given (SetReadAhead).
//
// The transports live in subpackages:
//   - fuseloop: a one-file FUSE filesystem attached to a loop device (the default where
//     there is no NBD module), with crash recovery through fdkeeper;
//   - nbdexport: an NBD server on a unix socket, for any NBD client;
//   - kernelnbd: kernel NBD (/dev/nbdN) fed by nbdexport over a socketpair.
package blockdev

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
)

// ReadAheadKB is the readahead every transport gives its device, in KiB: the kernel's own
// default. A loop or NBD device keeps the readahead its last user left (2560 KiB on a
// machine where some tool had raised it), and on a lazily fetched device every KiB the
// kernel reads ahead may cross the network: a python start read 30% more with 2560
// (bench/FINDINGS.md).
const ReadAheadKB = 128

// SetReadAhead sets the readahead of block device dev (/dev/NAME) to kb KiB.
func SetReadAhead(dev string, kb int) error {
	path := "/sys/class/block/" + filepath.Base(dev) + "/queue/read_ahead_kb"
	if err := os.WriteFile(path, []byte(strconv.Itoa(kb)), 0); err != nil {
		return fmt.Errorf("blockdev: set readahead of %s: %w", dev, err)
	}
	return nil
}

// Backend is the byte range a transport serves. Reads and writes may be concurrent.
// *lsmt.Stack implements it.
type Backend interface {
	io.ReaderAt
	io.WriterAt
	// Size is the device size in bytes; it does not change while a device is attached.
	Size() int64
	// Sync makes every completed write durable.
	Sync() error
	// Discard drops the range [off, off+n): afterwards it reads as zeros. Used for
	// trim and write-zeroes.
	Discard(off, n int64) error
}

// Device is a kernel block device backed by a Backend.
type Device interface {
	// Path is the block device node, e.g. /dev/loop3 or /dev/nbd0.
	Path() string
	// Close detaches the device and stops serving it. It fails with ErrBusy, and
	// leaves the device working, while the device is mounted or otherwise claimed.
	Close() error
}

var (
	// ErrBusy is returned when detaching a device that is mounted or held.
	ErrBusy = errors.New("blockdev: device is busy (mounted or held)")
	// ErrReadOnly is returned for writes to a read-only device. A Backend that
	// refuses a write may wrap it: the transports then answer EROFS (FUSE) or EPERM
	// (NBD) instead of EIO.
	ErrReadOnly = errors.New("blockdev: device is read-only")
)
