package checkpoint

import (
	_ "embed"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
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

// confined returns how to start spec confined: the host's python3 running the confining
// stage, which execs spec's program inside spec.Root.
func confined(spec Spec) (path string, args []string, attr *syscall.SysProcAttr, err error) {
	if !filepath.IsAbs(spec.Root) {
		return "", nil, nil, fmt.Errorf("checkpoint: start: root %q is not absolute", spec.Root)
	}
	if spec.UIDBase <= 0 || spec.UIDBase > 1<<31-userNSSize {
		return "", nil, nil, fmt.Errorf("checkpoint: start: uid base %d: want a positive base of %d unused host uids", spec.UIDBase, userNSSize)
	}
	if fi, err := os.Stat(filepath.Join(spec.Root, "proc")); err != nil || !fi.IsDir() {
		return "", nil, nil, errors.New("checkpoint: start: the root has no /proc directory to mount a proc on")
	}
	ids := []syscall.SysProcIDMap{{ContainerID: 0, HostID: spec.UIDBase, Size: userNSSize}}
	args = append([]string{"python3", "-I", "-c", confineScript, spec.Root, strconv.Itoa(Nobody), spec.Path}, spec.Args[1:]...)
	attr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWNET |
			syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS,
		UidMappings: ids, GidMappings: ids, GidMappingsEnableSetgroups: true,
		Credential: &syscall.Credential{Uid: 0, Gid: 0}, Setsid: true,
	}
	return hostPython, args, attr, nil
}
