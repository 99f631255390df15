package testenv

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/internal/facility"
)

// TestNerdctlRunBusybox is the end-to-end smoke test of the environment itself: a private
// containerd, an image built offline, `nerdctl load` and `nerdctl run` through runc.
func TestNerdctlRunBusybox(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: starts containerd and runs a container")
	}
	ctrd := StartContainerd(t, ContainerdOptions{})
	img := BuildBusyboxImage(t)

	out := ctrd.Nerdctl(t, "load", "-i", img.Archive)
	if !strings.Contains(out, "Loaded image") {
		t.Fatalf("nerdctl load: unexpected output:\n%s", out)
	}
	if got := ctrd.Ctr(t, "images", "ls", "-q"); !strings.Contains(got, img.Ref) {
		t.Fatalf("ctr images ls does not list %s:\n%s", img.Ref, got)
	}

	out = ctrd.Nerdctl(t, "run", "--rm", "--net", "none", img.Ref, "sh", "-c", "echo hello-from-$(cat /proc/1/comm)")
	if strings.TrimSpace(out) != "hello-from-sh" {
		t.Fatalf("nerdctl run output = %q, want %q", out, "hello-from-sh")
	}
	if got := ctrd.Nerdctl(t, "ps", "-a", "-q"); strings.TrimSpace(got) != "" {
		t.Fatalf("container left behind after --rm: %q", got)
	}
}

// TestCleanupRemovesLeftoverContainers checks that a test which leaves a container running
// does not leave its shim or runtime state behind.
func TestCleanupRemovesLeftoverContainers(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: starts containerd and runs a container")
	}
	img := BuildBusyboxImage(t)
	var namespace string
	t.Run("leaves a container running", func(t *testing.T) {
		ctrd := StartContainerd(t, ContainerdOptions{})
		namespace = ctrd.Namespace
		ctrd.Nerdctl(t, "load", "-i", img.Archive)
		ctrd.Nerdctl(t, "run", "-d", "--net", "none", img.Ref, "sleep", "600")
	})
	if namespace == "" {
		t.Skip("the subtest did not start containerd")
	}
	if _, err := os.Stat(filepath.Join("/run/containerd/runc", namespace)); !os.IsNotExist(err) {
		t.Errorf("runc state of namespace %s left behind: %v", namespace, err)
	}
	procs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range procs {
		cmdline, err := os.ReadFile(p)
		if err == nil && strings.Contains(string(cmdline), "-namespace\x00"+namespace+"\x00") {
			t.Errorf("process %s of namespace %s survived: %q", p, namespace, cmdline)
		}
	}
}

func TestConfigListsProxyPlugins(t *testing.T) {
	c := &Containerd{Dir: "/d", Address: "/d/c.sock"}
	cfg := c.config([]ProxyPlugin{{Name: "overlaybd", Type: "snapshot", Address: "/s/obd.sock"}})
	for _, want := range []string{
		"version = 3\n",
		`root = "/d/root"`,
		`state = "/d/state"`,
		"[grpc]\n  address = \"/d/c.sock\"",
		"[proxy_plugins.\"overlaybd\"]\n  type = \"snapshot\"\n  address = \"/s/obd.sock\"",
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("config lacks %q:\n%s", want, cfg)
		}
	}
}

func TestUnmountAllUnmountsNested(t *testing.T) {
	RequireRoot(t)
	dir := t.TempDir()
	outer := filepath.Join(dir, "a b") // a space exercises mountinfo's escaping
	inner := filepath.Join(outer, "inner")
	if err := os.MkdirAll(outer, 0o755); err != nil {
		t.Fatal(err)
	}
	mountTmpfs(t, outer)
	if err := os.Mkdir(inner, 0o755); err != nil {
		t.Fatal(err)
	}
	mountTmpfs(t, inner)

	if err := UnmountAll(dir); err != nil {
		t.Fatalf("UnmountAll: %v", err)
	}
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), dir) {
		t.Fatalf("mounts under %s remain:\n%s", dir, data)
	}
}

// TestBinSkipsWhenAbsent: Bin ends the test for a program it cannot find (a skip, or a
// failure under OBD_REQUIRE_E2E=1, as internal/facility tests) and finds one in OBD_DEPS.
func TestBinSkipsWhenAbsent(t *testing.T) {
	t.Setenv(facility.RequireEnv, "")
	t.Setenv("OBD_DEPS", t.TempDir())
	t.Setenv("PATH", t.TempDir())
	skipped := true
	t.Run("absent", func(t *testing.T) {
		Bin(t, "no-such-program")
		skipped = false
	})
	if !skipped {
		t.Fatal("Bin returned for a program that does not exist")
	}

	bin := filepath.Join(DepsDir(), "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "tool"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got := Bin(t, "tool"); got != filepath.Join(bin, "tool") {
		t.Fatalf("Bin(tool) = %q, want the OBD_DEPS copy", got)
	}
}

// TestBDDSurvivesKill9: a device attached before bdd is killed with SIGKILL is served by the
// restarted bdd on the same block device, with what was written to it.
func TestBDDSurvivesKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: builds and runs bdd")
	}
	b := StartBDD(t)
	ctx := context.Background()
	resp, err := b.Client.Attach(ctx, &bddv1.AttachRequest{UpperDir: filepath.Join(t.TempDir(), "upper"),
		UpperSize: 16 << 20, Transport: bddv1.Transport_TRANSPORT_FUSE})
	if err != nil {
		t.Fatal(err)
	}
	dev := resp.GetDevice()
	want := []byte("written before the kill")
	if err := writeSynced(dev.GetDevicePath(), want, 1<<20); err != nil {
		t.Fatal(err)
	}
	b.Kill9(t)
	if _, err := b.Client.List(ctx, &bddv1.ListRequest{}); err == nil {
		t.Fatal("bdd answered after SIGKILL")
	}
	b.Start(t)
	list, err := b.Client.List(ctx, &bddv1.ListRequest{})
	if err != nil {
		t.Fatalf("restarted bdd: %v", err)
	}
	if len(list.GetDevices()) != 1 || list.GetDevices()[0].GetDevicePath() != dev.GetDevicePath() {
		t.Fatalf("restarted bdd serves %+v, want the device attached before the kill at %s", list.GetDevices(), dev.GetDevicePath())
	}
	got := make([]byte, len(want))
	f, err := os.Open(dev.GetDevicePath())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(got, 1<<20); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read %q, %v after the restart; want %q", got, err, want)
	}
}

// writeSynced writes p at off of the block device at path and flushes it.
func writeSynced(path string, p []byte, off int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(p, off); err != nil {
		f.Close()
		return err
	}
	return errors.Join(f.Sync(), f.Close())
}
