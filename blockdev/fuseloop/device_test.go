package fuseloop

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/obdproject/obd/blockdev"
	"github.com/obdproject/obd/blockdev/blockdevtest"
	"github.com/obdproject/obd/internal/facility"
)

// requireFacilities skips when the machine cannot run FUSE + loop tests at all.
func requireFacilities(t *testing.T, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		facility.Missing(t, "fuseloop tests need root (FUSE mount, loop devices)")
	}
	for _, dev := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(dev); err != nil {
			facility.Missing(t, "no %s: %v", dev, err)
		}
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			facility.Missing(t, "%s not installed (Debian packages e2fsprogs, fio): %v", tool, err)
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

func sha256Sum(b []byte) [32]byte { return sha256.Sum256(b) }

func checkTree(t *testing.T, sums map[string][32]byte) {
	t.Helper()
	for name, want := range sums {
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if sha256Sum(data) != want {
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

// TestReadAheadIsReset: a new device gets the kernel's default readahead, whatever the free
// loop devices' last users left on them.
func TestReadAheadIsReset(t *testing.T) {
	requireFacilities(t)
	devices, _ := filepath.Glob("/sys/block/loop*")
	for _, dev := range devices {
		if _, err := os.Stat(filepath.Join(dev, "loop/backing_file")); err == nil {
			continue // in use: not ours to change
		}
		if err := os.WriteFile(filepath.Join(dev, "queue/read_ahead_kb"), []byte("2560"), 0); err != nil {
			t.Fatal(err)
		}
	}
	d := attach(t, newFileBackend(t, 16<<20), Options{ReadOnly: true})
	got, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(d.Path()), "queue/read_ahead_kb"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(got)) != strconv.Itoa(blockdev.ReadAheadKB) {
		t.Errorf("%s has %s KiB of readahead, want %d", d.Path(), strings.TrimSpace(string(got)), blockdev.ReadAheadKB)
	}
}

func TestFioVerify(t *testing.T) {
	requireFacilities(t, "fio")
	d := attach(t, blockdevtest.NewMem(128<<20), Options{})
	out := run(t, "fio", "--name=verify", "--filename="+d.Path(), "--direct=1", "--ioengine=libaio",
		"--rw=randwrite", "--bsrange=4k-256k", "--iodepth=16", "--numjobs=1", "--size=96M",
		"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", "--output-format=terse")
	// Terse v3: field 5 is the job's error number.
	fields := strings.Split(strings.TrimSpace(out), ";")
	if len(fields) < 5 || fields[4] != "0" {
		t.Fatalf("fio verify failed:\n%s", out)
	}
}

func TestManyDevices(t *testing.T) {
	requireFacilities(t, "mkfs.ext4")
	const n = 8
	// Attach concurrently: the free loop device search must not hand one out twice.
	devs := make([]*Device, n)
	attachErrs := make([]error, n)
	dir := t.TempDir()
	var wg sync.WaitGroup
	for i := range devs {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			devs[i], attachErrs[i] = Attach(ctx, blockdevtest.NewMem(64<<20), Options{Dir: dir, Name: fmt.Sprintf("d%d", i)})
		})
	}
	wg.Wait()
	for i, d := range devs {
		if d != nil {
			t.Cleanup(func() {
				if err := d.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
		}
		if attachErrs[i] != nil {
			t.Fatalf("Attach d%d: %v", i, attachErrs[i])
		}
	}
	mnts := make([]string, n)
	for i := range mnts {
		mnts[i] = t.TempDir()
		mnt := mnts[i]
		t.Cleanup(func() { unix.Unmount(mnt, 0) })
	}
	errs := make(chan error, n)
	sums := make([]map[string][32]byte, n)
	for i, d := range devs {
		go func() {
			errs <- func() error {
				if out, err := exec.Command("mkfs.ext4", "-q", "-F", d.Path()).CombinedOutput(); err != nil {
					return fmt.Errorf("mkfs %s: %v\n%s", d.Path(), err, out)
				}
				if err := unix.Mount(d.Path(), mnts[i], "ext4", 0, ""); err != nil {
					return fmt.Errorf("mount %s: %w", d.Path(), err)
				}
				sums[i] = map[string][32]byte{}
				for j := range 10 {
					data := make([]byte, 300<<10+j)
					rand.Read(data)
					name := filepath.Join(mnts[i], fmt.Sprintf("f%d", j))
					if err := os.WriteFile(name, data, 0o644); err != nil {
						return err
					}
					sums[i][name] = sha256.Sum256(data)
				}
				return nil
			}()
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	dropCaches(t)
	for i := range devs {
		checkTree(t, sums[i])
	}
	paths := map[string]bool{}
	for _, d := range devs {
		paths[d.Path()] = true
	}
	if len(paths) != n {
		t.Fatalf("devices share loop devices: %v", paths)
	}
}

// alignedBuf returns a 4096-aligned buffer for O_DIRECT.
func alignedBuf(n int) []byte {
	b := make([]byte, n+4096)
	off := int(4096 - uintptr(unsafe.Pointer(&b[0]))%4096)
	return b[off%4096 : off%4096+n]
}

// TestBackendErrorIsEIO: a read the backend fails, with an error or a panic, is that
// request's EIO; the device goes on serving other reads.
func TestBackendErrorIsEIO(t *testing.T) {
	for _, panics := range []bool{false, true} {
		t.Run(fmt.Sprintf("panic=%v", panics), func(t *testing.T) { testBackendErrorIsEIO(t, panics) })
	}
}

func testBackendErrorIsEIO(t *testing.T, panics bool) {
	requireFacilities(t)
	mem := blockdevtest.NewMem(16 << 20)
	content := make([]byte, 16<<20)
	rand.Read(content)
	mem.WriteAt(content, 0)
	faulty := &blockdevtest.Faulty{Backend: mem, FailOff: 4 << 20, FailLen: 4096, Panic: panics}
	d := attach(t, faulty, Options{})
	faulty.Arm()
	fd, err := unix.Open(d.Path(), unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	buf := alignedBuf(64 << 10)
	if n, err := unix.Pread(fd, buf, 4<<20-32<<10); err != unix.EIO {
		t.Fatalf("read over the failing range: %d bytes, err %v; want EIO", n, err)
	}
	n, err := unix.Pread(fd, buf, 8<<20)
	if err != nil || n != len(buf) || !bytes.Equal(buf, content[8<<20:8<<20+len(buf)]) {
		t.Fatalf("healthy read: %d bytes, err %v, data equal %v", n, err, bytes.Equal(buf, content[8<<20:8<<20+len(buf)]))
	}
}

func TestDiscardAndZeroout(t *testing.T) {
	requireFacilities(t, "blkdiscard")
	mem := blockdevtest.NewMem(16 << 20)
	content := bytes.Repeat([]byte{0x5a}, 16<<20)
	mem.WriteAt(content, 0)
	d := attach(t, mem, Options{})
	run(t, "blkdiscard", "-o", "1048576", "-l", "1048576", d.Path())
	run(t, "blkdiscard", "-z", "-o", "4194304", "-l", "524288", d.Path())
	got := make([]byte, 16<<20)
	mem.ReadAt(got, 0)
	want := bytes.Clone(content)
	clear(want[1<<20 : 2<<20])
	clear(want[4<<20 : 4<<20+512<<10])
	if !bytes.Equal(got, want) {
		t.Fatal("backend after discard/zeroout differs from expectation")
	}
}

// gated holds every read until `want` reads are in service at once (or a timeout),
// recording the largest number seen: a backend waiting on the network must not hold
// up the requests behind it.
type gated struct {
	*blockdevtest.Mem
	want    int
	mu      sync.Mutex
	cond    *sync.Cond
	in, max int
	armed   atomic.Bool
}

func (g *gated) ReadAt(p []byte, off int64) (int, error) {
	if g.armed.Load() {
		g.mu.Lock()
		g.in++
		g.max = max(g.max, g.in)
		g.cond.Broadcast()
		deadline := time.AfterFunc(10*time.Second, func() { g.mu.Lock(); g.cond.Broadcast(); g.mu.Unlock() })
		start := time.Now()
		for g.max < g.want && time.Since(start) < 10*time.Second {
			g.cond.Wait()
		}
		deadline.Stop()
		g.in--
		g.mu.Unlock()
	}
	return g.Mem.ReadAt(p, off)
}

func TestSlowBackendServedConcurrently(t *testing.T) {
	requireFacilities(t)
	g := &gated{Mem: blockdevtest.NewMem(16 << 20), want: 4}
	g.cond = sync.NewCond(&g.mu)
	d := attach(t, g, Options{})
	g.armed.Store(true)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			fd, err := unix.Open(d.Path(), unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Error(err)
				return
			}
			defer unix.Close(fd)
			if _, err := unix.Pread(fd, alignedBuf(4096), int64(i)<<20); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if g.max < g.want {
		t.Fatalf("at most %d backend reads in service at once, want %d", g.max, g.want)
	}
}

func TestAttachOverLiveMountRefused(t *testing.T) {
	requireFacilities(t)
	dir := t.TempDir()
	// A space is escaped in mountinfo (\040): the check must still see the mount.
	attach(t, blockdevtest.NewMem(1<<20), Options{Dir: dir, Name: "with space"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := Attach(ctx, blockdevtest.NewMem(1<<20), Options{Dir: dir, Name: "with space"})
	if !errors.Is(err, blockdev.ErrBusy) {
		if d != nil {
			d.Close()
		}
		t.Fatalf("second Attach on a live mount: %v, want ErrBusy", err)
	}
	for _, name := range []string{"", ".", "..", "a/b"} {
		if _, err := Attach(ctx, blockdevtest.NewMem(1<<20), Options{Dir: dir, Name: name}); err == nil {
			t.Errorf("Attach with name %q succeeded", name)
		}
	}
}

// syncCounting counts Sync calls.
type syncCounting struct {
	*blockdevtest.Mem
	syncs atomic.Int64
}

func (s *syncCounting) Sync() error { s.syncs.Add(1); return s.Mem.Sync() }

func TestFsyncReachesBackend(t *testing.T) {
	requireFacilities(t, "mkfs.ext4")
	b := &syncCounting{Mem: blockdevtest.NewMem(64 << 20)}
	d := attach(t, b, Options{})
	run(t, "mkfs.ext4", "-q", "-F", d.Path())
	mnt := mountExt4(t, d.Path(), false)
	f, err := os.Create(filepath.Join(mnt, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(make([]byte, 8192)); err != nil {
		t.Fatal(err)
	}
	before := b.syncs.Load()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if b.syncs.Load() == before {
		t.Fatal("fsync on ext4 did not reach Backend.Sync")
	}
}

// TestFileIsRootOnly: the FUSE file is mounted allow_other (the loop driver opens it in the
// kernel's name) but only root may open it: with default_permissions the kernel checks its
// mode, 0600, so another user on the node cannot read the image or write the device.
func TestFileIsRootOnly(t *testing.T) {
	requireFacilities(t)
	top := t.TempDir()
	dir := filepath.Join(top, "run")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{filepath.Dir(top), top} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mem := blockdevtest.NewMem(1 << 20)
	mem.WriteAt([]byte("secret"), 0)
	attach(t, mem, Options{Dir: dir, Name: "disk"})
	file := filepath.Join(dir, "disk")
	st, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("FUSE file mode %v, want 0600", st.Mode().Perm())
	}
	cmd := exec.Command("head", "-c", "6", file)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Permission denied") {
		t.Fatalf("user nobody read the FUSE file: %q, %v", out, err)
	}
}
