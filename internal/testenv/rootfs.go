package testenv

import (
	"errors"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/obdproject/obd/internal/facility"
)

// PythonRootfs returns the Debian bookworm + python3 rootfs that scripts/mkrootfs.sh builds
// (once per machine, cached under OBD_DEPS). It needs root; it skips only when debootstrap
// cannot reach the Debian archive, and fails on any other error.
func PythonRootfs(t testing.TB) string {
	t.Helper()
	RequireRoot(t)
	_, self, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("testenv: cannot locate the module")
	}
	script := filepath.Join(filepath.Dir(self), "..", "..", "scripts", "mkrootfs.sh")
	out, err := exec.Command("bash", script).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && strings.Contains(string(ee.Stderr), "debootstrap failed") {
			facility.Missing(t, "cannot build the python rootfs (is the Debian archive reachable?): %s", ee.Stderr)
		}
		t.Fatalf("testenv: mkrootfs.sh: %v", err)
	}
	return strings.TrimSpace(string(out))
}
