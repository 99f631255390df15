// Package extmount exposes a block backend (an lsmt.Stack) as a loop device
// through blockdev/fuseloop and mounts the ext4 on it: the "blockdev ▶ ext4
// mount" end of docs/DESIGN.md's read path, as the converter and its tests use it
// in process. Close unmounts and detaches, waiting out the moments when udev
// still holds a new device.
package extmount

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/obdproject/obd/blockdev"
	"github.com/obdproject/obd/blockdev/fuseloop"
)

// Options configure Mount.
type Options struct {
	Dir      string // work directory: the FUSE file and the mount point go here
	ReadOnly bool
	// Format, if set, runs on the device path before mounting (mkfs).
	Format func(ctx context.Context, dev string) error
	Flags  uintptr // mount flags (MS_RDONLY is added for ReadOnly)
	Data   string  // ext4 mount data
	Logger *slog.Logger
}

// Mounted is a mounted ext4 on a loop device over a backend.
type Mounted struct {
	Path   string // the mount point
	Device string // /dev/loopN
	dev    *fuseloop.Device
}

// Mount attaches b and mounts its ext4 at opts.Dir/mnt.
func Mount(ctx context.Context, b blockdev.Backend, opts Options) (_ *Mounted, err error) {
	dev, err := fuseloop.Attach(ctx, b, fuseloop.Options{Dir: filepath.Join(opts.Dir, "fuse"), Name: "disk", ReadOnly: opts.ReadOnly, Logger: opts.Logger})
	if err != nil {
		return nil, err
	}
	m := &Mounted{Path: filepath.Join(opts.Dir, "mnt"), Device: dev.Path(), dev: dev}
	defer func() {
		if err != nil {
			err = errors.Join(err, m.detach())
		}
	}()
	if opts.Format != nil {
		if err := opts.Format(ctx, dev.Path()); err != nil {
			return nil, err
		}
	}
	if err := os.Mkdir(m.Path, 0o700); err != nil {
		return nil, fmt.Errorf("extmount: %w", err)
	}
	flags := opts.Flags
	if opts.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount(dev.Path(), m.Path, "ext4", flags, opts.Data); err != nil {
		return nil, fmt.Errorf("extmount: mount %s: %w", dev.Path(), err)
	}
	return m, nil
}

// unmountRetry unmounts path, retrying for at most 5 s while the kernel says it is busy
// (a file of it still open for a moment). Waiting for a released loop device is
// fuseloop's job (Device.Close), not this.
func unmountRetry(path string) error {
	var err error
	for range 100 {
		if err = unix.Unmount(path, 0); !errors.Is(err, unix.EBUSY) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
	return err
}

// Close unmounts the filesystem (writing everything back) and detaches the
// device.
func (m *Mounted) Close() error {
	if err := unmountRetry(m.Path); err != nil {
		return fmt.Errorf("extmount: unmount %s: %w", m.Path, err)
	}
	return m.detach()
}

func (m *Mounted) detach() error {
	if err := m.dev.Close(); err != nil {
		return fmt.Errorf("extmount: detach %s: %w", m.Device, err)
	}
	return nil
}
