// Package ckptstart is the checkpoint/restore start path (Catalyzer) with the checkpoint stored
// like an image: Checkpoint dumps an initialized handler once (package checkpoint, CRIU) and
// pushes the dump as an obd layer artifact of the function's image (package ckptimage); on a
// node with no warm zygote, Prepare finds that artifact, attaches its layer read-only through
// bdd and mounts it (sandbox/bddrootfs: blocks fetched lazily, each range checked against the
// layer's range table), and Restore restores the handler from the mount, its private memory
// served through userfaultfd by `criu lazy-pages` when asked, so only the pages the restore
// reads are fetched before the handler runs. It sits beside package sandbox as a start path
// and is a client of bdd (api/bdd/v1 through bddrootfs), never linking the daemon.
//
// The handler is package checkpoint's: PID 1 of its own PID namespace, talking over pipes,
// either unconfined or confined on the function's image as a sandbox is (checkpoint.Spec.Root:
// nobody of a root-owned user namespace, its own mount namespace rooted in the image). Store
// serves the sandbox manager's restore start path the same way (sandbox.CheckpointStore):
// the manager dumps its own checkpointed sandboxes and Store pushes and finds them.
package ckptstart

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/opencontainers/go-digest"

	"github.com/obdproject/obd/checkpoint"
	"github.com/obdproject/obd/ckptimage"
	"github.com/obdproject/obd/obdimage"
	"github.com/obdproject/obd/sandbox/bddrootfs"
)

// Checkpoint dumps p, an initialized handler (quiescent, blocked reading its next request),
// which ends it, and pushes the dump as the checkpoint artifact of img for function. workDir
// holds the dump and the conversion's scratch files, removed after.
func Checkpoint(ctx context.Context, criu *checkpoint.CRIU, p *checkpoint.Process, resolver remotes.Resolver, img obdimage.Image,
	function, workDir string) (ckptimage.Checkpoint, error) {
	work, err := os.MkdirTemp(workDir, "dump-")
	if err != nil {
		return ckptimage.Checkpoint{}, fmt.Errorf("ckptstart: %w", err)
	}
	defer os.RemoveAll(work)
	dir := filepath.Join(work, "img")
	if err := criu.Dump(ctx, p, dir); err != nil {
		return ckptimage.Checkpoint{}, err
	}
	return ckptimage.Push(ctx, resolver, img, dir, ckptimage.Info{Function: function, CRIU: criu.Version}, ckptimage.Options{WorkDir: work})
}

// Prepared is a function's checkpoint attached and mounted on this node: restores read it.
type Prepared struct {
	Checkpoint ckptimage.Checkpoint
	Dir        string // the mounted checkpoint: CRIU's images
	criu       *checkpoint.CRIU
	release    func() error
}

// Prepare finds the checkpoint of img for function in the registry and attaches and mounts
// its layer through rootfs's bdd: the artifact pinned, when pin is a digest, else the newest
// the registry lists for the function (ckptimage.ErrNoCheckpoint when there is none). A
// restore runs criu as root on the checkpoint's files: without a pin, whoever may push to the
// image's repository decides what runs (docs/CHECKPOINT.md, "Trust").
func Prepare(ctx context.Context, criu *checkpoint.CRIU, rootfs *bddrootfs.Provider, resolver remotes.Resolver, img obdimage.Image,
	function string, pin digest.Digest) (*Prepared, error) {
	var c ckptimage.Checkpoint
	var err error
	if pin != "" {
		c, err = ckptimage.Get(ctx, resolver, img, pin)
	} else {
		c, err = ckptimage.Find(ctx, resolver, img, function)
	}
	if err != nil {
		return nil, err
	}
	dir, release, err := rootfs.Acquire(ctx, c.LayerRef())
	if err != nil {
		return nil, fmt.Errorf("ckptstart: checkpoint %s: %w", c.Artifact.Digest, err)
	}
	return &Prepared{Checkpoint: c, Dir: dir, criu: criu, release: release}, nil
}

// Restore restores the checkpointed handler from the mount: a new process with new pipes,
// in the state it was dumped in. opts.LazyPages restores its private memory through
// userfaultfd; a handler that ran confined (checkpoint.Spec.Root) is restored into
// opts.Root, the function's image as this node mounted it.
func (p *Prepared) Restore(ctx context.Context, opts checkpoint.RestoreOptions) (*checkpoint.Process, error) {
	proc, err := p.criu.Restore(ctx, p.Dir, opts)
	if err != nil {
		return nil, fmt.Errorf("ckptstart: restore %s: %w", p.Checkpoint.Artifact.Digest, err)
	}
	return proc, nil
}

// Close unmounts and detaches the checkpoint; restored processes must have exited (their
// mappings of the mount keep it busy).
func (p *Prepared) Close() error {
	if p.release == nil {
		return errors.New("ckptstart: closed twice")
	}
	err := p.release()
	p.release = nil
	return err
}

// Store keeps the sandbox manager's checkpoints in the registry (sandbox.CheckpointStore): a
// checkpoint is pushed as an obd layer artifact of the function's image (the key as its
// function annotation) and mounted through bdd when found. Whoever may push to the image's
// repository decides what a node restores (docs/CHECKPOINT.md, "Trust").
type Store struct {
	Rootfs   *bddrootfs.Provider
	Resolver remotes.Resolver
	CRIU     *checkpoint.CRIU
	WorkDir  string // the conversion's scratch files; made when missing
}

// Get finds the newest checkpoint of image ref under key and mounts it; "" when there is none.
func (s *Store) Get(ctx context.Context, ref, key string) (string, func() error, error) {
	img, err := obdimage.Resolve(ctx, s.Resolver, ref, s.Rootfs.Platform)
	if err != nil {
		return "", nil, fmt.Errorf("ckptstart: %w", err)
	}
	p, err := Prepare(ctx, s.CRIU, s.Rootfs, s.Resolver, img, key, "")
	if errors.Is(err, ckptimage.ErrNoCheckpoint) {
		return "", nil, nil
	}
	if err != nil {
		return "", nil, err
	}
	return p.Dir, p.Close, nil
}

// Put pushes the checkpoint in dir as image ref's artifact under key.
func (s *Store) Put(ctx context.Context, ref, key, dir string) error {
	img, err := obdimage.Resolve(ctx, s.Resolver, ref, s.Rootfs.Platform)
	if err != nil {
		return fmt.Errorf("ckptstart: %w", err)
	}
	if err := os.MkdirAll(s.WorkDir, 0o700); err != nil {
		return fmt.Errorf("ckptstart: %w", err)
	}
	if _, err := ckptimage.Push(ctx, s.Resolver, img, dir, ckptimage.Info{Function: key, CRIU: s.CRIU.Version},
		ckptimage.Options{WorkDir: s.WorkDir}); err != nil {
		return fmt.Errorf("ckptstart: %w", err)
	}
	return nil
}
