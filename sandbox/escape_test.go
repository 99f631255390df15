package sandbox

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/obdproject/obd/internal/facility"
	"github.com/obdproject/obd/sandbox/sandboxapi"
)

// The escape suite: real sandboxes, each attempt of a hostile handler (or image) must fail.

// seccompOnly are the probes an unprivileged process may do on this host without a seccomp
// filter: their denial shows the filter is in place.
var seccompOnly = []string{"unshare_user", "clone_user", "ptrace", "keyctl", "add_key", "io_uring_setup"}

// hostFile writes a file on the host, readable by everyone, that no sandbox may read.
func hostFile(t *testing.T) string {
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	p := filepath.Join(dir, "secret")
	if err := os.WriteFile(p, []byte("host secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// checkDenied fails for every probe of out that succeeded, except those allowed.
func checkDenied(t *testing.T, who string, out map[string]any, allowed ...string) {
	t.Helper()
	if len(out) < 20 {
		t.Fatalf("%s: probe returned %v", who, out)
	}
	for k, v := range out {
		if k == "setuid_mount_exit" {
			if v == 0.0 {
				t.Errorf("%s: the image's setuid mount(8) succeeded", who)
			}
			continue
		}
		if v == 0.0 && !contains(allowed, k) {
			t.Errorf("%s: %s succeeded, want it denied", who, k)
		}
	}
	for _, k := range seccompOnly {
		if out[k] != "EPERM" {
			t.Errorf("%s: %s: %v, want EPERM from the seccomp filter", who, k, out[k])
		}
	}
}

// checkSandboxCreds checks the privileges of function fn's sandbox as the kernel reports them:
// none, no_new_privs, a seccomp filter, the rlimits.
func checkSandboxCreds(t *testing.T, who string, m *Manager, fn string) {
	t.Helper()
	creds, _ := invoke(t, m, fn, map[string]any{"op": "creds"})
	want := map[string]any{"cap_effective": 0.0, "cap_permitted": 0.0, "no_new_privs": 1.0, "seccomp": 2.0,
		"rlimit_core": 0.0, "rlimit_nofile": 4096.0}
	for k, v := range want {
		if creds[k] != v {
			t.Errorf("%s %s = %v, want %v", who, k, creds[k], v)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func requireAmd64(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("the escape probes use x86_64 syscall numbers")
	}
}

func TestEscapeFromHandler(t *testing.T) {
	requireAmd64(t)
	secret := hostFile(t)
	forEachPath(t, func(t *testing.T, m *Manager) {
		register(t, m, "victim", nil)
		register(t, m, "attacker", nil)
		victimCode := filepath.Join(m.funcs["victim"].Dir, "main.py")
		watch := []string{testRootfs(t), filepath.Dir(secret), filepath.Dir(victimCode), m.cfg.StateDir}
		before := mountPoints(t, watch...)
		out, _ := invoke(t, m, "attacker", map[string]any{"op": "escape", "paths": []string{victimCode, secret}})
		checkDenied(t, "handler", out)
		checkSandboxCreds(t, "handler", m, "attacker")
		for _, k := range []string{"read_0", "read_1", "walk_0", "walk_1"} {
			if out[k] != "ENOENT" {
				t.Errorf("%s: %v, want ENOENT (not in the sandbox's root)", k, out[k])
			}
		}
		if after := mountPoints(t, watch...); after != before {
			t.Errorf("host mount table changed:\nbefore %s\nafter %s", before, after)
		}
		// Still serving, and the victim unharmed.
		if out, _ := invoke(t, m, "victim", map[string]any{"op": "echo", "value": "ok"}); out["echo"] != "ok" {
			t.Errorf("victim after the attack: %v", out)
		}
	})
}

// mountPoints lists the host's mount points at or under any of dirs (other tests of the
// machine mount elsewhere meanwhile).
func mountPoints(t *testing.T, dirs ...string) string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		p := strings.Fields(sc.Text())[4]
		for _, d := range dirs {
			if p == d || strings.HasPrefix(p, d+"/") {
				b.WriteString(p + "\n")
				break
			}
		}
	}
	return b.String()
}

// runDir is a new directory under /run, removed after the test.
func runDir(t *testing.T) string {
	d, err := os.MkdirTemp("/run", "obd-escape-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// overlayImage makes an image (DirProvider root, ref "img") that is the test rootfs with
// changes: mutate runs on a writable overlay of it. The rootfs itself is never written.
func overlayImage(t *testing.T, mutate func(img string)) string {
	t.Helper()
	root := t.TempDir()
	os.Chmod(root, 0o755)
	img := filepath.Join(root, "img")
	for _, d := range []string{img, root + "/upper", root + "/work"} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	lower := filepath.Join(testRootfs(t), "python3-bookworm")
	opts := "lowerdir=" + lower + ",upperdir=" + root + "/upper,workdir=" + root + "/work"
	if out, err := exec.Command("mount", "-t", "overlay", "overlay", "-o", opts, img).CombinedOutput(); err != nil {
		facility.Missing(t, "no overlayfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", img).Run() })
	mutate(img)
	return root
}

func TestEscapeFromImageCode(t *testing.T) {
	requireAmd64(t)
	secret := hostFile(t)
	src, err := os.ReadFile("testdata/handler.py")
	if err != nil {
		t.Fatal(err)
	}
	paths, _ := json.Marshal([]string{secret})
	// A module of the image that the zygote imports: it probes from inside the zygote, which
	// holds more than a sandbox (chroot, sethostname in its own namespaces), and reports on
	// the server's sandbox log.
	evil := string(src) + "\nimport sys\nsys.stderr.write('EV' + 'IL ' + json.dumps(escape({'paths': " + string(paths) + "})) + '\\n')\n" +
		"sys.stderr.write('CR' + 'EDS ' + json.dumps(handler({'op': 'creds'})) + '\\n')\nsys.stderr.flush()\n"
	root := overlayImage(t, func(img string) {
		if err := os.WriteFile(filepath.Join(img, "usr/lib/python3.11/evil.py"), []byte(evil), 0o644); err != nil {
			t.Fatal(err)
		}
	})
	m := newTestManager(t, func(c *Config) { c.Rootfs = DirProvider{Root: root}; c.Imports = []string{"json", "evil"} })
	watch := []string{root + "/img", filepath.Dir(secret), m.cfg.StateDir}
	before := mountPoints(t, watch...)
	register(t, m, "f", func(f *Function) { f.Image = "img" })
	// A warm start: the zygote has imported everything by then.
	if out, res := invoke(t, m, "f", map[string]any{"op": "echo", "value": "ok"}); out["echo"] != "ok" || res.Path != sandboxapi.Warm {
		t.Errorf("after the zygote's probe: %v on the %s path", out, res.Path)
	}
	log, err := os.ReadFile(filepath.Join(m.cfg.StateDir, "sandboxes.log"))
	if err != nil {
		t.Fatal(err)
	}
	_, report, ok := strings.Cut(string(log), "EVIL ")
	if !ok {
		t.Fatalf("the image's module did not report from the zygote; log:\n%s", log)
	}
	var out map[string]any
	if err := json.Unmarshal([]byte(strings.SplitN(report, "\n", 2)[0]), &out); err != nil {
		t.Fatal(err)
	}
	_, credsLine, _ := strings.Cut(string(log), "CREDS ")
	var creds map[string]any
	if err := json.Unmarshal([]byte(strings.SplitN(credsLine, "\n", 2)[0]), &creds); err != nil {
		t.Fatalf("zygote's creds: %v", err)
	}
	var caps uint64
	for _, c := range zygoteCaps {
		caps |= 1 << c
	}
	if creds["cap_effective"] != float64(caps) || creds["no_new_privs"] != 1.0 || creds["seccomp"] != 2.0 {
		t.Errorf("zygote creds %v, want capabilities %#x only, no_new_privs, a seccomp filter", creds, caps)
	}
	// Its own namespaces and tree are the zygote's to change; nothing else.
	checkDenied(t, "zygote", out, "sethostname", "chroot")
	for _, k := range []string{"read_0", "walk_0"} {
		if out[k] != "ENOENT" {
			t.Errorf("zygote: %s: %v, want ENOENT (not in its root)", k, out[k])
		}
	}
	if after := mountPoints(t, watch...); after != before {
		t.Errorf("host mount table changed:\nbefore %s\nafter %s", before, after)
	}
}

func TestEscapeThroughSymlinkedMountTargets(t *testing.T) {
	// Not under /tmp: the image's /tmp is one of the links.
	hostTmp, hostSrv, hostDev := runDir(t), runDir(t), runDir(t)
	root := overlayImage(t, func(img string) {
		// /tmp is an absolute symlink to a host dir, /srv climbs out with "..", /dev/null
		// points at a host file. Resolved in the image's root, each lands inside the image.
		for _, l := range []struct{ link, target string }{
			{"tmp", hostTmp},
			{"srv", strings.Repeat("../", 20) + hostSrv[1:]},
			{"dev/null", hostDev + "/null"},
		} {
			p := filepath.Join(img, l.link)
			if err := os.RemoveAll(p); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(l.target, p); err != nil {
				t.Fatal(err)
			}
		}
		for _, d := range []string{hostTmp, hostSrv, hostDev} {
			if err := os.MkdirAll(filepath.Join(img, d), 0o777); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(img, hostDev, "null"), nil, 0o666); err != nil {
			t.Fatal(err)
		}
	})
	os.WriteFile(filepath.Join(hostDev, "null"), nil, 0o666)
	forEachPathWith(t, func(c *Config) { c.Rootfs = DirProvider{Root: root} }, func(t *testing.T, m *Manager) {
		watch := []string{hostTmp, hostSrv, hostDev, root + "/img", m.cfg.StateDir}
		before := mountPoints(t, watch...)
		register(t, m, "f", func(f *Function) { f.Image = "img" })
		// The handler ran from the code at /srv, wrote its scratch and /dev/null.
		if out, _ := invoke(t, m, "f", map[string]any{"op": "write", "path": "/tmp/x"}); out["errno"] != 0.0 {
			t.Errorf("write to the scratch dir: %v", out)
		}
		if out, _ := invoke(t, m, "f", map[string]any{"op": "devices"}); out["full"] == nil {
			t.Errorf("devices: %v", out)
		}
		if after := mountPoints(t, watch...); after != before {
			t.Errorf("host mount table changed:\nbefore %s\nafter %s", before, after)
		}
		for _, d := range []string{hostTmp, hostSrv} {
			if ents, _ := os.ReadDir(d); len(ents) > 0 {
				t.Errorf("host dir %s written through a symlinked mount target: %v", d, ents)
			}
		}
		if st, _ := os.Stat(filepath.Join(hostDev, "null")); st == nil || st.Size() != 0 {
			t.Errorf("host file behind the image's /dev/null symlink written")
		}
	})
}

func TestEscapeByExhaustion(t *testing.T) {
	forEachPath(t, func(t *testing.T, m *Manager) {
		register(t, m, "hog", func(f *Function) { f.Pids = 16; f.ScratchMB = 8; f.MemoryMB = 128 })
		register(t, m, "other", nil)
		// A fork bomb stops at the sandbox's pids limit.
		out, _ := invoke(t, m, "hog", map[string]any{"op": "fork", "n": 100, "bomb": true})
		if out["errno"] != "EAGAIN" || out["forked"].(float64) >= 16 {
			t.Errorf("fork bomb under pids.max 16: %v, want EAGAIN before 16", out)
		}
		// Filling /tmp stops at the scratch tmpfs's size, not the host disk's.
		out, _ = invoke(t, m, "hog", map[string]any{"op": "fill", "path": "/tmp/big", "limit_mb": 64})
		if out["errno"] != "ENOSPC" || out["written_mb"].(float64) > 8 {
			t.Errorf("filling an 8 MiB scratch: %v, want ENOSPC by 8 MiB", out)
		}
		if out, _ := invoke(t, m, "other", map[string]any{"op": "echo", "value": "ok"}); out["echo"] != "ok" {
			t.Errorf("another function during the attack: %v", out)
		}
	})
}

func TestEscapeOverTheNetwork(t *testing.T) {
	forEachPath(t, func(t *testing.T, m *Manager) {
		register(t, m, "listener", nil)
		register(t, m, "talker", nil)
		name := "obd-escape-" + filepath.Base(t.TempDir())
		if out, _ := invoke(t, m, "listener", map[string]any{"op": "abstract", "listen": true, "name": name}); out["errno"] != 0.0 {
			t.Fatalf("listen on an abstract socket: %v", out)
		}
		// The listener's sandbox is cached (hot), its socket open; another function cannot
		// reach it: it has a network namespace of its own.
		if out, _ := invoke(t, m, "talker", map[string]any{"op": "abstract", "name": name}); out["errno"] != "ECONNREFUSED" {
			t.Errorf("another function connecting to the abstract socket: %v, want ECONNREFUSED", out)
		}
		// Nor can the host.
		if c, err := net.Dial("unix", "@"+name); err == nil {
			c.Close()
			t.Errorf("the host reached the sandbox's abstract socket")
		}
		if out, _ := invoke(t, m, "talker", map[string]any{"op": "loopback"}); out["errno"] != 0.0 {
			t.Errorf("the sandbox's own loopback: %v", out)
		}
	})
}

func TestLimitsAreCapped(t *testing.T) {
	m := newTestManager(t, func(c *Config) {
		c.MaxLimits = Limits{MemoryMB: 256, Pids: 64, ScratchMB: 32}
		// Every sandbox and zygote together: at most 12 processes.
		c.PoolLimits.Pids = 12
	})
	for _, over := range []func(*Function){
		func(f *Function) { f.MemoryMB = 257 },
		func(f *Function) { f.Pids = 65 },
		func(f *Function) { f.ScratchMB = 33 },
		func(f *Function) { f.Timeout = time.Hour },
	} {
		f := Function{Name: "big", Image: "python3-bookworm", Entry: "main.handler", Dir: handlerDir(t)}
		over(&f)
		if err := m.Register(context.Background(), f); err == nil || !strings.Contains(err.Error(), "maximum") {
			t.Errorf("registering %+v: %v, want refused over the maximum", f, err)
		}
	}
	register(t, m, "bomb", func(f *Function) { f.Pids = 64; f.ScratchMB = 16 })
	out, _ := invoke(t, m, "bomb", map[string]any{"op": "fork", "n": 100, "bomb": true})
	if out["errno"] != "EAGAIN" || out["forked"].(float64) >= 12 {
		t.Errorf("fork bomb under the pool's 12 processes: %v, want EAGAIN before 12", out)
	}
}

func TestChildPid(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	// Same PID namespace: the child's pid there is its host pid.
	if pid, err := childPid(os.Getpid(), cmd.Process.Pid); err != nil || pid != cmd.Process.Pid {
		t.Errorf("childPid = %d, %v; want %d", pid, err, cmd.Process.Pid)
	}
	if _, err := childPid(os.Getpid(), 1<<30); err == nil {
		t.Error("childPid found a child that does not exist")
	}
}
