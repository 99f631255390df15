package nbdexport

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"testing"

	gonbd "github.com/pojntfx/go-nbd/pkg/server"

	"github.com/obdproject/obd/blockdev"
	"github.com/obdproject/obd/blockdev/blockdevtest"
)

// goNBDBackend adapts a Backend to go-nbd's backend interface for the baseline.
type goNBDBackend struct{ blockdev.Backend }

func (b goNBDBackend) Size() (int64, error) { return b.Backend.Size(), nil }

// ReadAt hides io.EOF on full reads at the end, which go-nbd turns into a disconnect.
func (b goNBDBackend) ReadAt(p []byte, off int64) (int, error) {
	n, err := b.Backend.ReadAt(p, off)
	if errors.Is(err, io.EOF) && n == len(p) {
		err = nil
	}
	return n, err
}

// serveGoNBD serves b with go-nbd's server (one request at a time per connection).
// SupportsMultiConn is what makes it send HAS_FLAGS, without which libnbd refuses it.
func serveGoNBD(b *testing.B, sock string, backend blockdev.Backend) {
	l, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				gonbd.Handle(conn, []*gonbd.Export{{Name: "", Backend: goNBDBackend{backend}}}, &gonbd.Options{MaximumBlockSize: maxPayload, SupportsMultiConn: true})
			}()
		}
	}()
}

// fioNBD runs fio's nbd engine (libnbd) against the export: 4 KiB random reads.
func fioNBD(b *testing.B, sock string, depth int) float64 {
	iops, err := blockdevtest.RandReadIOPS(depth, "--ioengine=nbd", "--uri="+uri(sock), "--size=64M")
	if err != nil {
		b.Fatal(err)
	}
	return iops
}

// BenchmarkRandRead4K compares 4 KiB random read IOPS (fio's libnbd engine, queue
// depth 1 and 32) from this server with go-nbd's server over the same memory backend.
func BenchmarkRandRead4K(b *testing.B) {
	if _, err := exec.LookPath("fio"); err != nil {
		b.Skip("fio not installed (Debian package fio)")
	}
	backend := blockdevtest.NewMem(64 << 20)
	dir := b.TempDir()
	ours, base := filepath.Join(dir, "ours.sock"), filepath.Join(dir, "gonbd.sock")
	if len(ours) > 100 {
		b.Skip("temporary directory path too long for a unix socket")
	}
	s, err := Listen(ours, backend, Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	serveGoNBD(b, base, backend)
	for range b.N {
		for _, depth := range []int{1, 32} {
			var best [2]float64
			for range 2 {
				for i, sock := range []string{base, ours} {
					best[i] = max(best[i], fioNBD(b, sock, depth))
				}
			}
			b.ReportMetric(best[1], fmt.Sprintf("iops-qd%d", depth))
			b.ReportMetric(best[0], fmt.Sprintf("gonbd-iops-qd%d", depth))
			b.ReportMetric(best[1]/best[0], fmt.Sprintf("ratio-qd%d", depth))
		}
	}
}
