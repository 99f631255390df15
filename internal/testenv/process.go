package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// processStopTimeout is how long a program StartProcess started may take to exit on SIGTERM
// before it is killed.
const processStopTimeout = 10 * time.Second

// StartProcess starts binary with args as a process group of its own (DepsDir()/bin first on its
// PATH), logging to logPath, and waits up to 30 s until ready reports nil. It fails the test,
// with the log's tail, when the program exits first or is not ready in time. The group is
// stopped in t.Cleanup (SIGTERM, then SIGKILL after 10 s) and the log's tail is printed if the
// test failed.
func StartProcess(t testing.TB, logPath string, ready func() error, binary string, args ...string) {
	t.Helper()
	name := filepath.Base(binary)
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatalf("testenv: %s log: %v", name, err)
	}
	defer logFile.Close()
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = append(os.Environ(), "PATH="+pathWithDeps())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("testenv: start %s: %v", name, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(processStopTimeout):
			t.Logf("testenv: %s did not stop within %v of SIGTERM: killed", name, processStopTimeout)
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		if t.Failed() {
			t.Logf("%s log (%s):\n%s", name, logPath, logTail(logPath, 40))
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
			done <- exitErr // for the cleanup
			t.Fatalf("testenv: %s exited during start (%v):\n%s", name, exitErr, logTail(logPath, 40))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("testenv: %s not ready after 30 s: %v\n%s", name, err, logTail(logPath, 40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// SocketReady is a readiness check for StartProcess: the unix socket at path accepts
// connections.
func SocketReady(path string) func() error {
	return func() error { return dialReady("unix", path) }
}

// TCPReady is a readiness check for StartProcess: the TCP address accepts connections.
func TCPReady(addr string) func() error {
	return func() error { return dialReady("tcp", addr) }
}

func dialReady(network, addr string) error {
	c, err := net.DialTimeout(network, addr, time.Second)
	if err != nil {
		return err
	}
	return c.Close()
}

// logTail returns the last n lines of the log at path, for failure messages.
func logTail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// FreeAddr returns a 127.0.0.1 address whose port was free a moment ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
