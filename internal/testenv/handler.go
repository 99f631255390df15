package testenv

import (
	"os"
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

// NewHandlerClient talks to p, a process of CheckpointHandler.
func NewHandlerClient(p *checkpoint.Process) *ckpthandler.Client {
	return ckpthandler.New(p.Stdin, p.Stdout, p.Stderr)
}

// ColdStartHandler starts the checkpoint handler, waits until it is initialized and asks it
// request 1: a cold start of the function.
func ColdStartHandler(t testing.TB) (*checkpoint.Process, *ckpthandler.Client) {
	t.Helper()
	p, err := checkpoint.Start(CheckpointHandler(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	c := NewHandlerClient(p)
	if r, err := c.Read(); err != nil || !r.Ready {
		t.Fatalf("testenv: cold start: %+v, %v", r, err)
	}
	if _, err := c.Ask(1); err != nil {
		t.Fatalf("testenv: cold start: %v", err)
	}
	return p, c
}
