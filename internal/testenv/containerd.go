package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
)

// ProxyPlugin is one `[proxy_plugins.<Name>]` entry of containerd's config.
type ProxyPlugin struct {
	Name    string // e.g. "overlaybd"
	Type    string // e.g. "snapshot"
	Address string // unix socket of the plugin's gRPC server
}

// ContainerdOptions configures StartContainerd.
type ContainerdOptions struct {
	// ProxyPlugins are registered in the config; containerd connects to them lazily.
	ProxyPlugins []ProxyPlugin
	// StartTimeout bounds the wait for containerd's socket; 30 s when zero.
	StartTimeout time.Duration
	// NodeConfig, when set, is a node's whole containerd config (version 3 TOML, such as
	// docs/containerd-cri.toml with its paths pointed at the test's) used instead of the
	// default one: the CRI plugin runs, and only the test's own root, state dir and sockets
	// are added. ProxyPlugins must then be empty (the config names its plugins itself).
	NodeConfig string
}

// Containerd is a containerd process private to one test: its own config, root, state dir,
// socket and namespace. Its log is printed when the test fails.
type Containerd struct {
	Address   string // gRPC unix socket
	Namespace string // containerd namespace used by Nerdctl and Ctr
	Dir       string // holds config.toml, root/, state/, the socket, the log and nerdctl's data
	LogPath   string

	cmd  *exec.Cmd
	done chan error // receives cmd.Wait's result once
	cri  bool       // runs the CRI plugin (NodeConfig), whose namespace is k8s.io
}

// commandTimeout bounds one nerdctl or ctr invocation so a wedged daemon fails the test
// instead of hanging it.
const commandTimeout = 3 * time.Minute

var namespaceSeq atomic.Int64

// StartContainerd starts containerd with a private `version = 3` config and waits until its
// socket accepts connections. CRI and NRI are disabled; the default runtime is runc via
// containerd-shim-runc-v2 from DepsDir()/bin. The process is stopped, its leftover mounts
// unmounted and its directories removed in t.Cleanup.
func StartContainerd(t testing.TB, opts ContainerdOptions) *Containerd {
	t.Helper()
	RequireRoot(t)
	binary := Bin(t, "containerd")
	Bin(t, "containerd-shim-runc-v2")
	Bin(t, "runc")

	// The socket path must stay under the 108-byte unix limit, so no t.TempDir() here.
	dir, err := os.MkdirTemp("", "obd-ctrd-")
	if err != nil {
		t.Fatalf("testenv: containerd dir: %v", err)
	}
	c := &Containerd{
		Address:   filepath.Join(dir, "containerd.sock"),
		Namespace: fmt.Sprintf("obdtest-%d-%d", os.Getpid(), namespaceSeq.Add(1)),
		Dir:       dir,
		LogPath:   filepath.Join(dir, "containerd.log"),
		done:      make(chan error, 1),
	}
	t.Cleanup(func() { c.cleanup(t) })

	if err := os.WriteFile(c.nerdctlTOML(), nil, 0o600); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	configPath := filepath.Join(dir, "config.toml")
	config := c.config(opts.ProxyPlugins)
	if opts.NodeConfig != "" {
		if len(opts.ProxyPlugins) > 0 {
			t.Fatal("testenv: NodeConfig and ProxyPlugins are exclusive")
		}
		c.cri, c.Namespace = true, CRINamespace
		config = c.nodeConfig(opts.NodeConfig)
	}
	if err := os.WriteFile(configPath, []byte(config), 0o600); err != nil {
		t.Fatalf("testenv: containerd config: %v", err)
	}
	logFile, err := os.Create(c.LogPath)
	if err != nil {
		t.Fatalf("testenv: containerd log: %v", err)
	}
	defer logFile.Close() // the child holds its own descriptor

	c.cmd = exec.Command(binary, "--config", configPath)
	c.cmd.Stdout = logFile
	c.cmd.Stderr = logFile
	c.cmd.Env = append(os.Environ(), "PATH="+pathWithDeps())
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("testenv: start containerd: %v", err)
	}
	go func() { c.done <- c.cmd.Wait() }()

	timeout := opts.StartTimeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	if err := c.waitReady(timeout); err != nil {
		t.Fatalf("testenv: containerd not ready: %v\n%s", err, c.logTail())
	}
	return c
}

func (c *Containerd) config(plugins []ProxyPlugin) string {
	var b strings.Builder
	fmt.Fprintf(&b, "version = 3\nroot = %q\nstate = %q\n", filepath.Join(c.Dir, "root"), filepath.Join(c.Dir, "state"))
	b.WriteString(`disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images", "io.containerd.nri.v1.nri"]` + "\n")
	fmt.Fprintf(&b, "[grpc]\n  address = %q\n", c.Address)
	fmt.Fprintf(&b, "[ttrpc]\n  address = %q\n", c.Address+".ttrpc")
	// By default containerd spaces collections 49 mean collection times apart, so one slow
	// collection (an fsync stall under the parallel test load) can hold a removed container's
	// snapshot from the snapshotter for tens of seconds. Tests wait on that removal, so
	// collect after every deletion.
	b.WriteString("[plugins.\"io.containerd.gc.v1.scheduler\"]\n  deletion_threshold = 1\n")
	for _, p := range plugins {
		fmt.Fprintf(&b, "[proxy_plugins.%q]\n  type = %q\n  address = %q\n", p.Name, p.Type, p.Address)
	}
	return b.String()
}

// nodeConfig is node (a version 3 config) with this containerd's root, state dir and sockets
// set in front of its tables. NRI stays off: its socket is one per host.
func (c *Containerd) nodeConfig(node string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "version = 3\nroot = %q\nstate = %q\n", filepath.Join(c.Dir, "root"), filepath.Join(c.Dir, "state"))
	b.WriteString(`disabled_plugins = ["io.containerd.nri.v1.nri"]` + "\n")
	fmt.Fprintf(&b, "[grpc]\n  address = %q\n", c.Address)
	fmt.Fprintf(&b, "[ttrpc]\n  address = %q\n", c.Address+".ttrpc")
	for line := range strings.Lines(node) {
		if strings.HasPrefix(strings.TrimSpace(line), "version") {
			continue
		}
		b.WriteString(line)
	}
	return b.String()
}

func (c *Containerd) waitReady(timeout time.Duration) error {
	deadline := time.After(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-c.done:
			c.done <- err // keep it for cleanup
			return fmt.Errorf("containerd exited during start: %v", err)
		case <-deadline:
			return fmt.Errorf("socket %s did not accept connections within %v", c.Address, timeout)
		case <-tick.C:
			conn, err := net.Dial("unix", c.Address)
			if err == nil {
				conn.Close()
				return nil
			}
		}
	}
}

// Nerdctl runs nerdctl against this containerd in its namespace, with its own data root, and
// returns its standard output. A non-zero exit fails the test with both output streams.
func (c *Containerd) Nerdctl(t testing.TB, args ...string) string {
	t.Helper()
	return c.run(t, Bin(t, "nerdctl"), c.nerdctlArgs(args))
}

// TryNerdctl runs nerdctl like Nerdctl but returns a failure (with its standard error) instead
// of failing the test, for commands that are expected to fail or polled until they succeed.
func (c *Containerd) TryNerdctl(args ...string) (stdout string, err error) {
	nerdctl, ok := findBin("nerdctl")
	if !ok {
		return "", errors.New("testenv: nerdctl not found (run `make deps`)")
	}
	stdout, stderr, err := c.exec(nerdctl, c.nerdctlArgs(args))
	if err != nil {
		return stdout, fmt.Errorf("nerdctl %s: %w: %s", strings.Join(args, " "), err, stderr)
	}
	return stdout, nil
}

func (c *Containerd) nerdctlArgs(args []string) []string {
	global := []string{
		"--address", c.Address,
		"--namespace", c.Namespace,
		"--data-root", filepath.Join(c.Dir, "nerdctl"),
		"--cgroup-manager", "cgroupfs",
	}
	return append(global, args...)
}

// Ctr runs ctr against this containerd in its namespace and returns its standard output.
// A non-zero exit fails the test with both output streams.
func (c *Containerd) Ctr(t testing.TB, args ...string) string {
	t.Helper()
	global := []string{"--address", c.Address, "--namespace", c.Namespace}
	return c.run(t, Bin(t, "ctr"), append(global, args...))
}

// TryCtr runs ctr like Ctr but returns a failure (with its standard error) instead of failing
// the test.
func (c *Containerd) TryCtr(args ...string) (stdout string, err error) {
	ctr, ok := findBin("ctr")
	if !ok {
		return "", errors.New("testenv: ctr not found (run `make deps`)")
	}
	stdout, stderr, err := c.exec(ctr, append([]string{"--address", c.Address, "--namespace", c.Namespace}, args...))
	if err != nil {
		return stdout, fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, stderr)
	}
	return stdout, nil
}

func (c *Containerd) run(t testing.TB, binary string, args []string) string {
	t.Helper()
	stdout, stderr, err := c.exec(binary, args)
	if err != nil {
		t.Fatalf("testenv: %s %s: %v\nstdout:\n%s\nstderr:\n%s", filepath.Base(binary), strings.Join(args, " "), err, stdout, stderr)
	}
	return stdout
}

func (c *Containerd) exec(binary string, args []string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(os.Environ(), "PATH="+pathWithDeps(), "NERDCTL_TOML="+c.nerdctlTOML())
	var out, errOut bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

// nerdctlTOML is an empty nerdctl config, which keeps a host-wide /etc/nerdctl/nerdctl.toml
// out of the test.
func (c *Containerd) nerdctlTOML() string { return filepath.Join(c.Dir, "nerdctl.toml") }

// removeContainers kills and deletes the containers a failed test left in the namespace, so
// that no shim or container outlives it.
func (c *Containerd) removeContainers(t testing.TB) {
	ctr, ok := findBin("ctr")
	if !ok {
		return
	}
	global := []string{"--address", c.Address, "--namespace", c.Namespace}
	ids, _, err := c.exec(ctr, append(global, "containers", "ls", "-q"))
	if err != nil {
		t.Logf("testenv: list containers: %v", err)
		return
	}
	for _, id := range strings.Fields(ids) {
		_, _, _ = c.exec(ctr, append(global, "tasks", "delete", "--force", id))
		if _, stderr, err := c.exec(ctr, append(global, "containers", "delete", id)); err != nil {
			t.Logf("testenv: delete container %s: %v: %s", id, err, stderr)
		}
		t.Logf("testenv: removed container %s left by the test", id)
	}
}

// running reports whether the containerd process has not exited.
func (c *Containerd) running() bool {
	select {
	case err := <-c.done:
		c.done <- err // keep it for cleanup
		return false
	default:
		return true
	}
}

// logTail returns the last lines of containerd's log for failure messages.
func (c *Containerd) logTail() string {
	return "containerd log (" + c.LogPath + ", last lines):\n" + logTail(c.LogPath, 80)
}

func (c *Containerd) cleanup(t testing.TB) {
	if c.cmd != nil && c.cmd.Process != nil {
		if c.running() {
			c.removeContainers(t)
		}
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(15 * time.Second):
			_ = c.cmd.Process.Kill()
			<-c.done
		}
	}
	if t.Failed() {
		t.Log(c.logTail())
	}
	if err := UnmountAll(c.Dir); err != nil {
		t.Errorf("testenv: %v", err)
	}
	// The runc shim keeps per-namespace state outside containerd's state dir; CRI's namespace
	// k8s.io is shared with other tests' containerds.
	if !c.cri {
		_ = os.RemoveAll(filepath.Join("/run/containerd/runc", c.Namespace))
	}
	if err := os.RemoveAll(c.Dir); err != nil {
		t.Errorf("testenv: remove %s: %v", c.Dir, err)
	}
}

// UnmountAll lazily unmounts every mount point at or below dir, deepest first, so that a test
// that failed half-way does not leave mounts behind that block removing its directories.
func UnmountAll(dir string) error {
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return fmt.Errorf("read mountinfo: %w", err)
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i].Mountpoint) > len(mounts[j].Mountpoint) })
	var errs []error
	for _, m := range mounts {
		if err := syscall.Unmount(m.Mountpoint, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m.Mountpoint, err))
		}
	}
	return errors.Join(errs...)
}
