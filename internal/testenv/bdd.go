package testenv

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

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/bddclient"
	"github.com/obdproject/obd/internal/facility"
)

// BDD is a bdd daemon private to one test: cmd/bdd built from this module, run as a process
// with its own state, cache, run dir and socket. Kill9, Terminate and Start crash, stop and
// restart it.
type BDD struct {
	Socket string
	Dir    string // holds state/, run/, cache/, the config and the log
	Client bddv1.DaemonClient

	binary   string
	netns    string
	config   string
	logPath  string
	conn     *grpc.ClientConn
	cmd      *exec.Cmd
	exited   chan struct{}
	stopOnce sync.Once
}

// BDDOption adjusts the daemon StartBDD runs.
type BDDOption func(*bddSettings)

type bddSettings struct {
	dockerConfig string
	extraConfig  string
	registry     string
	binary       string
	netns        string
}

// WithDockerConfig gives bdd a docker config.json holding registry credentials.
func WithDockerConfig(path string) BDDOption {
	return func(s *bddSettings) { s.dockerConfig = path }
}

// WithConfig adds top-level settings (TOML lines) to bdd's config file.
func WithConfig(toml string) BDDOption {
	return func(s *bddSettings) { s.extraConfig = toml }
}

// WithRegistryConfig adds settings (TOML lines) to the [registry] table of bdd's config file,
// e.g. certs_dir and read_timeout.
func WithRegistryConfig(toml string) BDDOption {
	return func(s *bddSettings) { s.registry = toml }
}

// WithNetNS runs bdd in the network namespace name (nsenter --net, so it shares the test's
// mount namespace and its FUSE mounts stay visible).
func WithNetNS(name string) BDDOption {
	return func(s *bddSettings) { s.netns = name }
}

// WithBinary runs the cmd/bdd already built at path instead of building it.
func WithBinary(path string) BDDOption {
	return func(s *bddSettings) { s.binary = path }
}

// StartBDD starts cmd/bdd, building it unless WithBinary names it. It skips the test when it is
// not root or /dev/fuse is absent. At cleanup (or Stop) it detaches every device, stops bdd and
// its descriptor keeper, and prints bdd's log if the test failed.
func StartBDD(t testing.TB, opts ...BDDOption) *BDD {
	t.Helper()
	RequireRoot(t)
	if _, err := os.Stat("/dev/fuse"); err != nil {
		facility.Missing(t, "testenv: /dev/fuse is absent, bdd's FUSE transport cannot run")
	}
	var settings bddSettings
	for _, o := range opts {
		o(&settings)
	}
	dir := t.TempDir()
	b := &BDD{
		Socket:  filepath.Join(dir, "bdd.sock"),
		Dir:     dir,
		binary:  settings.binary,
		netns:   settings.netns,
		config:  filepath.Join(dir, "bdd.toml"),
		logPath: filepath.Join(dir, "bdd.log"),
	}
	if b.binary == "" {
		b.binary = filepath.Join(dir, "bdd")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if out, err := exec.CommandContext(ctx, "go", "build", "-o", b.binary, "github.com/obdproject/obd/cmd/bdd").CombinedOutput(); err != nil {
			t.Fatalf("testenv: build cmd/bdd: %v\n%s", err, out)
		}
	}
	cfg := fmt.Sprintf("state_dir = %q\nsocket = %q\nrun_dir = %q\nlog_level = \"debug\"\n%s\n[cache]\ndir = %q\nsize = \"1GiB\"\n",
		filepath.Join(dir, "state"), b.Socket, b.runDir(), settings.extraConfig, filepath.Join(dir, "cache"))
	if settings.dockerConfig != "" || settings.registry != "" {
		cfg += "[registry]\n" + settings.registry + "\n"
	}
	if settings.dockerConfig != "" {
		cfg += fmt.Sprintf("docker_config = %q\n", settings.dockerConfig)
	}
	if err := os.WriteFile(b.config, []byte(cfg), 0o600); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	client, conn, err := bddclient.Dial(b.Socket)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	b.Client, b.conn = client, conn
	t.Cleanup(func() { b.Stop(t) })
	b.Start(t)
	return b
}

func (b *BDD) runDir() string { return filepath.Join(b.Dir, "run") }

// Start runs bdd (again, after Kill9 or Terminate) and waits until it answers.
func (b *BDD) Start(t testing.TB) {
	t.Helper()
	logFile, err := os.OpenFile(b.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	defer logFile.Close()
	b.cmd = exec.Command(b.binary, "--config", b.config)
	if b.netns != "" {
		b.cmd = exec.Command("nsenter", "--net="+NetNSPath(b.netns), b.binary, "--config", b.config)
	}
	b.cmd.Stdout, b.cmd.Stderr = logFile, logFile
	if err := b.cmd.Start(); err != nil {
		t.Fatalf("testenv: start bdd: %v", err)
	}
	b.exited = make(chan struct{})
	go func() {
		_ = b.cmd.Wait()
		close(b.exited)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := b.Client.List(ctx, &bddv1.ListRequest{})
		cancel()
		if err == nil {
			return
		}
		select {
		case <-b.exited:
			t.Fatalf("testenv: bdd exited at start\n%s", b.logSection())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("testenv: bdd did not answer within 30 s: %v\n%s", err, b.logSection())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Pid is the process ID of the running bdd.
func (b *BDD) Pid() int { return b.cmd.Process.Pid }

// Kill9 kills bdd with SIGKILL, as a crash would, and waits until it is gone.
func (b *BDD) Kill9(t testing.TB) {
	t.Helper()
	if err := b.cmd.Process.Kill(); err != nil {
		t.Fatalf("testenv: kill bdd: %v", err)
	}
	<-b.exited
}

// Terminate stops bdd with SIGTERM, which leaves its devices attached, and waits until it is
// gone.
func (b *BDD) Terminate(t testing.TB) {
	t.Helper()
	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("testenv: terminate bdd: %v", err)
	}
	select {
	case <-b.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("testenv: bdd did not stop on SIGTERM")
	}
}

// Logs returns what bdd has logged so far.
func (b *BDD) Logs() string {
	data, _ := os.ReadFile(b.logPath)
	return string(data)
}

// LogContains reports whether all the words occur on one line of bdd's log.
func (b *BDD) LogContains(words ...string) bool {
	for line := range strings.Lines(b.Logs()) {
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

func (b *BDD) logSection() string {
	data, err := os.ReadFile(b.logPath)
	if err != nil {
		return fmt.Sprintf("(no bdd log: %v)", err)
	}
	return "bdd log:\n" + string(data)
}

// Stop detaches every device (so the test leaves no mounts or loop devices), stops bdd and its
// descriptor keeper, and clears what a failed test left behind. It runs once; StartBDD
// registers it as a cleanup.
func (b *BDD) Stop(t testing.TB) { b.stopOnce.Do(func() { b.stop(t) }) }

func (b *BDD) stop(t testing.TB) {
	if b.cmd != nil {
		select {
		case <-b.exited:
		default:
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			if list, err := b.Client.List(ctx, &bddv1.ListRequest{}); err == nil {
				for _, dev := range list.GetDevices() {
					b.detachEventually(ctx, t, dev.GetId())
				}
			}
			cancel()
			b.stopProcess(t)
		}
	}
	b.stopKeeper()
	b.conn.Close()
	if t.Failed() {
		t.Log(b.logSection())
	}
}

// detachEventually detaches a device, retrying while the kernel still holds it for a moment
// after an unmount.
func (b *BDD) detachEventually(ctx context.Context, t testing.TB, id string) {
	for {
		_, err := b.Client.Detach(ctx, &bddv1.DetachRequest{Id: id})
		if err == nil {
			return
		}
		if status.Code(err) != codes.FailedPrecondition || ctx.Err() != nil {
			t.Errorf("testenv: bdd cleanup: detach %s: %v", id, err)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stopProcess sends SIGTERM; a bdd that hangs is made to dump its goroutines into the log
// (SIGQUIT), then killed.
func (b *BDD) stopProcess(t testing.TB) {
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.exited:
		return
	case <-time.After(15 * time.Second):
	}
	t.Errorf("testenv: bdd did not stop on SIGTERM")
	_ = b.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-b.exited:
	case <-time.After(5 * time.Second):
		_ = b.cmd.Process.Kill()
		<-b.exited
	}
}

// stopKeeper kills the descriptor keeper bdd starts and lazily unmounts the FUSE files left
// behind, so that the temp dir can be removed.
func (b *BDD) stopKeeper() {
	KillBDDKeeper(b.runDir())
	_ = UnmountAll(b.runDir())
}

// KillBDDKeeper kills the descriptor keeper of the bdd whose run dir is runDir and waits up to
// 5 s for it to go; it does nothing when there is none. The keeper outlives bdd by design (it
// carries FUSE connections over bdd restarts), so stopping bdd leaves it running.
func KillBDDKeeper(runDir string) {
	data, err := os.ReadFile(bddclient.KeeperPIDFile(runDir))
	if err != nil {
		return // bdd never started one
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && syscall.Kill(pid, 0) == nil; {
		time.Sleep(25 * time.Millisecond)
	}
}
