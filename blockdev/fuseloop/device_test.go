package fuseloop

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/obdproject/obd/blockdev"
	"github.com/obdproject/obd/blockdev/blockdevtest"
)

// requireFacilities skips when the machine cannot run FUSE + loop tests at all.
func requireFacilities(t *testing.T, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("fuseloop tests need root (FUSE mount, loop devices)")
	}
	for _, dev := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(dev); err != nil {
			t.Skipf("no %s: %v", dev, err)
		}
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (Debian packages e2fsprogs, fio): %v", tool, err)
		}
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// attach attaches b and registers a forced cleanup that works even if the test failed
// half way (ext4 still mounted, device still attached).
func attach(t *testing.T, b blockdev.Backend, opts Options) *Device {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	if opts.Name == "" {
		opts.Name = "disk"
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := Attach(ctx, b, opts)
	if err != nil {
		t.Fatalf("Attach: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return d
}

// mountExt4 mounts dev at a new directory and unmounts it in cleanup.
func mountExt4(t *testing.T, dev string, readOnly bool) string {
	t.Helper()
	mnt := t.TempDir()
	var flags uintptr
	if readOnly {
		flags = unix.MS_RDONLY
	}
	if err := unix.Mount(dev, mnt, "ext4", flags, ""); err != nil {
		t.Fatalf("mount %s: %v", dev, err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, 0) })
	return mnt
}

func newFileBackend(t *testing.T, size int64) *blockdevtest.File {
	t.Helper()
	b, err := blockdevtest.CreateFile(filepath.Join(t.TempDir(), "backing"), size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// writeTree writes files of random content under dir and returns their checksums.
func writeTree(t *testing.T, dir string, n int) map[string][32]byte {
	t.Helper()
	sums := map[string][32]byte{}
	for i := range n {
		data := make([]byte, 1000+i*37*1024)
		rand.Read(data)
		name := filepath.Join(dir, fmt.Sprintf("f%03d", i))
		if err := os.WriteFile(name, data, 0o644); err != nil {
			t.Fatal(err)
		}
		sums[name] = sha256.Sum256(data)
	}
	return sums
}

func checkTree(t *testing.T, sums map[string][32]byte) {
	t.Helper()
	for name, want := range sums {
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if sha256.Sum256(data) != want {
			t.Fatalf("%s: checksum differs", name)
		}
	}
}

func dropCaches(t *testing.T) {
	t.Helper()
	unix.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		t.Logf("drop caches: %v", err)
	}
}

func TestExt4RoundTrip(t *testing.T) {
	requireFacilities(t, "mkfs.ext4")
	b := newFileBackend(t, 256<<20)
	d := attach(t, b, Options{})
	if !strings.HasPrefix(d.Path(), "/dev/loop") {
		t.Fatalf("Path %q", d.Path())
	}
	dio, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(d.Path()), "loop/dio"))
	if err != nil || strings.TrimSpace(string(dio)) != "1" {
		t.Errorf("loop direct I/O not on: %q %v", dio, err)
	}
	run(t, "mkfs.ext4", "-q", "-F", d.Path())
	mnt := mountExt4(t, d.Path(), false)
	sums := writeTree(t, mnt, 40)
	dropCaches(t)
	checkTree(t, sums)

	// Detaching a mounted device is refused and leaves it working.
	if err := d.Close(); !errors.Is(err, blockdev.ErrBusy) {
		t.Fatalf("Close while mounted: %v, want ErrBusy", err)
	}
	checkTree(t, sums)
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}

	// The same bytes are in the backend: mount it read-only through a second device.
	ro := attach(t, b, Options{ReadOnly: true, Name: "ro"})
	mnt2 := mountExt4(t, ro.Path(), true)
	moved := map[string][32]byte{}
	for name, sum := range sums {
		moved[filepath.Join(mnt2, filepath.Base(name))] = sum
	}
	checkTree(t, moved)
	if fd, err := openRaw(ro.File(), unix.O_RDWR); err == nil {
		unix.Close(fd)
		t.Error("opening the read-only device's file for writing succeeded")
	}
}
