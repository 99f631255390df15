package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/bdd"
	"google.golang.org/grpc"
)

// BDD is a bdd daemon private to one test: cmd/bdd built from this module, run as a process
// with its own state, cache, run dir and socket. Kill9 and Start crash and restart it.
type BDD struct {
	Socket string
	Dir    string
	Client bddv1.DaemonClient

	binary  string
	config  string
	logPath string
	conn    *grpc.ClientConn
	cmd     *exec.Cmd
	exited  chan struct{}
}

// BDDOption adjusts the daemon StartBDD runs.
type BDDOption func(*bddSettings)

type bddSettings struct{ dockerConfig string }

// WithDockerConfig gives bdd a docker config.json holding registry credentials.
func WithDockerConfig(path string) BDDOption {
	return func(s *bddSettings) { s.dockerConfig = path }
}

// StartBDD builds cmd/bdd and starts it. At cleanup it detaches every device, stops bdd and
// its descriptor keeper, and prints bdd's log if the test failed.
func StartBDD(t testing.TB, opts ...BDDOption) *BDD {
	t.Helper()
	RequireRoot(t)
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("testenv: /dev/fuse is absent, bdd's FUSE transport cannot run")
	}
	dir := t.TempDir()
	b := &BDD{
		Socket:  filepath.Join(dir, "bdd.sock"),
		Dir:     dir,
		binary:  filepath.Join(dir, "bdd"),
		config:  filepath.Join(dir, "bdd.toml"),
		logPath: filepath.Join(dir, "bdd.log"),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", b.binary, "github.com/obdproject/obd/cmd/bdd").CombinedOutput(); err != nil {
		t.Fatalf("testenv: build cmd/bdd: %v\n%s", err, out)
	}
	var settings bddSettings
	for _, o := range opts {
		o(&settings)
	}
	cfg := fmt.Sprintf("state_dir = %q\nsocket = %q\nrun_dir = %q\nlog_level = \"debug\"\n[cache]\ndir = %q\nsize = \"1GiB\"\n",
		filepath.Join(dir, "state"), b.Socket, b.runDir(), filepath.Join(dir, "cache"))
	if settings.dockerConfig != "" {
		cfg += fmt.Sprintf("[registry]\ndocker_config = %q\n", settings.dockerConfig)
	}
	if err := os.WriteFile(b.config, []byte(cfg), 0o600); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	client, conn, err := bdd.Dial(b.Socket)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	b.Client, b.conn = client, conn
	t.Cleanup(func() { b.cleanup(t) })
	b.Start(t)
	return b
}

func (b *BDD) runDir() string { return filepath.Join(b.Dir, "run") }

// Start runs bdd (again, after Kill9) and waits until it answers.
func (b *BDD) Start(t testing.TB) {
	t.Helper()
	logFile, err := os.OpenFile(b.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	defer logFile.Close()
	b.cmd = exec.Command(b.binary, "--config", b.config)
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
			t.Fatalf("testenv: bdd exited at start\n%s", b.log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("testenv: bdd did not answer within 30 s: %v\n%s", err, b.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Kill9 kills bdd with SIGKILL, as a crash would, and waits until it is gone.
func (b *BDD) Kill9(t testing.TB) {
	t.Helper()
	if err := b.cmd.Process.Kill(); err != nil {
		t.Fatalf("testenv: kill bdd: %v", err)
	}
	<-b.exited
}

func (b *BDD) log() string {
	data, err := os.ReadFile(b.logPath)
	if err != nil {
		return fmt.Sprintf("(no bdd log: %v)", err)
	}
	return "bdd log:\n" + string(data)
}

func (b *BDD) cleanup(t testing.TB) {
	if b.cmd != nil {
		select {
		case <-b.exited:
		default:
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			if list, err := b.Client.List(ctx, &bddv1.ListRequest{}); err == nil {
				for _, dev := range list.GetDevices() {
					if _, err := b.Client.Detach(ctx, &bddv1.DetachRequest{Id: dev.GetId()}); err != nil {
						t.Errorf("testenv: bdd cleanup: detach %s: %v", dev.GetId(), err)
					}
				}
			}
			cancel()
			_ = b.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-b.exited:
			case <-time.After(15 * time.Second):
				t.Errorf("testenv: bdd did not stop on SIGTERM")
				_ = b.cmd.Process.Kill()
				<-b.exited
			}
		}
	}
	b.stopKeeper()
	b.conn.Close()
	if t.Failed() {
		t.Log(b.log())
	}
}

// stopKeeper kills the descriptor keeper bdd starts (it outlives bdd by design) and lazily
// unmounts the FUSE files left behind, so that the temp dir can be removed.
func (b *BDD) stopKeeper() {
	cfg := bdd.DefaultConfig()
	cfg.RunDir = b.runDir()
	if data, err := os.ReadFile(bdd.KeeperPIDFile(cfg)); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(25 * time.Millisecond) {
				if syscall.Kill(pid, 0) != nil {
					break
				}
			}
		}
	}
	_ = UnmountAll(b.runDir())
}
