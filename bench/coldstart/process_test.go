package coldstart

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/obdproject/obd/internal/testenv"
)

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
