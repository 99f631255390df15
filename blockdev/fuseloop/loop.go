package fuseloop

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/obdproject/obd/blockdev"
)

// attachLoop binds file to a free loop device with direct I/O and returns its path.
func attachLoop(file string, readOnly bool) (string, error) {
	flags := unix.O_RDWR
	loFlags := uint32(unix.LO_FLAGS_DIRECT_IO)
	if readOnly {
		flags = unix.O_RDONLY
		loFlags |= unix.LO_FLAGS_READ_ONLY
	}
	backing, err := openRaw(file, flags|unix.O_DIRECT)
	if err != nil {
		return "", fmt.Errorf("fuseloop: open %s: %w", file, err)
	}
	defer unix.Close(backing)
	ctl, err := openRaw("/dev/loop-control", unix.O_RDWR)
	if err != nil {
		return "", fmt.Errorf("fuseloop: open /dev/loop-control: %w", err)
	}
	defer unix.Close(ctl)
	var cfg unix.LoopConfig
	cfg.Fd = uint32(backing)
	cfg.Info.Flags = loFlags
	copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], file)
	// Another process may take the free device between GET_FREE and CONFIGURE.
	for attempt := 0; ; attempt++ {
		n, err := unix.IoctlRetInt(ctl, unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", fmt.Errorf("fuseloop: find free loop device: %w", err)
		}
		dev := fmt.Sprintf("/dev/loop%d", n)
		err = configureLoop(dev, &cfg)
		if err == nil {
			return dev, nil
		}
		if !errors.Is(err, unix.EBUSY) || attempt == 20 {
			return "", fmt.Errorf("fuseloop: attach %s to %s: %w", file, dev, err)
		}
	}
}

func configureLoop(dev string, cfg *unix.LoopConfig) error {
	fd, err := openRaw(dev, unix.O_RDWR)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.IoctlLoopConfigure(fd, cfg)
}

// openRaw opens path with open(2) alone. os.OpenFile would also register the file with
// the runtime's epoll, and epoll_ctl on our own FUSE file sends a FUSE POLL request
// from a thread the scheduler cannot preempt: a garbage collection starting then
// waits for that thread while the readers that would answer wait for the collection.
func openRaw(path string, flags int) (int, error) {
	for {
		fd, err := unix.Open(path, flags|unix.O_CLOEXEC, 0)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

// findLoop returns the loop device whose backing file is file.
func findLoop(file string) (string, error) {
	matches, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, m := range matches {
		b, err := os.ReadFile(m)
		if err == nil && strings.TrimSpace(string(b)) == file {
			return "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(m))), nil
		}
	}
	return "", fmt.Errorf("fuseloop: no loop device is backed by %s", file)
}

// detachLoop detaches dev unless it is mounted or claimed (then ErrBusy), and waits
// until the kernel has released the backing file.
func detachLoop(dev string) error {
	// Mounted or held block devices are opened exclusively: O_EXCL fails then.
	fd, err := openRaw(dev, unix.O_RDONLY|unix.O_EXCL)
	if errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("fuseloop: detach %s: %w", dev, blockdev.ErrBusy)
	}
	if err != nil {
		return fmt.Errorf("fuseloop: detach %s: %w", dev, err)
	}
	err = unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0)
	unix.Close(fd)
	if err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("fuseloop: detach %s: %w", dev, err)
	}
	// The kernel tears the device down on the last close; someone else may still
	// hold it open for a moment.
	backing := filepath.Join("/sys/block", filepath.Base(dev), "loop/backing_file")
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(backing); errors.Is(err, os.ErrNotExist) {
			return nil
		}
	}
	return fmt.Errorf("fuseloop: detach %s: still held open after 10s: %w", dev, blockdev.ErrBusy)
}
