package bdd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/bddclient"
	"github.com/obdproject/obd/blockdev"
	"github.com/obdproject/obd/blockdev/kernelnbd"
	"github.com/obdproject/obd/blockdev/nbdexport"
	"github.com/obdproject/obd/layerblob"
	"github.com/obdproject/obd/lsmt"
	"golang.org/x/sync/errgroup"
)

// device is one attached layer stack and the transport serving it.
type device struct {
	spec   DeviceSpec
	layers []*openLayer
	stack  *lsmt.Stack
	// path is the kernel block device (FUSE + loop, or kernel NBD); nbdSocket the NBD
	// export every device has.
	path      string
	nbdSocket string
	// transport stops serving the block device; for a mounted device it fails with
	// blockdev.ErrBusy and leaves the device working. nil when there is none.
	transport io.Closer
	// export stops the NBD export.
	export io.Closer
	// prefetch serves stack to the transports and fetches ahead of the workload.
	prefetch *prefetcher
}

// readOnly says whether the device refuses writes: explicitly, or for lack of an upper.
func (d *device) readOnly() bool { return d.spec.ReadOnly || d.spec.UpperDir == "" }

func (d *device) toAPI() *bddv1.Device {
	t, _ := bddclient.ParseTransport(d.spec.Transport)
	out := &bddv1.Device{
		Id:         d.spec.ID,
		UpperDir:   d.spec.UpperDir,
		ReadOnly:   d.readOnly(),
		Transport:  t,
		DevicePath: d.path,
		NbdSocket:  d.nbdSocket,
		Size:       d.stack.Size(),

		IdempotencyKey: d.spec.Key,
	}
	for _, l := range d.spec.Layers {
		out.Layers = append(out.Layers, l.toAPI())
	}
	return out
}

// openStack opens the layers of spec and stacks them under the upper (if any).
// On error everything opened so far is closed again.
func (s *Server) openStack(ctx context.Context, spec DeviceSpec) (_ *lsmt.Stack, _ []*openLayer, err error) {
	layers, err := s.acquireLayers(ctx, spec.Layers)
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if err != nil {
			s.layers.release(layers)
		}
	}()
	var lower []lsmt.Layer
	for _, l := range layers {
		lower = append(lower, l.layers...)
	}
	var upper *lsmt.Writable
	if spec.UpperDir != "" {
		upper, err = openUpper(spec, layers)
		if err != nil {
			return nil, nil, err
		}
		if n := upper.DroppedRecords(); n > 0 {
			s.log.Warn("upper's index log cut at its first bad record (a power loss leaves such a tail)",
				"device", spec.ID, "upper", spec.UpperDir, "dropped", n)
		}
	}
	stack, err := lsmt.NewStack(lower, upper)
	if err != nil {
		if upper != nil {
			upper.Close()
		}
		return nil, nil, fmt.Errorf("stack: %w", err)
	}
	return stack, layers, nil
}

// openUpper opens the writable layer in spec.UpperDir, creating it on first use with
// the requested size or the size of the top lower layer.
func openUpper(spec DeviceSpec, lower []*openLayer) (*lsmt.Writable, error) {
	if layerblob.IsWritableDir(spec.UpperDir) {
		w, err := lsmt.OpenWritable(spec.UpperDir)
		if err != nil {
			return nil, fmt.Errorf("upper %s: %w", spec.UpperDir, err)
		}
		return w, nil
	}
	size := spec.UpperSize
	if size == 0 && len(lower) > 0 {
		size = lower[len(lower)-1].virtualSize()
	}
	if size == 0 {
		return nil, fmt.Errorf("%w: upper %s is new and no size is known (give upper_size)", ErrInvalidRequest, spec.UpperDir)
	}
	if err := os.MkdirAll(spec.UpperDir, 0o700); err != nil {
		return nil, fmt.Errorf("upper %s: %w", spec.UpperDir, err)
	}
	w, err := lsmt.Create(spec.UpperDir, lsmt.CreateOptions{VirtualSize: size})
	if err != nil {
		return nil, fmt.Errorf("upper %s: %w", spec.UpperDir, err)
	}
	return w, nil
}

// acquireLayers opens the layers concurrently: opening a remote layer reads its tar,
// ZFile and LSMT headers and index, several round trips each, which would otherwise
// add up over a stack on a slow link.
func (s *Server) acquireLayers(ctx context.Context, specs []LayerSpec) ([]*openLayer, error) {
	layers := make([]*openLayer, len(specs))
	var g errgroup.Group
	g.SetLimit(maxConcurrentOpens)
	for i, ls := range specs {
		g.Go(func() (err error) {
			defer blockdev.Recovered(&err, fmt.Sprintf("layer %d (%s): open", i, ls.Name()))
			l, err := s.layers.acquire(ctx, ls)
			if err != nil {
				return fmt.Errorf("layer %d (%s): %w", i, ls.Name(), err)
			}
			layers[i] = l
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		var opened []*openLayer
		for _, l := range layers {
			if l != nil {
				opened = append(opened, l)
			}
		}
		return nil, errors.Join(err, s.layers.release(opened))
	}
	return layers, nil
}

// maxConcurrentOpens bounds how many layers of one stack are opened at once.
const maxConcurrentOpens = 16

// expose serves d.stack as an NBD export on a unix socket and as a kernel block device
// through d.spec.Transport; resume asks the transport to take over what a previous bdd
// left serving.
func (s *Server) expose(ctx context.Context, d *device, resume bool) (err error) {
	log := s.log.With("device", d.spec.ID)
	sock := filepath.Join(s.cfg.RunDir, "nbd", d.spec.ID+".sock")
	if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
		return fmt.Errorf("nbd export: %w", err)
	}
	srv, err := nbdexport.Listen(sock, d.prefetch, nbdexport.Options{Name: d.spec.ID, ReadOnly: d.readOnly(), MaxConns: s.cfg.Limits.MaxExportConnections, Logger: log})
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			srv.Close()
		}
	}()
	d.nbdSocket, d.export = sock, srv
	switch d.spec.Transport {
	case bddclient.TransportNBD:
		return s.exposeKernelNBD(ctx, d, log)
	case bddclient.TransportFUSE:
		return s.exposeFUSE(ctx, d, resume)
	}
	return fmt.Errorf("%w: unknown transport %q", ErrInvalidRequest, d.spec.Transport)
}

// exposeKernelNBD connects the stack to a free /dev/nbdN where the kernel has NBD
// devices; without them the device is served by its NBD export alone.
func (s *Server) exposeKernelNBD(ctx context.Context, d *device, log *slog.Logger) error {
	if err := kernelnbd.Available(); err != nil {
		log.Info("no kernel block device: serving the NBD export only", "reason", err)
		return nil
	}
	dev, err := kernelnbd.Attach(ctx, d.prefetch, kernelnbd.Options{ReadOnly: d.readOnly(), Logger: log})
	if err != nil {
		return err
	}
	d.path, d.transport = dev.Path(), dev
	return nil
}

// compile-time check that a stack is what transports serve.
var _ blockdev.Backend = (*lsmt.Stack)(nil)

// closeDevice stops the transport and then releases the stack and layers. When
// the transport is busy nothing is released and the device keeps working.
func (s *Server) closeDevice(d *device) error {
	if d.transport != nil {
		if err := d.transport.Close(); err != nil {
			return err
		}
		d.transport = nil
	}
	if d.export != nil {
		if err := d.export.Close(); err != nil {
			return err
		}
		d.export = nil
	}
	d.prefetch.stop()
	return errors.Join(d.stack.Close(), s.layers.release(d.layers))
}
