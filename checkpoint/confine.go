package checkpoint

import (
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// confineScript is the confining stage of a handler started with Spec.Root.
//
//go:embed confine.py
var confineScript string

// hostPython runs the confining stage; the handler itself is the image's program.
const hostPython = "/usr/bin/python3"

// Nobody is the user a confined handler runs as, inside its user namespace.
const Nobody = 65534

// userNSSize is how many uids (and gids) from Spec.UIDBase a confined handler's user
// namespace maps: 0..65535 inside.
const userNSSize = 65536

// rootMountKey names a confined handler's root mount among a checkpoint's external mounts:
// its image rootfs is not in the checkpoint, Restore binds RestoreOptions.Root in its place.
const rootMountKey = "obd-root"

// confineConfig is the confining stage's CONFIG (confine.py).
type confineConfig struct {
	Root     string      `json:"root"`
	UID      int         `json:"uid"`
	Argv     []string    `json:"argv"`
	Binds    [][2]any    `json:"binds,omitempty"` // [fd, target]
	Hostname string      `json:"hostname,omitempty"`
	Rlimits  [][2]uint64 `json:"rlimits,omitempty"`
	Filter   string      `json:"filter,omitempty"`
}

// confined returns how to start spec confined: the host's python3 running the confining
// stage, which execs spec's program inside spec.Root, and the handler's fds from 3 on: a
// detached tree per bind, which the stage attaches (the caller closes its copies).
func confined(spec Spec) (path string, args []string, attr *syscall.SysProcAttr, files []*os.File, err error) {
	if !filepath.IsAbs(spec.Root) {
		return "", nil, nil, nil, fmt.Errorf("checkpoint: start: root %q is not absolute", spec.Root)
	}
	if spec.UIDBase <= 0 || spec.UIDBase > 1<<31-userNSSize {
		return "", nil, nil, nil, fmt.Errorf("checkpoint: start: uid base %d: want a positive base of %d unused host uids", spec.UIDBase, userNSSize)
	}
	if fi, err := os.Stat(filepath.Join(spec.Root, "proc")); err != nil || !fi.IsDir() {
		return "", nil, nil, nil, errors.New("checkpoint: start: the root has no /proc directory to mount a proc on")
	}
	if err := checkBinds(spec.Binds); err != nil {
		return "", nil, nil, nil, fmt.Errorf("checkpoint: start: %w", err)
	}
	cfg := confineConfig{Root: spec.Root, UID: Nobody, Argv: append([]string{spec.Path}, spec.Args[1:]...),
		Hostname: spec.Hostname, Rlimits: spec.Rlimits, Filter: hex.EncodeToString(spec.Filter)}
	for _, b := range spec.Binds {
		fd, err := detachedBind(b.Source)
		if err != nil {
			closeFiles(files)
			return "", nil, nil, nil, fmt.Errorf("checkpoint: start: bind %s: %w", b.Source, err)
		}
		cfg.Binds = append(cfg.Binds, [2]any{3 + len(files), b.Target})
		files = append(files, os.NewFile(uintptr(fd), b.Source))
	}
	js, err := json.Marshal(cfg)
	if err != nil {
		closeFiles(files)
		return "", nil, nil, nil, err
	}
	ids := []syscall.SysProcIDMap{{ContainerID: 0, HostID: spec.UIDBase, Size: userNSSize}}
	attr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWNET |
			syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS,
		UidMappings: ids, GidMappings: ids, GidMappingsEnableSetgroups: true,
		Credential: &syscall.Credential{Uid: 0, Gid: 0}, Setsid: true,
	}
	return hostPython, []string{"python3", "-I", "-c", confineScript, string(js)}, attr, files, nil
}

// detachedBind returns a detached, private, read-only, nosuid and nodev clone of the mount
// tree at src, made here as real root: the handler's mount namespace cannot bind a path of
// the caller's (nor may its root search src's parents), but it may attach a detached tree.
func detachedBind(src string) (int, error) {
	fd, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
	if err != nil {
		return -1, err
	}
	attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV, Propagation: unix.MS_PRIVATE}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, attr); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// maxBinds bounds a confined handler's binds (and a checkpoint's record of them).
const maxBinds = 32

// checkBinds checks that binds have distinct, clean, absolute targets other than /, /proc.
func checkBinds(binds []Bind) error {
	if len(binds) > maxBinds {
		return fmt.Errorf("%d binds, at most %d", len(binds), maxBinds)
	}
	seen := map[string]bool{}
	for _, b := range binds {
		if err := checkBindTarget(b.Target); err != nil {
			return err
		}
		if seen[b.Target] {
			return fmt.Errorf("bind target %s given twice", b.Target)
		}
		seen[b.Target] = true
	}
	return nil
}

// checkBindTarget accepts an absolute, clean path below / but not in /proc, free of the
// characters criu's external-mount syntax uses.
func checkBindTarget(t string) error {
	if !filepath.IsAbs(t) || filepath.Clean(t) != t || t == "/" || t == "/proc" || strings.HasPrefix(t, "/proc/") ||
		strings.ContainsAny(t, "[]:,\x00\n") || len(t) > 256 {
		return fmt.Errorf("bind target %q: want a clean absolute path outside / and /proc", t)
	}
	return nil
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
