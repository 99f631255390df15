// Package testenv runs the real programs obd's end-to-end tests need: a private containerd v2,
// nerdctl and ctr against it, and tiny OCI images built offline. It sits outside the read path of
// docs/DESIGN.md, at testing level 3: the top of the process picture (nerdctl → containerd → proxy
// snapshotter → bdd) assembled from the binaries scripts/setup.sh installs under OBD_DEPS.
//
// Tests using it skip, with the reason, when a program is not installed or they are not root;
// every process and directory they start is stopped and removed in t.Cleanup.
package testenv

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/obdproject/obd/internal/facility"
)

// DefaultDepsDir is where scripts/setup.sh installs built binaries when OBD_DEPS is unset.
const DefaultDepsDir = "/opt/obd-deps"

// DepsDir returns the install prefix of scripts/setup.sh: $OBD_DEPS or DefaultDepsDir.
func DepsDir() string {
	if dir := os.Getenv("OBD_DEPS"); dir != "" {
		return dir
	}
	return DefaultDepsDir
}

// RequireRoot ends the test unless it runs as root (mounts, loop devices, containerd): a
// missing facility (internal/facility), so a skip, or a failure under OBD_REQUIRE_E2E=1.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		facility.Missing(t, "testenv: needs root (mounts, loop devices, containerd)")
	}
}

// Bin returns the path of the program name, looked up first in DepsDir()/bin and then in PATH.
// It ends the test as a missing facility (internal/facility), saying how to install it, when
// the program is absent.
func Bin(t testing.TB, name string) string {
	t.Helper()
	path, ok := findBin(name)
	if !ok {
		facility.Missing(t, "testenv: %s not found in %s/bin or PATH (run `make deps`)", name, DepsDir())
	}
	return path
}

func findBin(name string) (string, bool) {
	candidate := filepath.Join(DepsDir(), "bin", name)
	if info, err := os.Stat(candidate); err == nil && !info.IsDir() && info.Mode()&0o111 != 0 {
		return candidate, true
	}
	path, err := exec.LookPath(name)
	return path, err == nil
}

// pathWithDeps returns a PATH value with DepsDir()/bin first, so that processes started by tests
// find the binaries setup.sh built (containerd looks up containerd-shim-runc-v2 on PATH).
func pathWithDeps() string {
	return filepath.Join(DepsDir(), "bin") + string(os.PathListSeparator) + os.Getenv("PATH")
}

// GoBuild builds the command package pkg of this module (e.g.
// "github.com/obdproject/obd/cmd/obd") into t.TempDir() and returns the binary's path.
func GoBuild(t testing.TB, pkg string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), filepath.Base(pkg))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
		t.Fatalf("testenv: go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}
