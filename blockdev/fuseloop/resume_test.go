package fuseloop

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/obdproject/obd/blockdev/blockdevtest"
	"github.com/obdproject/obd/blockdev/fdkeeper"
)

// The crash test re-executes the test binary as the serving process, selected by
// helperEnv, so that it can be killed with SIGKILL like a crashing daemon.
const (
	helperEnv  = "OBD_FUSELOOP_HELPER"
	keeperEnv  = "OBD_FUSELOOP_KEEPER"
	backingEnv = "OBD_FUSELOOP_BACKING"
	dirEnv     = "OBD_FUSELOOP_DIR"
	stallEnv   = "OBD_FUSELOOP_STALL"
)

// stalling holds reads while its flag file exists, so that the test can kill a
// server with requests read from /dev/fuse but not answered.
type stalling struct {
	*blockdevtest.File
	flag string
}

func (s stalling) ReadAt(p []byte, off int64) (int, error) {
	for {
		if _, err := os.Stat(s.flag); err != nil {
			return s.File.ReadAt(p, off)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		if err := serveHelper(mode); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(1)
		}
		return
	}
	os.Exit(m.Run())
}

// serveHelper attaches (mode "attach") or resumes (mode "resume") the device named
// "disk", reports READY and the loop device on stdout, and serves until killed.
func serveHelper(mode string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := blockdevtest.OpenFile(os.Getenv(backingEnv))
	if err != nil {
		return err
	}
	keeper, err := fdkeeper.Dial(ctx, os.Getenv(keeperEnv))
	if err != nil {
		return err
	}
	opts := Options{Dir: os.Getenv(dirEnv), Name: "disk", Keeper: keeper}
	var d *Device
	switch mode {
	case "attach":
		d, err = Attach(ctx, stalling{b, os.Getenv(stallEnv)}, opts)
	case "resume":
		var fuse *os.File
		if fuse, err = keeper.Get(ctx, opts.Name); err == nil {
			d, err = Resume(ctx, b, fuse, opts)
		}
	default:
		err = fmt.Errorf("unknown mode %q", mode)
	}
	if err != nil {
		return err
	}
	fmt.Printf("READY %s\n", d.Path())
	select {}
}

type helper struct {
	cmd  *exec.Cmd
	loop string
}

func startHelper(t *testing.T, mode, keeperSock, backing, dir string) *helper {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, keeperEnv+"="+keeperSock, backingEnv+"="+backing,
		dirEnv+"="+dir, stallEnv+"="+filepath.Join(dir, "..", "stall"))
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &helper{cmd: cmd}
	t.Cleanup(h.kill)
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if !strings.HasPrefix(line, "READY /dev/loop") {
		t.Fatalf("helper %s: %q, %v", mode, line, err)
	}
	h.loop = strings.TrimSpace(strings.TrimPrefix(line, "READY "))
	return h
}

func (h *helper) kill() {
	if h.cmd.ProcessState == nil {
		h.cmd.Process.Signal(syscall.SIGKILL)
		h.cmd.Wait()
	}
}

// forceCleanup tears down whatever a failed crash test leaves: the ext4 mount, the
// FUSE connection (aborted, so nothing waits on a dead server), the loop device and
// the FUSE mount.
func forceCleanup(mnt, file string) {
	unix.Unmount(mnt, unix.MNT_DETACH)
	const fusectl = "/sys/fs/fuse/connections"
	if entries, err := os.ReadDir(fusectl); err == nil && len(entries) == 0 {
		unix.Mount("fusectl", fusectl, "fusectl", 0, "") // the abort files live there
	}
	if data, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for line := range strings.Lines(string(data)) {
			f := strings.Fields(line)
			if len(f) > 4 && f[4] == file {
				if _, minor, ok := strings.Cut(f[2], ":"); ok {
					os.WriteFile("/sys/fs/fuse/connections/"+minor+"/abort", []byte("1"), 0)
				}
			}
		}
	}
	if loop, err := findLoop(file); err == nil {
		if fd, err := unix.Open(loop, unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
			unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0)
			unix.Close(fd)
		}
	}
	unix.Unmount(file, unix.MNT_DETACH)
}

func TestCrashAndResume(t *testing.T) {
	requireFacilities(t, "mkfs.ext4")
	tmp, err := os.MkdirTemp("", "fuseloop")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	keeperSock := filepath.Join(tmp, "keeper.sock")
	l, err := fdkeeper.Listen(keeperSock)
	if err != nil {
		t.Fatal(err)
	}
	keeperSrv := fdkeeper.NewServer(nil)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- keeperSrv.Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); <-served; keeperSrv.Close() })

	backing := filepath.Join(tmp, "backing")
	b, err := blockdevtest.CreateFile(backing, 256<<20)
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	dir := filepath.Join(tmp, "fuse")
	file := filepath.Join(dir, "disk")
	mnt := filepath.Join(tmp, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { forceCleanup(mnt, file) })

	first := startHelper(t, "attach", keeperSock, backing, dir)
	run(t, "mkfs.ext4", "-q", "-F", first.loop)
	if err := unix.Mount(first.loop, mnt, "ext4", 0, ""); err != nil {
		t.Fatal(err)
	}
	sums := writeTree(t, mnt, 30)
	dropCaches(t)

	// Crash while the server holds reads it has taken from the kernel but not
	// answered: the new server must get them again (FUSE resend). Reads issued after
	// the crash must wait for the new server, not fail.
	stall := filepath.Join(tmp, "stall")
	if err := os.WriteFile(stall, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	readDone := make(chan error, 1)
	go func() {
		for name, want := range sums {
			data, err := os.ReadFile(name)
			if err != nil {
				readDone <- err
				return
			}
			if sha256Sum(data) != want {
				readDone <- fmt.Errorf("%s: checksum differs", name)
				return
			}
		}
		readDone <- nil
	}()
	time.Sleep(500 * time.Millisecond)
	first.kill()
	if err := os.Remove(stall); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-readDone:
		t.Fatalf("reads finished with no server running (err %v): they should have waited", err)
	case <-time.After(time.Second):
	}

	second := startHelper(t, "resume", keeperSock, backing, dir)
	if second.loop != first.loop {
		t.Errorf("resumed device is %s, was %s", second.loop, first.loop)
	}
	select {
	case err := <-readDone:
		if err != nil {
			t.Fatalf("reads across the crash: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("reads did not complete after resume")
	}

	// The mount keeps working for writes too.
	if err := os.Mkdir(filepath.Join(mnt, "after"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, sum := range writeTree(t, filepath.Join(mnt, "after"), 10) {
		sums[name] = sum
	}
	dropCaches(t)
	checkTree(t, sums)

	// Crash again, resume in this process, and detach cleanly.
	second.kill()
	keeper, err := fdkeeper.Dial(ctx, keeperSock)
	if err != nil {
		t.Fatal(err)
	}
	defer keeper.Close()
	fuse, err := keeper.Get(ctx, "disk")
	if err != nil {
		t.Fatal(err)
	}
	rb, err := blockdevtest.OpenFile(backing)
	if err != nil {
		t.Fatal(err)
	}
	defer rb.Close()
	d, err := Resume(ctx, rb, fuse, Options{Dir: dir, Name: "disk", Keeper: keeper})
	if err != nil {
		t.Fatal(err)
	}
	checkTree(t, sums)
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("Close after resume: %v", err)
	}
	if keys, err := keeper.Keys(ctx); err != nil || len(keys) != 0 {
		t.Errorf("keeper still holds %v (%v) after Close", keys, err)
	}
}
