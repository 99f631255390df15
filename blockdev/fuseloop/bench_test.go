package fuseloop

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/obdproject/obd/blockdev/blockdevtest"
)

// passthroughFile is the baseline: a go-fuse file that only preads a plain file, no
// logic at all. A loop device on it is the ceiling any FUSE + loop transport can reach.
type passthroughFile struct {
	fs.Inode
	f    *os.File
	size int64
}

func (p *passthroughFile) Getattr(_ context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o644
	out.Size = uint64(p.size)
	return 0
}

func (p *passthroughFile) Open(context.Context, uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

func (p *passthroughFile) Read(_ context.Context, _ fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n, err := p.f.ReadAt(dest, off)
	if err != nil && n == 0 && off < p.size {
		return nil, syscall.EIO
	}
	return fuse.ReadResultData(dest[:n]), 0
}

type passthroughRoot struct {
	fs.Inode
	file *passthroughFile
}

func (r *passthroughRoot) OnAdd(ctx context.Context) {
	r.AddChild("disk", r.NewPersistentInode(ctx, r.file, fs.StableAttr{Mode: syscall.S_IFREG}), false)
}

// mountPassthrough mounts the baseline with the settings that make FUSE + loop fast
// (async direct I/O, no splice, 1 MiB requests, many background requests) and attaches
// it to a loop device.
func mountPassthrough(b *testing.B, backing string) string {
	f, err := os.Open(backing)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	st, _ := f.Stat()
	dir := b.TempDir()
	server, err := fs.Mount(dir, &passthroughRoot{file: &passthroughFile{f: f, size: st.Size()}}, &fs.Options{
		MountOptions: fuse.MountOptions{
			DirectMountStrict: true, AllowOther: true, DisableSplice: true, MaxWrite: maxWrite,
			MaxBackground: 256, ExtraCapabilities: fuse.CAP_ASYNC_DIO, Name: "passthrough",
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { server.Unmount() })
	loop, err := attachLoop(filepath.Join(dir, "disk"), true)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { detachLoop(loop) })
	return loop
}

// fioIOPS runs fio 4 KiB random reads with O_DIRECT on dev at the given queue depth.
func fioIOPS(b *testing.B, dev string, depth int) float64 {
	iops, err := blockdevtest.RandReadIOPS(depth, "--filename="+dev, "--direct=1", "--ioengine=libaio")
	if err != nil {
		b.Fatal(err)
	}
	return iops
}

// BenchmarkRandRead4K compares cache-hit 4 KiB random read IOPS through a fuseloop
// device with a loop device on a go-fuse passthrough file over the same bytes, at
// queue depth 1 and 32, alternating the two three times and keeping each one's best
// run (the machine is shared). The ratios are the figures that matter; the target
// is >= 0.9.
func BenchmarkRandRead4K(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root (FUSE mount, loop devices)")
	}
	if _, err := exec.LookPath("fio"); err != nil {
		b.Skip("fio not installed (Debian package fio)")
	}
	const size = 256 << 20
	backing := filepath.Join(b.TempDir(), "backing")
	data := make([]byte, size)
	rand.Read(data)
	if err := os.WriteFile(backing, data, 0o644); err != nil {
		b.Fatal(err)
	}
	baseline := mountPassthrough(b, backing)
	fb, err := blockdevtest.OpenFile(backing)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { fb.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := Attach(ctx, fb, Options{Dir: b.TempDir(), Name: "disk", ReadOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Close() })

	for range b.N {
		for _, depth := range []int{1, 32} {
			var best [2]float64
			for range 3 {
				for i, dev := range []string{baseline, d.Path()} {
					best[i] = max(best[i], fioIOPS(b, dev, depth))
				}
			}
			b.ReportMetric(best[1], fmt.Sprintf("iops-qd%d", depth))
			b.ReportMetric(best[0], fmt.Sprintf("baseline-iops-qd%d", depth))
			b.ReportMetric(best[1]/best[0], fmt.Sprintf("ratio-qd%d", depth))
		}
	}
}
