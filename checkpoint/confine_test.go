package checkpoint

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/obdproject/obd/internal/facility"
)

// pythonRootfs is the Debian python3 rootfs scripts/mkrootfs.sh builds (once per machine).
func pythonRootfs(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("bash", "../scripts/mkrootfs.sh").Output()
	if err != nil {
		facility.Missing(t, "checkpoint: no python rootfs (scripts/mkrootfs.sh: %v)", err)
	}
	return strings.TrimSpace(string(out))
}

// TestConfinedDumpRestore: a handler confined as a sandbox is (nobody of a root-owned user
// namespace, no capabilities, no_new_privs, its own mount namespace rooted in the image's
// rootfs with a /proc of its PID namespace) is checkpointed and restored into a second bind of
// the same rootfs, eagerly and lazily: the restored processes answer with the dumped state and
// are as confined as it was (a lazy one only where vm.unprivileged_userfaultfd is 1; refused
// with ErrLazyConfined otherwise). A confined checkpoint refuses a restore without a root.
func TestConfinedDumpRestore(t *testing.T) {
	criu := needCRIU(t)
	root := pythonRootfs(t)
	spec := confinedSpec(t, root)
	orig, _, first := coldStart(t, spec)
	if first.Served != 1 || first.Pid != 1 {
		t.Fatalf("confined handler's first reply %+v", first)
	}
	status := func(pid int) string {
		st, _ := os.ReadFile("/proc/" + itoa(pid) + "/status")
		return string(st)
	}
	for _, want := range []string{"Uid:\t1000065534", "CapEff:\t0000000000000000", "NoNewPrivs:\t1"} {
		if !strings.Contains(status(orig.Pid), want) {
			t.Fatalf("confined handler's status lacks %q:\n%s", want, status(orig.Pid))
		}
	}
	// The restore reads images as an unprivileged identity: their path must be searchable.
	base := t.TempDir()
	for d := base; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	dir := filepath.Join(base, "img")
	if err := criu.Dump(criuCtx(t), orig, dir); err != nil {
		t.Fatal(err)
	}
	if _, err := criu.Restore(criuCtx(t), dir, RestoreOptions{}); err == nil || !strings.Contains(err.Error(), "confined") {
		t.Fatalf("restore without a root: err = %v", err)
	}
	for _, lazy := range []bool{false, true} {
		if lazy && !unprivilegedUFFD() {
			if _, err := criu.Restore(criuCtx(t), dir, RestoreOptions{Root: root, LazyPages: true}); !errors.Is(err, ErrLazyConfined) {
				t.Fatalf("lazy restore with %s = 0: err = %v, want ErrLazyConfined", uffdSysctl, err)
			}
			continue
		}
		p, c := restore(t, criu, dir, RestoreOptions{Root: root, LazyPages: lazy})
		r, err := c.Ask(42)
		if err != nil || r.Served != 2 || r.Pid != 1 {
			t.Fatalf("lazy=%v: restored reply %+v, %v; want served 2 by PID 1", lazy, r, err)
		}
		for _, want := range []string{"Uid:\t1000065534", "CapEff:\t0000000000000000", "NoNewPrivs:\t1"} {
			if !strings.Contains(status(p.Pid), want) {
				t.Fatalf("lazy=%v: restored handler's status lacks %q:\n%s", lazy, want, status(p.Pid))
			}
		}
		if mi, err := os.ReadFile("/proc/" + itoa(p.Pid) + "/mountinfo"); err != nil || strings.Count(string(mi), "\n") != 2 {
			t.Errorf("lazy=%v: restored handler's mounts = %q, %v; want its root and its /proc", lazy, mi, err)
		}
		p.Close()
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// bindHandler answers each line on stdin with a count, the content of /srv/x (a bind) and
// its hostname.
const bindHandler = `
import socket, sys
n = 0
for line in sys.stdin:
    n += 1
    print(n, open("/srv/x").read(), socket.gethostname(), flush=True)
`

// allowAll is a seccomp program of one instruction: return SECCOMP_RET_ALLOW.
var allowAll = []byte{0x06, 0, 0, 0, 0, 0, 0xff, 0x7f}

// TestConfinedBinds: a confined handler with a bind, a hostname, rlimits and a seccomp
// filter is checkpointed and restored with another source for its bind: it answers with its
// count carried over and the new source's content, under its filter and limits. A restore
// that leaves out a bind's source is refused.
func TestConfinedBinds(t *testing.T) {
	criu := needCRIU(t)
	root := pythonRootfs(t)
	base := t.TempDir()
	for d := base; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	srcs := [2]string{filepath.Join(base, "a"), filepath.Join(base, "b")}
	for i, s := range srcs {
		if err := os.Mkdir(s, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(s, "x"), []byte("src"+itoa(i)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	spec := Spec{Path: "/usr/bin/python3", Args: []string{"python3", "-I", "-c", bindHandler}, Env: []string{"LANG=C.UTF-8"},
		Root: root, UIDBase: 1_000_000_000, Binds: []Bind{{Source: srcs[0], Target: "/srv"}}, Hostname: "box-1",
		Rlimits: [][2]uint64{{7, 512}}, Filter: allowAll}
	p, err := Start(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ask := func(p *Process, want string) {
		t.Helper()
		if _, err := p.Stdin.Write([]byte("x\n")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		n, err := p.Stdout.Read(buf)
		if err != nil || string(buf[:n]) != want {
			t.Fatalf("reply %q, %v; want %q (stderr %s)", buf[:n], err, want, p.Stderr())
		}
	}
	ask(p, "1 src0 box-1\n")
	dir := filepath.Join(base, "img")
	if err := criu.Dump(criuCtx(t), p, dir); err != nil {
		t.Fatal(err)
	}
	if _, err := criu.Restore(criuCtx(t), dir, RestoreOptions{Root: root}); err == nil || !strings.Contains(err.Error(), "/srv") {
		t.Fatalf("restore without the bind's source: err = %v", err)
	}
	r, err := criu.Restore(criuCtx(t), dir, RestoreOptions{Root: root, Binds: map[string]string{"/srv": srcs[1]}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ask(r, "2 src1 box-1\n")
	st, _ := os.ReadFile("/proc/" + itoa(r.Pid) + "/status")
	for _, want := range []string{"Uid:\t1000065534", "CapEff:\t0000000000000000", "NoNewPrivs:\t1", "Seccomp:\t2"} {
		if !strings.Contains(string(st), want) {
			t.Fatalf("restored handler's status lacks %q:\n%s", want, st)
		}
	}
	if lim, _ := os.ReadFile("/proc/" + itoa(r.Pid) + "/limits"); !strings.Contains(string(lim), "Max open files            512                  512") {
		t.Fatalf("restored handler's limits:\n%s", lim)
	}
}
