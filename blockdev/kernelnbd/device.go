// Package kernelnbd is the kernel NBD transport of the blockdev box in docs/DESIGN.md: it
// connects a /dev/nbdN device, through go-nbd's client (the NBD ioctls), to an
// nbdexport server over a socketpair, so that the kernel's block requests reach the
// Backend. It is used where the nbd module is loaded; elsewhere fuseloop is.
package kernelnbd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pojntfx/go-nbd/pkg/client"
	"golang.org/x/sys/unix"

	"github.com/obdproject/obd/blockdev"
	"github.com/obdproject/obd/blockdev/nbdexport"
)

// nbdSetFlags is the NBD_SET_FLAGS ioctl, _IO(0xab, 10).
const nbdSetFlags = 0xab0a

// ErrUnavailable is returned when the kernel has no NBD devices.
var ErrUnavailable = errors.New("no /dev/nbd0: nbd kernel module absent")

// Options configure a kernel NBD device.
type Options struct {
	// Device is the /dev/nbdN to use; empty picks the first unconnected one.
	Device string
	// ReadOnly refuses writes (EPERM from the server).
	ReadOnly bool
	// BlockSize is the device's logical block size, 512 to 4096 (default 4096).
	BlockSize uint32
	// Timeout is the kernel's per-request timeout (default: none, requests wait).
	Timeout time.Duration
	// Logger receives backend errors; default slog.Default().
	Logger *slog.Logger
}

// Device is a connected /dev/nbdN.
type Device struct {
	path      string
	dev       *os.File
	stop      context.CancelFunc
	connected chan error
	served    chan struct{}
}

var _ blockdev.Device = (*Device)(nil)

// Available reports whether kernel NBD devices exist; ErrUnavailable if not.
func Available() error {
	if _, err := os.Stat("/dev/nbd0"); err != nil {
		return ErrUnavailable
	}
	return nil
}

// freeDevice returns the first nbd device under sysBlock (normally /sys/block) that
// has no server attached (no pid file).
func freeDevice(sysBlock string) (string, error) {
	matches, err := filepath.Glob(filepath.Join(sysBlock, "nbd*"))
	if err != nil || len(matches) == 0 {
		return "", ErrUnavailable
	}
	index := func(p string) int {
		n, _ := strconv.Atoi(strings.TrimPrefix(filepath.Base(p), "nbd"))
		return n
	}
	sort.Slice(matches, func(i, j int) bool { return index(matches[i]) < index(matches[j]) })
	for _, m := range matches {
		if _, err := os.Stat(filepath.Join(m, "pid")); errors.Is(err, os.ErrNotExist) {
			return "/dev/" + filepath.Base(m), nil
		}
	}
	return "", fmt.Errorf("kernelnbd: every nbd device is connected: %w", blockdev.ErrBusy)
}

// clientOptions maps Options onto go-nbd's client options.
func (o Options) clientOptions(onConnected func()) *client.Options {
	bs := o.BlockSize
	if bs == 0 {
		bs = 4096
	}
	return &client.Options{
		BlockSize:   bs,
		OnConnected: onConnected,
		Timeout:     int(o.Timeout / time.Second),
	}
}

// Attach connects a free (or the given) /dev/nbdN to b and returns once the kernel
// sees the device's size.
func Attach(ctx context.Context, b blockdev.Backend, opts Options) (*Device, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	path := opts.Device
	if path == "" {
		var err error
		if path, err = freeDevice("/sys/block"); err != nil {
			return nil, err
		}
	}
	dev, err := os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("kernelnbd: open %s: %w", path, err)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("kernelnbd: socketpair: %w", err)
	}
	serverConn, err1 := fileConn(fds[0], "nbd-server")
	clientConn, err2 := fileConn(fds[1], "nbd-client")
	if err := errors.Join(err1, err2); err != nil {
		dev.Close()
		return nil, fmt.Errorf("kernelnbd: %w", err)
	}
	serveCtx, stop := context.WithCancel(context.Background())
	d := &Device{path: path, dev: dev, stop: stop, connected: make(chan error, 1), served: make(chan struct{})}
	go func() {
		defer close(d.served)
		nbdexport.ServeConn(serveCtx, serverConn, b, nbdexport.Options{Name: filepath.Base(path), ReadOnly: opts.ReadOnly, Logger: opts.Logger})
	}()
	// go-nbd's client negotiates the export but never tells the kernel its flags, so
	// the kernel would send no flush, FUA or trim. The size ioctls Connect issues
	// apply the flags set here.
	if err := unix.IoctlSetInt(int(dev.Fd()), nbdSetFlags, int(nbdexport.TransmissionFlags(opts.ReadOnly))); err != nil {
		stop()
		dev.Close()
		return nil, fmt.Errorf("kernelnbd: set flags on %s: %w", path, err)
	}
	ready := make(chan struct{})
	go func() {
		// Connect blocks in NBD_DO_IT until the device is disconnected.
		d.connected <- client.Connect(clientConn, dev, opts.clientOptions(func() { close(ready) }))
	}()
	select {
	case <-ready:
		if err := blockdev.SetReadAhead(path, blockdev.ReadAheadKB); err != nil {
			return nil, errors.Join(err, d.Close())
		}
		return d, nil
	case err := <-d.connected:
		stop()
		dev.Close()
		return nil, fmt.Errorf("kernelnbd: connect %s: %w", path, err)
	case <-ctx.Done():
		client.Disconnect(dev)
		stop()
		dev.Close()
		return nil, fmt.Errorf("kernelnbd: connect %s: %w", path, ctx.Err())
	}
}

func fileConn(fd int, name string) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	return net.FileConn(f)
}

// Path is the device node, e.g. /dev/nbd0.
func (d *Device) Path() string { return d.path }

// Close disconnects the device; ErrBusy while it is mounted or claimed.
func (d *Device) Close() error {
	fd, err := unix.Open(d.path, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("kernelnbd: detach %s: %w", d.path, blockdev.ErrBusy)
	}
	if err == nil {
		unix.Close(fd)
	}
	err = client.Disconnect(d.dev)
	<-d.connected
	d.stop()
	<-d.served
	return errors.Join(err, d.dev.Close())
}
