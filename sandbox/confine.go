package sandbox

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Every process that runs code from an image (a runtime zygote, a cold sandbox, compile) is
// started through confine: the server's own binary, re-executed as confineArg0 in the new
// process's namespaces, a user namespace among them, that confines itself and then executes
// the image's python3. So the image's code, python3 itself included, runs confined from its
// first instruction:
//   - user namespace: uid and gid 0..65535 inside map to Config.UIDBase.. outside, an
//     unprivileged range: no capability over anything of the host (its files, mounts,
//     network namespace, devices all belong to the initial user namespace);
//   - a network namespace of its own with only a loopback (a function zygote makes one per
//     function for the sandboxes it forks);
//   - capabilities: a sandbox (cold, compile) runs as nobody inside and holds none; a zygote
//     runs as root inside holding only zygoteCaps (clone into new PID/UTS/IPC namespaces,
//     chroot each child, set its hostname, make it nobody), which every child it forks drops;
//   - no_new_privs, so nothing regains privileges through exec (setuid files, file caps);
//   - a seccomp filter (seccomp.go) and rlimits;
//   - its root is a detached mount tree (tree.go), entered with chroot.

// confineArg0 is argv[0] of the server's binary re-executed to confine a process.
const confineArg0 = "obd-sandbox-confine"

// zygoteCaps are the capabilities (in its user namespace) a zygote keeps: to clone sandboxes
// into namespaces (and a function zygote its network namespace), chroot them and make them
// nobody. Not CAP_NET_ADMIN: the server brings a function's loopback up.
var zygoteCaps = []uintptr{unix.CAP_SYS_ADMIN, unix.CAP_SYS_CHROOT, unix.CAP_SETUID, unix.CAP_SETGID}

// idRange is how many uids (and gids) a sandbox user namespace maps.
const idRange = 65536

// confineSpec is what confine does before it executes Argv.
type confineSpec struct {
	Root     int      `json:"root"`    // fd of the mount tree to chroot into
	Exe      int      `json:"exe"`     // fd of this binary (it was executed through it)
	Keep     int      `json:"keep"`    // fds 3..3+Keep-1 pass on to Argv; others are closed
	Cgroups  []int    `json:"cgroups"` // cgroup.procs fds to join
	Hostname string   `json:"hostname,omitempty"`
	Zygote   bool     `json:"zygote"` // keep zygoteCaps as root; else become nobody
	Filter   []byte   `json:"filter"` // seccomp BPF (struct sock_filter array)
	Argv     []string `json:"argv"`
	Env      []string `json:"env"`
}

func init() {
	if len(os.Args) == 2 && os.Args[0] == confineArg0 {
		err := confine(os.Args[1])
		fmt.Fprintf(os.Stderr, "obd sandbox: confine: %v\n", err)
		os.Exit(126)
	}
}

// confine runs in the new process (root of its user namespace, in its other namespaces):
// it confines itself as spec says and executes spec.Argv. It returns only on error.
func confine(arg string) error {
	// no_new_privs, the bounding set and the seccomp filter are per thread: the thread that
	// executes Argv must be the one that set them.
	runtime.LockOSThread()
	var s confineSpec
	if err := json.Unmarshal([]byte(arg), &s); err != nil {
		return err
	}
	unix.Close(s.Exe)
	for _, fd := range s.Cgroups {
		// "0" moves the writer: right in any PID namespace.
		if _, err := unix.Write(fd, []byte("0")); err != nil {
			return fmt.Errorf("join cgroup: %w", err)
		}
		unix.Close(fd)
	}
	if s.Hostname != "" {
		if err := unix.Sethostname([]byte(s.Hostname)); err != nil {
			return fmt.Errorf("sethostname: %w", err)
		}
	}
	if err := loopbackUp(); err != nil {
		return err
	}
	last, err := lastCap() // /proc is not in the root
	if err != nil {
		return err
	}
	if err := unix.Fchdir(s.Root); err != nil {
		return fmt.Errorf("enter root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	unix.Close(s.Root)
	if err := setRlimits(); err != nil {
		return err
	}
	if err := dropCapabilities(s.Zygote, last); err != nil {
		return err
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	// Nothing of the server's beyond the fds passed on (Go's own are close-on-exec already).
	if err := unix.CloseRange(uint(3+s.Keep), ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return fmt.Errorf("close_range: %w", err)
	}
	if err := loadFilter(s.Filter); err != nil {
		return err
	}
	return syscall.Exec(s.Argv[0], s.Argv, s.Env)
}

// loopbackUp brings up the loopback interface of the process's (new) network namespace: the
// only interface there.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	return nil
}

// rlimits bound what one process may hold beyond its cgroup's limits.
var rlimits = []struct {
	resource int
	value    uint64
}{
	{unix.RLIMIT_CORE, 0},
	{unix.RLIMIT_NOFILE, 4096},
	{unix.RLIMIT_MEMLOCK, 64 << 10},
	{unix.RLIMIT_MSGQUEUE, 0},
	{unix.RLIMIT_RTPRIO, 0},
	{unix.RLIMIT_NICE, 0},
	{unix.RLIMIT_SIGPENDING, 4096},
}

func setRlimits() error {
	for _, r := range rlimits {
		if err := unix.Setrlimit(r.resource, &unix.Rlimit{Cur: r.value, Max: r.value}); err != nil {
			return fmt.Errorf("setrlimit %d: %w", r.resource, err)
		}
	}
	return nil
}

// dropCapabilities leaves the thread with zygoteCaps (zygote) or, as nobody, none. The
// bounding set shrinks first (it needs CAP_SETPCAP), so an exec cannot give back more.
func dropCapabilities(zygote bool, last uintptr) error {
	keep := map[uintptr]bool{}
	if zygote {
		for _, c := range zygoteCaps {
			keep[c] = true
		}
	}
	for c := uintptr(0); c <= last; c++ {
		if !keep[c] {
			if err := unix.Prctl(unix.PR_CAPBSET_DROP, c, 0, 0, 0); err != nil {
				return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
			}
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	if !zygote {
		// From root to nobody: the kernel clears every capability.
		if err := syscall.Setgroups(nil); err != nil {
			return fmt.Errorf("setgroups: %w", err)
		}
		if err := syscall.Setresgid(nobody, nobody, nobody); err != nil {
			return fmt.Errorf("setresgid: %w", err)
		}
		if err := syscall.Setresuid(nobody, nobody, nobody); err != nil {
			return fmt.Errorf("setresuid: %w", err)
		}
		return nil
	}
	var data [2]unix.CapUserData
	for c := range keep {
		data[c/32].Effective |= 1 << (c % 32)
		data[c/32].Permitted |= 1 << (c % 32)
	}
	if err := unix.Capset(&unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}, &data[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	return nil
}

func lastCap() (uintptr, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, fmt.Errorf("cap_last_cap: %w", err)
	}
	n, err := strconv.Atoi(string(b[:len(b)-1]))
	if err != nil {
		return 0, fmt.Errorf("cap_last_cap %q: %w", b, err)
	}
	return uintptr(n), nil
}

// loadFilter installs the seccomp filter prog (struct sock_filter array) on this thread.
func loadFilter(prog []byte) error {
	if len(prog) == 0 || len(prog)%8 != 0 {
		return fmt.Errorf("seccomp filter of %d bytes", len(prog))
	}
	fprog := unix.SockFprog{Len: uint16(len(prog) / 8), Filter: (*unix.SockFilter)(unsafe.Pointer(&prog[0]))}
	if err := unix.Prctl(unix.PR_SET_SECCOMP, unix.SECCOMP_MODE_FILTER, uintptr(unsafe.Pointer(&fprog)), 0, 0); err != nil {
		return fmt.Errorf("seccomp: %w", err)
	}
	return nil
}

// confined is a process of image code started through confine.
type confined struct {
	root     *mountTree // its root
	files    []*os.File // fds 3.. of the process
	cgroups  []*os.File // cgroup.procs files it joins before anything runs
	hostname string
	zygote   bool
	flags    uintptr // namespaces besides the user namespace
	argv     []string
	stdout   io.Writer // default: stderr
	stderr   io.Writer
}

// sandboxEnv is the environment of image code.
func sandboxEnv(poolName string) []string {
	return []string{"PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1", "OBD_SANDBOX=" + poolName}
}

// command returns the exec.Cmd that starts p through confine. exe is the server's binary.
func (m *Manager) command(p confined) (*exec.Cmd, error) {
	sandboxF, zygoteF, _, err := filters()
	if err != nil {
		return nil, err
	}
	filter := sandboxF
	if p.zygote {
		filter = zygoteF
	}
	files := append(append([]*os.File{}, p.files...), p.cgroups...)
	s := confineSpec{Keep: len(p.files), Hostname: p.hostname, Zygote: p.zygote, Filter: filterBytes(filter), Argv: p.argv,
		Env: sandboxEnv(m.poolName)}
	for i := range p.cgroups {
		s.Cgroups = append(s.Cgroups, 3+len(p.files)+i)
	}
	s.Root = 3 + len(files)
	s.Exe = s.Root + 1
	files = append(files, p.root.f, m.exe)
	js, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	stdout := p.stdout
	if stdout == nil {
		stdout = p.stderr
	}
	ids := []syscall.SysProcIDMap{{ContainerID: 0, HostID: m.cfg.UIDBase, Size: idRange}}
	return &exec.Cmd{
		Path:       "/proc/self/fd/" + strconv.Itoa(s.Exe),
		Args:       []string{confineArg0, string(js)},
		Env:        []string{},
		Dir:        "/",
		Stdout:     stdout,
		Stderr:     p.stderr,
		ExtraFiles: files,
		SysProcAttr: &syscall.SysProcAttr{
			// Its own network namespace: only a loopback, reaching nothing of the host's or
			// another function's (abstract unix sockets included).
			Cloneflags:                 unix.CLONE_NEWUSER | unix.CLONE_NEWNET | p.flags,
			UidMappings:                ids,
			GidMappings:                ids,
			GidMappingsEnableSetgroups: true,
			Credential:                 &syscall.Credential{Uid: 0, Gid: 0}, // root of the namespace: the helper confines itself
			// Only the server may outlive its processes: if it dies they go too.
			Pdeathsig: syscall.SIGKILL,
		},
	}, nil
}
