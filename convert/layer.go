package convert

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/obdproject/obd/convert/ext4fs"
	"github.com/obdproject/obd/convert/internal/extmount"
	"github.com/obdproject/obd/convert/tarapply"
	"github.com/obdproject/obd/layerblob"
	"github.com/obdproject/obd/lsmt"
	"github.com/obdproject/obd/zfile"
)

// layerBuild is one layer's conversion: the already converted lower blobs
// (lowest first) and the identity of the new layer.
type layerBuild struct {
	lowers     []string // converted blob files, lowest first
	uuid       string   // the new layer's UUID, derived from its chain ID
	parentUUID string   // the layer below's UUID ("" for the first)
	name       string   // for errors and logs: the source layer digest
}

// buildLayer stacks the lowers, adds a writable upper, exposes it as a block
// device, mounts its ext4 (formatting it for the first layer), applies the
// tar, unmounts, normalizes the filesystem and writes the committed upper as a
// tar-wrapped ZFile to out.
func (c *Converter) buildLayer(ctx context.Context, b layerBuild, tarStream io.Reader, out io.Writer) (st tarapply.Stats, err error) {
	dir, err := os.MkdirTemp(c.workDir, "layer-")
	if err != nil {
		return st, err
	}
	defer os.RemoveAll(dir)

	var lowers []lsmt.Layer
	vsize := c.opts.VirtualSize
	for _, p := range b.lowers {
		f, err := os.Open(p)
		if err != nil {
			return st, err
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return st, err
		}
		l, err := layerblob.Open(f, fi.Size(), p)
		if err != nil {
			return st, err
		}
		lowers = append(lowers, l)
		vsize = l.VirtualSize()
	}
	upper, err := lsmt.Create(filepath.Join(dir, "upper"), lsmt.CreateOptions{VirtualSize: vsize, UUID: b.uuid, ParentUUID: b.parentUUID})
	if err != nil {
		return st, err
	}
	stack, err := lsmt.NewStack(lowers, upper)
	if err != nil {
		upper.Close()
		return st, err
	}
	defer stack.Close()

	start := time.Now()
	st, err = c.applyOnDevice(ctx, stack, dir, b, tarStream)
	if err != nil {
		return st, err
	}
	applied := time.Now()
	if err := ext4fs.Normalize(stack); err != nil {
		return st, err
	}
	if err := stack.Sync(); err != nil {
		return st, err
	}
	free, err := ext4fs.FreeBlocks(stack)
	if err != nil {
		return st, err
	}
	canon, err := canonicalize(upper, dir, lsmt.CreateOptions{VirtualSize: vsize, UUID: b.uuid, ParentUUID: b.parentUUID}, free)
	if err != nil {
		return st, err
	}
	defer canon.Close()
	zopts := zfile.Options{Algorithm: c.opts.Algorithm, Level: c.opts.Level, BlockSize: c.opts.BlockSize}
	err = layerblob.Write(out, layerblob.WriteOptions{ZFile: &zopts, Tar: true, TempDir: dir}, func(w io.Writer) error {
		_, err := canon.Commit(w, lsmt.CommitOptions{UUID: b.uuid, ParentUUID: b.parentUUID})
		return err
	})
	if err != nil {
		return st, fmt.Errorf("commit: %w", err)
	}
	c.log.Debug("layer built", "layer", b.name, "apply", applied.Sub(start), "commit", time.Since(applied))
	return st, nil
}

// applyOnDevice attaches stack as a block device, mounts it and applies the
// tar. The device is detached before it returns.
func (c *Converter) applyOnDevice(ctx context.Context, stack *lsmt.Stack, dir string, b layerBuild, tarStream io.Reader) (st tarapply.Stats, err error) {
	err = c.onDevice(ctx, stack, dir, len(b.lowers) == 0, b.uuid, func(mnt string) error {
		var err error
		st, err = tarapply.Apply(ctx, mnt, tarStream, applyOptions(stack.Size()))
		return err
	})
	return st, err
}

// applyOptions are the tarapply options of a layer applied to a filesystem of
// size bytes: inodes are freed only at the end (DeferRemoval) and the
// directories no tar entry describes get FixedTime, so nothing depends on
// the clock.
func applyOptions(size int64) tarapply.Options {
	return tarapply.Options{MaxEntrySize: size, DeferRemoval: true, ImplicitTime: time.Unix(ext4fs.FixedTime, 0)}
}

// onDevice attaches stack as a block device, mounts its ext4 (formatting it
// first with uuid when format is set) and runs fn on the mount point, on one
// CPU (onOneCPU). The device is detached before it returns.
func (c *Converter) onDevice(ctx context.Context, stack *lsmt.Stack, dir string, format bool, uuid string, fn func(mnt string) error) error {
	opts := extmount.Options{Dir: dir, Flags: unix.MS_NOATIME, Data: ext4fs.MountOptions, Logger: c.log}
	if format {
		opts.Format = func(ctx context.Context, dev string) error { return ext4fs.Format(ctx, dev, uuid) }
	}
	m, err := extmount.Mount(ctx, stack, opts)
	if err != nil {
		return err
	}
	tuneAllocator(c.log, m.Device)
	err = onOneCPU(func() error { return fn(m.Path) })
	return errors.Join(err, m.Close())
}

// tuneAllocator turns off ext4's per-CPU locality-group preallocation for
// small files, whose block placement depends on which CPU ran the write.
func tuneAllocator(log *slog.Logger, dev string) {
	p := filepath.Join("/sys/fs/ext4", filepath.Base(dev), "mb_stream_req")
	if err := os.WriteFile(p, []byte("0"), 0o644); err != nil {
		log.Warn("ext4 allocator tuning unavailable; layer digests may vary", "path", p, "err", err)
	}
}

// onOneCPU runs fn on an OS thread pinned to one CPU whose thread ID is a
// multiple of 16, so ext4 allocates the same way every run:
//   - ext4 places new inodes by reading its free-inode counters, which are
//     per-CPU and only approximately summed: changed from one CPU in a fixed
//     order, they read the same every run;
//   - without delayed allocation ext4 starts a file's block search at an
//     offset chosen by the writing thread's ID modulo 16 ("colour").
//
// Threads are tried until one has a suitable ID; every thread used is
// discarded afterwards (its goroutine exits locked).
func onOneCPU(fn func() error) error {
	type result struct {
		err     error
		skipped bool
	}
	ch := make(chan result, 1)
	for range 1000 {
		go func() {
			runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
			if unix.Gettid()%16 != 0 {
				ch <- result{skipped: true}
				return
			}
			var set unix.CPUSet
			if err := unix.SchedGetaffinity(0, &set); err == nil {
				for cpu := 0; cpu < 1024; cpu++ {
					if set.IsSet(cpu) {
						set.Zero()
						set.Set(cpu)
						break
					}
				}
				_ = unix.SchedSetaffinity(0, &set) // best effort: digests may then vary
			}
			ch <- result{err: fn()}
		}()
		if r := <-ch; !r.skipped {
			return r.err
		}
	}
	return errors.New("no thread with an ID that is a multiple of 16 after 1000 tries")
}
