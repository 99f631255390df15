// Package fuseloop is the FUSE + loop transport of the blockdev box in docs/DESIGN.md: it
// serves a blockdev.Backend as a one-file FUSE filesystem and attaches that file to a
// loop device with direct I/O, giving /dev/loopN for ext4 to mount. It is the default
// transport where the kernel has no NBD module.
//
// The FUSE server is a small raw loop over /dev/fuse rather than a general FUSE
// library: it speaks only what a single regular file needs, and it can take over a
// live FUSE connection whose INIT handshake was done by a process that has since died
// (Resume), which go-fuse's Server cannot (NewServer always waits for INIT). Together
// with package fdkeeper, which holds the /dev/fuse descriptors outside the daemon,
// this lets a restarted daemon keep serving mounted filesystems: requests that arrive
// while no server runs wait in the kernel's queue.
//
// A process serving a device must not open the FUSE file (Device.File) with os.Open:
// see openRaw. The loop device and the ext4 on it are safe to use in process.
package fuseloop

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/obdproject/obd/blockdev"
	"github.com/obdproject/obd/blockdev/fdkeeper"
)

// Options configure a device.
type Options struct {
	// Dir holds the FUSE mount: the served file is Dir/Name, a FUSE filesystem whose
	// root is that one regular file.
	Dir string
	// Name is the file's name; it also names the device in logs and in the keeper.
	Name string
	// ReadOnly attaches the loop device read-only; writes to the file fail with EROFS.
	ReadOnly bool
	// Keeper, if set, receives the FUSE connection's descriptor under Name on Attach
	// and drops it on Close, so that Resume can take the connection over after a crash.
	Keeper *fdkeeper.Client
	// Readers bounds the requests served concurrently (default 16).
	Readers int
	// Logger receives backend errors; default slog.Default().
	Logger *slog.Logger
}

func (o Options) validate() (Options, error) {
	if o.Dir == "" || o.Name == "" || strings.ContainsRune(o.Name, '/') || o.Name == "." || o.Name == ".." {
		return o, fmt.Errorf("fuseloop: need a directory and a plain file name, got %q and %q", o.Dir, o.Name)
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return o, fmt.Errorf("fuseloop: %w", err)
	}
	o.Dir = dir
	if o.Readers <= 0 {
		o.Readers = 16
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o, nil
}

// Device is a loop device on a FUSE file served from a Backend.
type Device struct {
	opts   Options
	file   string
	loop   string
	fuse   *os.File
	server *server

	mu     sync.Mutex
	closed bool
}

var _ blockdev.Device = (*Device)(nil)

// Attach mounts the one-file FUSE filesystem at opts.Dir/opts.Name, serves b on it and
// attaches the file to a free loop device with direct I/O.
func Attach(ctx context.Context, b blockdev.Backend, opts Options) (_ *Device, err error) {
	opts, err = opts.validate()
	if err != nil {
		return nil, err
	}
	file := filepath.Join(opts.Dir, opts.Name)
	if mounted, err := isMountPoint(file); err != nil || mounted {
		// Touching a FUSE file nobody serves would hang: refuse instead.
		return nil, fmt.Errorf("fuseloop: %s is already mounted (Resume it or detach it first): %w", file, errors.Join(err, blockdev.ErrBusy))
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("fuseloop: %w", err)
	}
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		return nil, fmt.Errorf("fuseloop: create mount point: %w", err)
	}
	// A raw open keeps the descriptor blocking: the readers park in read(2).
	fd, err := openRaw("/dev/fuse", unix.O_RDWR)
	if err != nil {
		return nil, fmt.Errorf("fuseloop: open /dev/fuse: %w", err)
	}
	fuse := os.NewFile(uintptr(fd), "/dev/fuse")
	d := &Device{opts: opts, file: file, fuse: fuse, server: newServer(fuse, b, opts)}
	flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV)
	if opts.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	// allow_other lets the loop driver open the file whatever its caller's credentials;
	// default_permissions makes the kernel check the file's root-only mode on every open.
	data := fmt.Sprintf("fd=%d,rootmode=100000,user_id=0,group_id=0,allow_other,default_permissions,max_read=%d", fuse.Fd(), maxWrite)
	if err := unix.Mount("obd", file, "fuse.obd", flags, data); err != nil {
		fuse.Close()
		return nil, fmt.Errorf("fuseloop: mount FUSE on %s: %w", file, err)
	}
	defer func() {
		if err != nil {
			unix.Unmount(file, unix.MNT_DETACH)
			d.server.wait()
			fuse.Close()
		}
	}()
	if err := d.server.handleInit(); err != nil {
		return nil, fmt.Errorf("fuseloop: FUSE INIT on %s: %w", file, err)
	}
	d.server.start(opts.Readers)
	if opts.Keeper != nil {
		if err := opts.Keeper.Put(ctx, opts.Name, fuse); err != nil {
			return nil, err
		}
		defer func() {
			if err != nil {
				opts.Keeper.Drop(context.WithoutCancel(ctx), opts.Name)
			}
		}()
	}
	d.loop, err = attachLoop(file, opts.ReadOnly)
	if err != nil {
		return nil, err
	}
	return d, nil
}

// Resume serves b on an existing device whose FUSE connection is fuse (typically
// fetched from an fdkeeper after the previous server died). It does not touch the FUSE
// file before serving, so it cannot block on the connection it is taking over; the
// kernel is asked to resend requests the previous server had read but not answered.
// The device is found again by its backing file, opts.Dir/opts.Name. The Device owns
// fuse on success; on error the caller keeps it.
func Resume(ctx context.Context, b blockdev.Backend, fuse *os.File, opts Options) (*Device, error) {
	opts, err := opts.validate()
	if err != nil {
		return nil, err
	}
	file := filepath.Join(opts.Dir, opts.Name)
	loop, err := findLoop(file)
	if err != nil {
		return nil, err
	}
	d := &Device{opts: opts, file: file, loop: loop, fuse: fuse, server: newServer(fuse, b, opts)}
	if err := unix.SetNonblock(int(fuse.Fd()), false); err != nil {
		return nil, fmt.Errorf("fuseloop: resume %s: %w", file, err)
	}
	d.server.start(opts.Readers)
	if err := d.server.resend(); err != nil {
		// Kernels before 6.9 lack resend: requests in flight at the crash stay stuck,
		// new ones are served.
		opts.Logger.Warn("FUSE resend not supported; requests in flight at the crash may hang", "device", opts.Name, "err", err)
	}
	return d, nil
}

func newServer(fuse *os.File, b blockdev.Backend, opts Options) *server {
	return &server{fuse: fuse, fd: int(fuse.Fd()), b: blockdev.Guard(b), readOnly: opts.ReadOnly, name: opts.Name, log: opts.Logger}
}

// Path is the loop device, e.g. /dev/loop3.
func (d *Device) Path() string { return d.loop }

// File is the FUSE-served file backing the loop device.
func (d *Device) File() string { return d.file }

// Close detaches the loop device, unmounts the FUSE file and stops serving. While the
// loop device is mounted or held it returns an error wrapping blockdev.ErrBusy and
// the device keeps working. Closing a closed device does nothing.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	if err := detachLoop(d.loop); err != nil {
		return err
	}
	if err := unmount(d.file); err != nil {
		return err
	}
	d.closed = true
	d.server.wait()
	err := d.fuse.Close()
	if d.opts.Keeper != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err = errors.Join(err, d.opts.Keeper.Drop(ctx, d.opts.Name))
	}
	if rmErr := os.Remove(d.file); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) {
		err = errors.Join(err, rmErr)
	}
	return err
}

// isMountPoint reports whether path is a mount point, from /proc/self/mountinfo
// (stat would reach a FUSE server that may not be running).
func isMountPoint(path string) (bool, error) {
	mounts, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(path))
	if err != nil {
		return false, fmt.Errorf("fuseloop: %w", err)
	}
	return len(mounts) > 0, nil
}

// unmount unmounts the FUSE file, waiting briefly for the loop device to let go.
func unmount(file string) error {
	var err error
	for range 100 {
		if err = unix.Unmount(file, 0); err == nil || errors.Is(err, unix.EINVAL) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("fuseloop: unmount %s: %w", file, err)
}
