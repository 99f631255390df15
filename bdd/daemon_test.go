package bdd_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/bdd"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// bddBinary is cmd/bdd built once for the tests that run the daemon as a process.
var bddBinary string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "bdd-test-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	bddBinary = filepath.Join(dir, "bdd")
	out, err := exec.Command("go", "build", "-o", bddBinary, "github.com/obdproject/obd/cmd/bdd").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building cmd/bdd: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// requireBlockFacilities skips tests that need root, FUSE, loop devices and ext4 tools.
func requireBlockFacilities(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount FUSE, attach loop devices and mount ext4")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("/dev/fuse is absent: no FUSE transport here")
	}
	for _, tool := range []string{"mkfs.ext4", "losetup", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (apt-get install e2fsprogs mount)", tool)
		}
	}
}

// daemon is a bdd process run by a test, with its own state, cache and run dirs.
type daemon struct {
	t       testing.TB
	dir     string
	config  string
	socket  string
	logPath string
	cmd     *exec.Cmd
	client  bddv1.DaemonClient
	conn    *grpc.ClientConn

	stopOnce sync.Once
}

// startDaemon writes a config under a temp dir and starts bdd with it. extra is
// appended to the config file. The daemon is stopped when the test ends.
func startDaemon(t testing.TB, extra string) *daemon {
	t.Helper()
	dir := t.TempDir()
	d := &daemon{t: t, dir: dir, config: filepath.Join(dir, "bdd.toml"), socket: filepath.Join(dir, "bdd.sock"), logPath: filepath.Join(dir, "bdd.log")}
	cfg := fmt.Sprintf("state_dir = %q\nsocket = %q\nrun_dir = %q\nlog_level = \"debug\"\n%s\n[cache]\ndir = %q\nsize = \"1GiB\"\n",
		filepath.Join(dir, "state"), d.socket, filepath.Join(dir, "run"), extra, filepath.Join(dir, "cache"))
	if err := os.WriteFile(d.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	client, conn, err := bdd.Dial(d.socket)
	if err != nil {
		t.Fatal(err)
	}
	d.client, d.conn = client, conn
	d.start()
	t.Cleanup(d.stop)
	return d
}

func (d *daemon) start() {
	d.t.Helper()
	logf, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		d.t.Fatal(err)
	}
	defer logf.Close()
	d.cmd = exec.Command(bddBinary, "--config", d.config)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- d.cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := d.client.List(ctx, &bddv1.ListRequest{})
		cancel()
		if err == nil {
			// Keep reaping the process in the background.
			go func() { <-exited }()
			return
		}
		select {
		case werr := <-exited:
			d.t.Fatalf("bdd exited at start: %v\n%s", werr, d.logs())
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("bdd did not answer within 30s: %v\n%s", err, d.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill9 kills bdd the hard way, as a crash would.
func (d *daemon) kill9() {
	d.t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		d.t.Fatal(err)
	}
	if !waitGone(d.cmd.Process.Pid, 10*time.Second) {
		d.t.Fatal("bdd survived SIGKILL")
	}
}

// terminate stops bdd with SIGTERM, leaving its devices attached.
func (d *daemon) terminate() {
	d.t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		d.t.Fatal(err)
	}
	if !waitGone(d.cmd.Process.Pid, 10*time.Second) {
		d.t.Fatal("bdd did not stop on SIGTERM")
	}
}

// stop detaches every device (so the test leaves no mounts or loop devices), stops
// bdd and its fd keeper, and clears whatever a failed test left behind.
func (d *daemon) stop() { d.stopOnce.Do(d.stopNow) }

func (d *daemon) stopNow() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if list, err := d.client.List(ctx, &bddv1.ListRequest{}); err == nil {
		for _, dev := range list.GetDevices() {
			d.detachEventually(ctx, dev.GetId())
		}
	}
	pid := d.cmd.Process.Pid
	syscall.Kill(pid, syscall.SIGTERM)
	if !waitGone(pid, 10*time.Second) {
		// A hung daemon: dump its goroutines into the log, then kill it.
		d.t.Errorf("bdd did not stop on SIGTERM")
		syscall.Kill(pid, syscall.SIGQUIT)
		if !waitGone(pid, 5*time.Second) {
			syscall.Kill(pid, syscall.SIGKILL)
			waitGone(pid, 5*time.Second)
		}
	}
	d.stopKeeper()
	d.conn.Close()
	if d.t.Failed() {
		d.t.Logf("bdd log:\n%s", d.logs())
	}
}

// detachEventually detaches a device, retrying while the kernel still holds it
// for a moment after an unmount.
func (d *daemon) detachEventually(ctx context.Context, id string) {
	for {
		_, err := d.client.Detach(ctx, &bddv1.DetachRequest{Id: id})
		if err == nil {
			return
		}
		if status.Code(err) != codes.FailedPrecondition || ctx.Err() != nil {
			d.t.Errorf("cleanup: detach %s: %v", id, err)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stopKeeper kills the fd keeper bdd started (it outlives bdd by design) and
// lazily unmounts FUSE files a failed test left, so the temp dirs can go.
func (d *daemon) stopKeeper() {
	cfg := bdd.DefaultConfig()
	cfg.RunDir = filepath.Join(d.dir, "run")
	if b, err := os.ReadFile(bdd.KeeperPIDFile(cfg)); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			syscall.Kill(pid, syscall.SIGKILL)
			waitGone(pid, 5*time.Second)
		}
	}
	mounts, _ := filepath.Glob(filepath.Join(cfg.RunDir, "fuse", "*"))
	for _, m := range mounts {
		syscall.Unmount(m, syscall.MNT_DETACH)
	}
}

// waitGone waits until process pid no longer exists.
func waitGone(pid int, limit time.Duration) bool {
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(25 * time.Millisecond) {
		if err := syscall.Kill(pid, 0); err != nil {
			return true
		}
	}
	return false
}

func (d *daemon) logs() string {
	b, _ := os.ReadFile(d.logPath)
	return string(b)
}

func (d *daemon) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	d.t.Cleanup(cancel)
	return ctx
}

func (d *daemon) attach(req *bddv1.AttachRequest) *bddv1.Device {
	d.t.Helper()
	resp, err := d.client.Attach(d.ctx(), req)
	if err != nil {
		d.t.Fatalf("attach: %v\n%s", err, d.logs())
	}
	return resp.GetDevice()
}

func pathLayers(paths ...string) []*bddv1.Layer {
	var ls []*bddv1.Layer
	for _, p := range paths {
		ls = append(ls, &bddv1.Layer{Source: &bddv1.Layer_Path{Path: p}})
	}
	return ls
}

// logContains reports whether all the words occur on one line of bdd's log.
func (d *daemon) logContains(words ...string) bool {
	for _, line := range strings.Split(d.logs(), "\n") {
		all := true
		for _, w := range words {
			all = all && strings.Contains(line, w)
		}
		if all {
			return true
		}
	}
	return false
}

// TestDaemonRejectsBadConfig runs the real binary with broken settings: it must
// exit with a message naming the problem, not panic or start.
func TestDaemonRejectsBadConfig(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "bdd.toml")
	os.WriteFile(cfg, []byte("[cache]\nsize = \"lots\"\n"), 0o600)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--config", cfg}, "invalid size"},
		{[]string{"--config", filepath.Join(dir, "missing.toml")}, "no such file"},
		{[]string{"--config", filepath.Join(dir, "missing.toml"), "--log-level", "chatty"}, "no such file"},
		{[]string{"--config", "/dev/null", "--transport", "smoke-signals"}, "unknown transport"},
		{[]string{"--config", "/dev/null", "--read-timeout", "-5s"}, "read_timeout must be positive"},
	} {
		out, err := exec.Command(bddBinary, tc.args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) || strings.Contains(string(out), "panic") {
			t.Errorf("bdd %v: %v\n%s\nwant a failure mentioning %q", tc.args, err, out, tc.want)
		}
	}
}
