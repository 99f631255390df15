package bdd_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/internal/facility"
	"github.com/obdproject/obd/internal/testenv"
)

// bddBinary is cmd/bdd built once for the tests that run the daemon as a process.
var bddBinary string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "bdd-test-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	bddBinary = filepath.Join(dir, "bdd")
	out, err := exec.Command("go", "build", "-o", bddBinary, "github.com/obdproject/obd/cmd/bdd").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building cmd/bdd: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// requireBlockFacilities skips tests that need root, FUSE, loop devices and ext4 tools.
func requireBlockFacilities(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		facility.Missing(t, "needs root to mount FUSE, attach loop devices and mount ext4")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		facility.Missing(t, "/dev/fuse is absent: no FUSE transport here")
	}
	for _, tool := range []string{"mkfs.ext4", "losetup", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			facility.Missing(t, "%s is not installed (apt-get install e2fsprogs mount)", tool)
		}
	}
}

// daemon is a bdd process run by a test (testenv.BDD, from the binary TestMain built), with
// the helpers the tests here share.
type daemon struct {
	*testenv.BDD
	t testing.TB
}

// startDaemon starts bdd with its own state, cache and run dirs. extra is added to the config
// file. The daemon is stopped when the test ends.
func startDaemon(t testing.TB, extra string) *daemon {
	t.Helper()
	return &daemon{BDD: testenv.StartBDD(t, testenv.WithBinary(bddBinary), testenv.WithConfig(extra)), t: t}
}

func (d *daemon) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	d.t.Cleanup(cancel)
	return ctx
}

func (d *daemon) attach(req *bddv1.AttachRequest) *bddv1.Device {
	d.t.Helper()
	return d.attachTries(req, 1)
}

// attachTries attaches req, trying up to tries times, each failure logged; the last fails
// the test with bdd's log.
func (d *daemon) attachTries(req *bddv1.AttachRequest, tries int) *bddv1.Device {
	d.t.Helper()
	var err error
	for try := 1; try <= tries; try++ {
		var resp *bddv1.AttachResponse
		if resp, err = d.Client.Attach(d.ctx(), req); err == nil {
			return resp.GetDevice()
		}
		if try < tries {
			d.t.Logf("attach, try %d: %v", try, err)
		}
	}
	d.t.Fatalf("attach: %v\n%s", err, d.Logs())
	return nil
}

func pathLayers(paths ...string) []*bddv1.Layer {
	var ls []*bddv1.Layer
	for _, p := range paths {
		ls = append(ls, &bddv1.Layer{Source: &bddv1.Layer_Path{Path: p}})
	}
	return ls
}

// TestDaemonRejectsBadConfig runs the real binary with broken settings: it must
// exit with a message naming the problem, not panic or start.
func TestDaemonRejectsBadConfig(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "bdd.toml")
	os.WriteFile(cfg, []byte("[cache]\nsize = \"lots\"\n"), 0o600)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--config", cfg}, "invalid size"},
		{[]string{"--config", filepath.Join(dir, "missing.toml")}, "no such file"},
		{[]string{"--config", filepath.Join(dir, "missing.toml"), "--log-level", "chatty"}, "no such file"},
		{[]string{"--config", "/dev/null", "--transport", "smoke-signals"}, "unknown transport"},
		{[]string{"--config", "/dev/null", "--read-timeout", "-5s"}, "read_timeout must be positive"},
	} {
		out, err := exec.Command(bddBinary, tc.args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) || strings.Contains(string(out), "panic") {
			t.Errorf("bdd %v: %v\n%s\nwant a failure mentioning %q", tc.args, err, out, tc.want)
		}
	}
}
