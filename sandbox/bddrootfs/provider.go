// Package bddrootfs provides function sandboxes' root filesystems from obd images served by
// the bdd daemon: the "ext4 mount" box of docs/DESIGN.md's read path, under package sandbox. An
// image's layer stack is attached through bdd's control API as a read-only block device whose
// blocks are fetched lazily, its ext4 is mounted read-only once, and package sandbox
// bind-mounts that directory into every sandbox of the image.
package bddrootfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/bddclient"
	"github.com/obdproject/obd/sandbox"
	"golang.org/x/sys/unix"
)

// Provider attaches images through bdd. It implements sandbox.RootfsProvider.
//
// An image reference is the layer stack, bottom first, separated by commas; each layer is an
// absolute path of a local layer file or a registry blob REF@DIGEST:SIZE (as `obd attach`
// takes them). Resolving a registry image manifest to its layers happens before this.
type Provider struct {
	Client   bddv1.DaemonClient
	MountDir string        // where image filesystems are mounted, one dir per attach
	Timeout  time.Duration // per bdd call; default 1 minute

	seq atomic.Int64
}

var _ sandbox.RootfsProvider = (*Provider)(nil)

// Layers parses an image reference into bdd's layer list.
func Layers(ref string) ([]*bddv1.Layer, error) {
	var layers []*bddv1.Layer
	for _, s := range strings.Split(ref, ",") {
		if filepath.IsAbs(s) {
			layers = append(layers, &bddv1.Layer{Source: &bddv1.Layer_Path{Path: filepath.Clean(s)}})
			continue
		}
		l, err := bddclient.ParseBlobLayer(s)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", sandbox.ErrBadImage, err)
		}
		layers = append(layers, l)
	}
	return layers, nil
}

func (p *Provider) timeout() time.Duration {
	if p.Timeout > 0 {
		return p.Timeout
	}
	return time.Minute
}

// Acquire attaches the stack read-only and mounts its ext4 read-only. release unmounts and
// detaches.
func (p *Provider) Acquire(ctx context.Context, ref string) (_ string, _ func() error, err error) {
	layers, err := Layers(ref)
	if err != nil {
		return "", nil, err
	}
	callCtx, cancel := context.WithTimeout(ctx, p.timeout())
	defer cancel()
	resp, err := p.Client.Attach(callCtx, &bddv1.AttachRequest{Layers: layers, ReadOnly: true})
	if err != nil {
		return "", nil, fmt.Errorf("bddrootfs: attach %s: %w", ref, err)
	}
	dev := resp.GetDevice()
	detach := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), p.timeout())
		defer cancel()
		if _, err := p.Client.Detach(ctx, &bddv1.DetachRequest{Id: dev.GetId()}); err != nil {
			return fmt.Errorf("bddrootfs: detach %s: %w", dev.GetId(), err)
		}
		return nil
	}
	if dev.GetDevicePath() == "" {
		return "", nil, errors.Join(fmt.Errorf("bddrootfs: device %s has no block device path (transport %v)", dev.GetId(), dev.GetTransport()), detach())
	}
	dir := filepath.Join(p.MountDir, fmt.Sprintf("%s-%d", dev.GetId(), p.seq.Add(1)))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil, errors.Join(fmt.Errorf("bddrootfs: %w", err), detach())
	}
	// noload: a read-only device cannot replay a journal.
	if err := unix.Mount(dev.GetDevicePath(), dir, "ext4", unix.MS_RDONLY, "noload"); err != nil {
		os.Remove(dir)
		return "", nil, errors.Join(fmt.Errorf("bddrootfs: mount %s (%s) on %s: %w", dev.GetDevicePath(), ref, dir, err), detach())
	}
	release := func() error {
		var errs []error
		if err := unix.Unmount(dir, 0); err != nil {
			errs = append(errs, fmt.Errorf("bddrootfs: unmount %s: %w", dir, err))
		} else {
			os.Remove(dir)
		}
		return errors.Join(append(errs, detach())...)
	}
	return dir, release, nil
}
