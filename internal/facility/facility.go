// Package facility is how a test says it cannot run here: a machine facility it needs (root,
// /dev/fuse, a tool, overlayfs, a reachable archive) is missing. It is test infrastructure
// beside internal/testenv, with no dependencies, so that any package's tests can use it
// (testenv itself links the daemon, which a package below it cannot import).
//
// A missing facility skips the test and says why, except under OBD_REQUIRE_E2E=1, which
// .ci/run sets: CI's machine is equipped by `make deps`, so a missing facility there is a
// broken install and fails the test instead of hiding it. The few facilities CI's hosts
// truly lack are named by an Exempt and always skip.
package facility

import (
	"fmt"
	"os"
	"testing"
)

// RequireEnv is the environment variable under which Missing fails instead of skipping.
const RequireEnv = "OBD_REQUIRE_E2E"

// Required reports whether RequireEnv is set to 1.
func Required() bool { return os.Getenv(RequireEnv) == "1" }

// Missing ends t for a facility the machine lacks (the message says which, and how to get
// it): a skip, or under OBD_REQUIRE_E2E=1 a failure.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if Required() {
		t.Fatalf("%s=1 and a facility is missing: %s", RequireEnv, msg)
	}
	t.Skip(msg)
}

// Exempt is a facility that CI's hosts truly lack, so a test needing it always skips; its
// text says why.
type Exempt string

// KernelNBD is the kernel's NBD driver (/dev/nbd*): the project's hosts, CI's included,
// run a kernel without the nbd module and cannot load one.
const KernelNBD Exempt = "kernel NBD (/dev/nbd*): the project's hosts, CI's included, have no nbd module"

// Absent ends t with a skip for an exempt facility, whatever OBD_REQUIRE_E2E says.
func Absent(t testing.TB, e Exempt, detail string) {
	t.Helper()
	t.Skipf("%s: %s", e, detail)
}
