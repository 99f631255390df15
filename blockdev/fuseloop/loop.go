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

// attachLoop binds file to a free loop device with direct I/O and blockdev.ReadAheadKB of
// readahead, and returns its path.
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
			if err := blockdev.SetReadAhead(dev, blockdev.ReadAheadKB); err != nil {
				return "", errors.Join(err, detachLoop(dev))
			}
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

// heldWait bounds how long detachLoop waits for holders outside this mount namespace.
const heldWait = 10 * time.Second

// detachLoop detaches dev unless it is mounted here or stays claimed (then ErrBusy),
// and waits until the kernel has released the backing file.
//
// A block device that is mounted or held is opened exclusively, so O_EXCL fails. When
// it is not mounted in our own mount namespace, the holder is usually a copy of the
// mount in a namespace created meanwhile (a container starting on a host whose root
// mount is private); such copies go away with their namespace, so wait a bounded time.
func detachLoop(dev string) error {
	deadline := time.Now().Add(heldWait)
	var fd int
	for {
		var err error
		fd, err = openRaw(dev, unix.O_RDONLY|unix.O_EXCL)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("fuseloop: detach %s: %w", dev, err)
		}
		here, merr := mountedHere(dev)
		if merr != nil {
			return fmt.Errorf("fuseloop: detach %s: %w", dev, merr)
		}
		if here {
			return fmt.Errorf("fuseloop: detach %s: it is mounted: %w", dev, blockdev.ErrBusy)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("fuseloop: detach %s: held open elsewhere for %v: %w", dev, heldWait, blockdev.ErrBusy)
		}
		time.Sleep(20 * time.Millisecond)
	}
	err := unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0)
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

// mountedHere reports whether the block device dev backs a mount in this process's
// mount namespace (matched by device number in /proc/self/mountinfo).
func mountedHere(dev string) (bool, error) {
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		return false, err
	}
	want := fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	for line := range strings.Lines(string(data)) {
		if fields := strings.Fields(line); len(fields) > 2 && fields[2] == want {
			return true, nil
		}
	}
	return false, nil
}
