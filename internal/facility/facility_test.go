package facility

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestHelperMissing is run by TestMissing in a child process.
func TestHelperMissing(t *testing.T) {
	if os.Getenv("FACILITY_HELPER") != "1" {
		t.Skip("run by TestMissing")
	}
	Missing(t, "no %s here", "widget")
}

// TestHelperAbsent is run by TestAbsent in a child process.
func TestHelperAbsent(t *testing.T) {
	if os.Getenv("FACILITY_HELPER") != "1" {
		t.Skip("run by TestAbsent")
	}
	Absent(t, KernelNBD, "no /dev/nbd0")
}

// child runs test in a child test process with OBD_REQUIRE_E2E=require and returns its
// verbose output and whether it passed.
func child(t *testing.T, test, require string) (string, bool) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.v")
	cmd.Env = append(os.Environ(), "FACILITY_HELPER=1", RequireEnv+"="+require)
	out, err := cmd.CombinedOutput()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatal(err)
	}
	return string(out), err == nil
}

func TestMissing(t *testing.T) {
	out, ok := child(t, "TestHelperMissing", "")
	if !ok || !strings.Contains(out, "--- SKIP") || !strings.Contains(out, "no widget here") {
		t.Errorf("without %s: passed %v, want a skip saying why:\n%s", RequireEnv, ok, out)
	}
	out, ok = child(t, "TestHelperMissing", "1")
	if ok || !strings.Contains(out, "--- FAIL") || !strings.Contains(out, "no widget here") {
		t.Errorf("with %s=1: passed %v, want a failure saying why:\n%s", RequireEnv, ok, out)
	}
}

func TestAbsent(t *testing.T) {
	out, ok := child(t, "TestHelperAbsent", "1")
	if !ok || !strings.Contains(out, "--- SKIP") || !strings.Contains(out, "nbd module") {
		t.Errorf("an exempt facility under %s=1: passed %v, want a skip saying why:\n%s", RequireEnv, ok, out)
	}
}
