package testenv

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/obdproject/obd/checkpoint"
	"github.com/obdproject/obd/internal/ckpthandler"
	"github.com/obdproject/obd/internal/facility"
)

// NeedCRIU returns the installed criu (make deps builds it); without it, root or
// /usr/bin/python3 the test skips with the reason (fails under OBD_REQUIRE_E2E=1).
func NeedCRIU(t testing.TB) *checkpoint.CRIU {
	t.Helper()
	if os.Geteuid() != 0 {
		facility.Missing(t, "criu dump/restore need root")
	}
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		facility.Missing(t, "the checkpoint handler needs /usr/bin/python3: %v", err)
	}
	c, err := checkpoint.Find()
	if err != nil {
		facility.Missing(t, "%v", err)
	}
	return c
}

// CheckpointHandler is package checkpoint's test handler (checkpoint/testdata/handler.py:
// imports about 20 stdlib modules, builds a sqlite table, then answers {"k": N} lines) as
// checkpoint.Start runs it.
func CheckpointHandler(t testing.TB) checkpoint.Spec {
	t.Helper()
	return checkpoint.Spec{Path: "/usr/bin/python3", Args: []string{"python3", "-I", ckpthandler.Script()}, Dir: "/", Env: []string{"LANG=C.UTF-8"}}
}

// ConfinedHandler is CheckpointHandler confined on root, an image's rootfs with python3 (the
// python image, mounted): checkpoint.Spec.Root, its code passed with -c.
func ConfinedHandler(t testing.TB, root string) checkpoint.Spec {
	t.Helper()
	script, err := os.ReadFile(ckpthandler.Script())
	if err != nil {
		t.Fatal(err)
	}
	return checkpoint.Spec{Path: "/usr/bin/python3", Args: []string{"python3", "-I", "-c", string(script)}, Env: []string{"LANG=C.UTF-8"},
		Root: root, UIDBase: 1_000_000_000}
}

// StartHandler starts spec's handler and waits until it is initialized.
func StartHandler(t testing.TB, spec checkpoint.Spec) (*checkpoint.Process, *ckpthandler.Client) {
	t.Helper()
	p, err := checkpoint.Start(spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	c := NewHandlerClient(p)
	if r, err := c.Read(); err != nil || !r.Ready {
		t.Fatalf("testenv: start: %+v, %v", r, err)
	}
	return p, c
}

// NewHandlerClient talks to p, a process of CheckpointHandler.
func NewHandlerClient(p *checkpoint.Process) *ckpthandler.Client {
	return ckpthandler.New(p.Stdin, p.Stdout, p.Stderr)
}

// ColdStartHandler starts spec's handler, waits until it is initialized and asks it request
// 1: a cold start of the function.
func ColdStartHandler(t testing.TB, spec checkpoint.Spec) (*checkpoint.Process, *ckpthandler.Client) {
	t.Helper()
	p, c := StartHandler(t, spec)
	if _, err := c.Ask(1); err != nil {
		t.Fatalf("testenv: cold start: %v", err)
	}
	return p, c
}

// SearchableDir is a temp dir whose path the root of a confined handler's user namespace (an
// unprivileged host uid) can walk, as checkpoint.Spec.Root and a confined restore's images
// need: every directory from it up to the temp root gets o+x.
func SearchableDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	for d := dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
