package coldstart

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/obdproject/obd/internal/testenv"
)

// stopTimeout is how long a daemon may take to exit on SIGTERM before it is killed; the
// benchmark's daemons hold no state worth a graceful stop once a run is over.
const stopTimeout = 5 * time.Second

// startDaemon starts binary with args as a process group of its own, logging to logPath, and
// waits until ready reports nil. The group is stopped (SIGTERM, then SIGKILL after stopTimeout)
// in t.Cleanup; its log tail is printed if the test failed.
func startDaemon(t testing.TB, logPath string, ready func() error, binary string, args ...string) {
	t.Helper()
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatalf("daemon log: %v", err)
	}
	defer logFile.Close()
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = append(os.Environ(), "PATH="+filepath.Join(testenv.DepsDir(), "bin")+":"+os.Getenv("PATH"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", filepath.Base(binary), err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(stopTimeout):
			t.Logf("%s did not stop within %v of SIGTERM: killed", filepath.Base(binary), stopTimeout)
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		if t.Failed() {
			t.Logf("%s log (%s):\n%s", filepath.Base(binary), logPath, tail(logPath, 40))
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := ready()
		if err == nil {
			return
		}
		select {
		case exitErr := <-done:
			done <- exitErr
			t.Fatalf("%s exited during start (%v):\n%s", filepath.Base(binary), exitErr, tail(logPath, 40))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after 30 s: %v\n%s", filepath.Base(binary), err, tail(logPath, 40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// socketReady reports whether a unix socket accepts connections.
func socketReady(path string) func() error {
	return func() error { return dialReady("unix", path) }
}

// tcpReady reports whether a TCP address accepts connections.
func tcpReady(addr string) func() error {
	return func() error { return dialReady("tcp", addr) }
}

func dialReady(network, addr string) error {
	c, err := net.DialTimeout(network, addr, time.Second)
	if err != nil {
		return err
	}
	return c.Close()
}

func tail(path string, lines int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	all := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// nerdctl runs nerdctl against a test's containerd with one snapshotter.
type nerdctl struct {
	ctrd        *testenv.Containerd
	binary      string
	snapshotter string
	toml        string
}

func newNerdctl(t testing.TB, ctrd *testenv.Containerd, snapshotter string) *nerdctl {
	t.Helper()
	toml := filepath.Join(ctrd.Dir, "bench-nerdctl.toml")
	if err := os.WriteFile(toml, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return &nerdctl{ctrd: ctrd, binary: testenv.Bin(t, "nerdctl"), snapshotter: snapshotter, toml: toml}
}

func (n *nerdctl) command(ctx context.Context, args ...string) *exec.Cmd {
	global := []string{
		"--address", n.ctrd.Address, "--namespace", n.ctrd.Namespace,
		"--data-root", filepath.Join(n.ctrd.Dir, "nerdctl"), "--cgroup-manager", "cgroupfs",
		"--snapshotter", n.snapshotter, "--insecure-registry",
	}
	cmd := exec.CommandContext(ctx, n.binary, append(global, args...)...)
	cmd.Env = append(os.Environ(), "NERDCTL_TOML="+n.toml)
	return cmd
}

// run runs nerdctl to completion and returns how long it took.
func (n *nerdctl) run(ctx context.Context, args ...string) (time.Duration, error) {
	cmd := n.command(ctx, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	if err != nil {
		return took, fmt.Errorf("nerdctl %s: %w\n%s", strings.Join(args, " "), err, out.String())
	}
	return took, nil
}

// untilLine runs nerdctl and returns when its standard output printed line (the container is
// ready), measured from the command's start; it still waits for the command to exit.
func (n *nerdctl) untilLine(ctx context.Context, line string, args ...string) (time.Time, error) {
	cmd := n.command(ctx, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return time.Time{}, err
	}
	if err := cmd.Start(); err != nil {
		return time.Time{}, fmt.Errorf("nerdctl %s: %w", strings.Join(args, " "), err)
	}
	var readyAt time.Time
	var seen []string
	scanner := bufio.NewScanner(stdout)
	for scanner.Scan() {
		text := scanner.Text()
		if readyAt.IsZero() && strings.TrimSpace(text) == line {
			readyAt = time.Now()
		}
		if len(seen) < 20 {
			seen = append(seen, text)
		}
	}
	err = cmd.Wait()
	if err == nil && readyAt.IsZero() {
		err = fmt.Errorf("exited without printing %q", line)
	}
	if err != nil {
		return readyAt, fmt.Errorf("nerdctl %s: %w\nstdout:\n%s\nstderr:\n%s",
			strings.Join(args, " "), err, strings.Join(seen, "\n"), stderr.String())
	}
	return readyAt, nil
}
