package once

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// initArg0 is the name under which Run re-executes the program to enter the sandbox.
const initArg0 = "obd-sandbox-once-init"

// initFailed is the exit status of a sandbox that could not start the command (as a shell's
// 127 for a command not found).
const initFailed = 127

// initSpec is what the re-executed program needs to start the command.
type initSpec struct {
	Root   string   `json:"root"` // the overlay, mounted by Run
	Dir    string   `json:"dir"`
	Args   []string `json:"args"`
	Env    []string `json:"env"`
	UID    int      `json:"uid"`
	GID    int      `json:"gid"`
	Groups []int    `json:"groups,omitempty"`
}

func init() {
	if len(os.Args) != 2 || os.Args[0] != initArg0 {
		return
	}
	// The capability bounding set is per thread: the thread that drops it must execute the
	// command.
	runtime.LockOSThread()
	var spec initSpec
	err := json.Unmarshal([]byte(os.Args[1]), &spec)
	if err == nil {
		err = enter(spec) // returns only on failure
	}
	fmt.Fprintf(os.Stderr, "obd sandbox: %v\n", err)
	os.Exit(initFailed)
}

// hostDevices are the device nodes the sandbox's /dev gets from the host.
var hostDevices = []string{"null", "zero", "full", "random", "urandom", "tty"}

// enter runs in the new namespaces Run made: it sets up /proc and /dev in the root, enters it
// as the command's user and executes the command.
func enter(s initSpec) error {
	// Nothing mounted here may reach the host's mount namespace.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	proc := filepath.Join(s.Root, "proc")
	if err := mkdirMount("proc", proc, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return err
	}
	dev := filepath.Join(s.Root, "dev")
	if err := mkdirMount("tmpfs", dev, "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=755,size=1m"); err != nil {
		return err
	}
	for _, d := range hostDevices {
		target := filepath.Join(dev, d)
		if err := os.WriteFile(target, nil, 0o600); err != nil {
			return err
		}
		if err := unix.Mount("/dev/"+d, target, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind /dev/%s: %w", d, err)
		}
	}
	if err := mkdirMount("shm", filepath.Join(dev, "shm"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=1777,size=64m"); err != nil {
		return err
	}
	for name, target := range map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"} {
		if err := os.Symlink(target, filepath.Join(dev, name)); err != nil {
			return err
		}
	}
	if err := unix.Sethostname([]byte("obd-sandbox")); err != nil {
		return fmt.Errorf("hostname: %w", err)
	}
	// pivot_root, not chroot: the host's mounts are gone from this namespace, so no chroot
	// trick leads back to them.
	if err := unix.Chdir(s.Root); err != nil {
		return err
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root to %s: %w", s.Root, err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil { // the old root, now on top
		return fmt.Errorf("detach the host's root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	if err := dropCapabilities(); err != nil {
		return err
	}
	path, err := lookPath(s.Args[0], s.Env)
	if err != nil {
		return err
	}
	// As container runtimes do, a working directory the image lacks is made (in the overlay).
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return fmt.Errorf("working directory %s: %w", s.Dir, err)
	}
	if err := unix.Chdir(s.Dir); err != nil {
		return fmt.Errorf("working directory %s: %w", s.Dir, err)
	}
	if err := syscall.Setgroups(s.Groups); err != nil {
		return fmt.Errorf("groups %v: %w", s.Groups, err)
	}
	if err := syscall.Setgid(s.GID); err != nil {
		return fmt.Errorf("gid %d: %w", s.GID, err)
	}
	if err := syscall.Setuid(s.UID); err != nil {
		return fmt.Errorf("uid %d: %w", s.UID, err)
	}
	return fmt.Errorf("execute %s: %w", path, syscall.Exec(path, s.Args, s.Env))
}

// keptCapabilities are the capabilities the command may hold: those a container runtime
// grants by default (containerd's and Docker's set) less CAP_MKNOD, since no device cgroup
// guards the host's disks here.
var keptCapabilities = []int{
	unix.CAP_CHOWN, unix.CAP_DAC_OVERRIDE, unix.CAP_FSETID, unix.CAP_FOWNER, unix.CAP_SETGID,
	unix.CAP_SETUID, unix.CAP_SETPCAP, unix.CAP_NET_BIND_SERVICE, unix.CAP_NET_RAW,
	unix.CAP_SYS_CHROOT, unix.CAP_KILL, unix.CAP_AUDIT_WRITE, unix.CAP_SETFCAP,
}

// dropCapabilities removes every other capability from the bounding set, so the command
// (executed as root or not) can never hold one: mounting, loading modules, raw I/O.
func dropCapabilities() error {
	for c := 0; c <= unix.CAP_LAST_CAP; c++ {
		if slices.Contains(keptCapabilities, c) {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("drop capability %d: %w", c, err)
		}
	}
	return nil
}

func mkdirMount(source, target, fstype string, flags uintptr, data string) error {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(source, target, fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s on %s: %w", fstype, target, err)
	}
	return nil
}

// lookPath finds name as a shell would with the PATH of env, in the current root.
func lookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	path := DefaultPath
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		candidate := filepath.Join(dir, name)
		if st, err := os.Stat(candidate); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return candidate, nil
		}
	}
	return "", errors.New(name + ": command not found in PATH " + path)
}
