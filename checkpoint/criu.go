package checkpoint

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
)

// KdatDir is where criu, as scripts/build-criu.sh builds it, caches its probe of the kernel
// (criu.kdat). It must be on a tmpfs, so that a reboot, which may bring another kernel, drops
// the cache.
const KdatDir = "/dev/shm/obd-criu"

// MinMajor is the oldest criu major version that works on the kernels obd targets: 3.17 fails
// at start on 6.x kernels ("Failed to fill self vdso symtable").
const MinMajor = 4

var (
	// ErrNoCRIU means no criu binary was found.
	ErrNoCRIU = errors.New("checkpoint: criu not found")
	// ErrOldCRIU means the criu found is older than MinMajor.
	ErrOldCRIU = errors.New("checkpoint: criu too old")
)

// CRIU runs one criu binary. Its methods need root (CAP_SYS_ADMIN and CAP_CHECKPOINT_RESTORE).
type CRIU struct {
	// Path is the criu binary.
	Path string
	// Version is what `criu --version` reported, e.g. "4.1.1".
	Version string
	// LogLevel is criu's -v level for its log files, 0 to 4; 0 means criu's default (2:
	// errors and warnings). 4 logs every step with timestamps, for finding where time goes.
	LogLevel int
}

// Find returns the criu that scripts/setup.sh installs ($OBD_DEPS/bin/criu, OBD_DEPS defaulting
// to /opt/obd-deps) or else the first on PATH, checked to be MinMajor or newer.
func Find() (*CRIU, error) {
	deps := os.Getenv("OBD_DEPS")
	if deps == "" {
		deps = "/opt/obd-deps"
	}
	path := filepath.Join(deps, "bin", "criu")
	if _, err := os.Stat(path); err != nil {
		p, lerr := exec.LookPath("criu")
		if lerr != nil {
			return nil, fmt.Errorf("%w in %s or PATH (run `make deps`)", ErrNoCRIU, filepath.Dir(path))
		}
		path = p
	}
	return New(path)
}

var versionRE = regexp.MustCompile(`(?m)^Version: (\d+)\.(\d+)(\.\d+)?`)

// New checks that the criu at path runs and is MinMajor or newer.
func New(path string) (*CRIU, error) {
	out, err := exec.Command(path, "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %s --version: %w", path, err)
	}
	m := versionRE.FindSubmatch(out)
	if m == nil {
		return nil, fmt.Errorf("checkpoint: %s --version: no version in %q", path, out)
	}
	major, _ := strconv.Atoi(string(m[1]))
	version := string(m[1]) + "." + string(m[2]) + string(m[3])
	if major < MinMajor {
		return nil, fmt.Errorf("%w: %s is %s, want %d.x or newer (scripts/build-criu.sh)", ErrOldCRIU, path, version, MinMajor)
	}
	return &CRIU{Path: path, Version: version}, nil
}

// ensureKdatDir makes KdatDir, root's alone: criu trusts the cache it reads there, so nobody
// else may be able to plant one.
func ensureKdatDir() error {
	if err := os.Mkdir(KdatDir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("checkpoint: kdat dir: %w", err)
	}
	info, err := os.Lstat(KdatDir)
	if err != nil {
		return fmt.Errorf("checkpoint: kdat dir: %w", err)
	}
	st, ok := info.Sys().(*syscall.Stat_t)
	if !info.IsDir() || info.Mode().Perm() != 0o700 || !ok || int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("checkpoint: kdat dir %s: want a directory of mode 0700 owned by uid %d, have %v", KdatDir, os.Geteuid(), info.Mode())
	}
	return nil
}

// run runs criu with args, its log going to logPath, and returns an error carrying the log's
// last lines when it fails. extra become the child's fds 3, 4, ...
func (c *CRIU) run(ctx context.Context, logPath string, extra []*os.File, args ...string) error {
	if err := ensureKdatDir(); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, c.Path, append(args, c.logArgs(logPath)...)...)
	cmd.Env = criuEnv()
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	cmd.ExtraFiles = extra
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("checkpoint: criu %s: %w: %s%s", args[0], err, strings.TrimSpace(stderr.String()), logTail(logPath))
	}
	return nil
}

// noBreakpoints is criu's switch (its fault-injection code FI_NO_BREAKPOINTS, read from
// CRIU_FAULT) for catching a task's return from the parasite or the restorer by stepping its
// system calls instead of with a hardware breakpoint. Some VMs never deliver a debug-register
// breakpoint to the guest (seen here on an AMD EPYC host): there criu waits in wait4 for
// ever, a dump once the parasite is cured, a restore once the restorer is done. Stepping costs
// a few ptrace stops more.
const noBreakpoints = "CRIU_FAULT=130"

// criuEnv is the environment criu runs with: obd's, without breakpoints.
func criuEnv() []string {
	env := []string{noBreakpoints}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CRIU_FAULT=") {
			env = append(env, kv)
		}
	}
	return env
}

// logArgs are criu's options for logging to path at c.LogLevel.
func (c *CRIU) logArgs(path string) []string {
	args := []string{"--log-file", path}
	if c.LogLevel > 0 {
		args = append(args, fmt.Sprintf("-v%d", min(c.LogLevel, 4)))
	}
	return args
}

// logTail returns the error lines of a criu log, or its last lines when it has none, prefixed
// with a newline; "" when the log cannot be read.
func logTail(path string) string {
	data, err := os.ReadFile(path)
	if err != nil || len(data) == 0 {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	var errs []string
	for _, l := range lines {
		if strings.Contains(l, "Error (") {
			errs = append(errs, l)
		}
	}
	if len(errs) == 0 {
		errs = lines[max(0, len(lines)-10):]
	}
	if len(errs) > 20 {
		errs = errs[len(errs)-20:]
	}
	return "\n" + path + ":\n" + strings.Join(errs, "\n")
}
