package sandbox

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// mountTree is a detached mount tree (open_tree(OPEN_TREE_CLONE), fsmount): a set of mounts
// attached to no mount namespace, known by a file descriptor. Sandboxes and zygotes get their
// root from one, entered with fchdir and chroot, so:
//   - ".." at the tree's root leads nowhere: a process holding the tree's fd (a zygote is
//     passed each sandbox's) reaches the tree and nothing of the host around it;
//   - nothing is mounted in the server's namespace, so a killed server leaves no mounts
//     behind: a tree goes away with its last fd and the last process rooted in it.
//
// Mounts are attached at targets resolved inside the tree (openat2 with RESOLVE_IN_ROOT), so
// an image's symlinks (/tmp -> /etc, say) resolve within the image and never to host paths.
type mountTree struct {
	f *os.File
}

func newTree(fd int) *mountTree { return &mountTree{f: os.NewFile(uintptr(fd), "mount-tree")} }

func (t *mountTree) fd() int { return int(t.f.Fd()) }

// roAttrs are the attributes of every mount of an image or of code: read-only, and no
// setuid or device files honoured.
const roAttrs = unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV

// cloneTree returns a detached copy of the mount at path (a bind, not recursive) with attrs
// set, private.
func cloneTree(path string, attrs uint64) (*mountTree, error) {
	fd, err := unix.OpenTree(unix.AT_FDCWD, path, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("sandbox: clone mount of %s: %w", path, err)
	}
	t := newTree(fd)
	// Private before anything is mounted in it: a clone of a shared mount is its peer, and
	// mounts in it would propagate to the host's.
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_set: attrs, Propagation: unix.MS_PRIVATE}); err != nil {
		t.close()
		return nil, fmt.Errorf("sandbox: mount of %s: mount_setattr: %w", path, err)
	}
	return t, nil
}

// clone returns a detached copy of t with every mount in it.
func (t *mountTree) clone() (*mountTree, error) {
	fd, err := unix.OpenTree(t.fd(), "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE|unix.AT_EMPTY_PATH)
	if err != nil {
		return nil, fmt.Errorf("sandbox: clone mount tree: %w", err)
	}
	return newTree(fd), nil
}

// errNoTarget is returned by attach for a target the tree does not have.
var errNoTarget = errors.New("sandbox: mount target missing")

// attach mounts m (a detached tree, consumed) at target, a path inside t resolved inside t's
// root: symlinks in the image cannot point it anywhere else.
func (t *mountTree) attach(target string, m *mountTree) error {
	defer m.close()
	dst, err := unix.Openat2(t.fd(), target, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("%w: %s", errNoTarget, target)
	}
	if err != nil {
		return fmt.Errorf("sandbox: mount target %s: %w", target, err)
	}
	defer unix.Close(dst)
	if err := unix.MoveMount(m.fd(), "", dst, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return fmt.Errorf("sandbox: mount at %s: %w", target, err)
	}
	return nil
}

// tmpfs returns a new tmpfs, size bytes at most, its root owned by uid with mode 0700,
// nosuid and nodev.
func tmpfs(size int64, uid int) (*mountTree, error) {
	fs, err := unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("sandbox: tmpfs: %w", err)
	}
	defer unix.Close(fs)
	for _, kv := range [][2]string{
		{"size", strconv.FormatInt(size, 10)},
		{"nr_inodes", strconv.FormatInt(max(size/4096, 64), 10)},
		{"mode", "0700"},
		{"uid", strconv.Itoa(uid)},
		{"gid", strconv.Itoa(uid)},
	} {
		if err := unix.FsconfigSetString(fs, kv[0], kv[1]); err != nil {
			return nil, fmt.Errorf("sandbox: tmpfs %s=%s: %w", kv[0], kv[1], err)
		}
	}
	if err := unix.FsconfigCreate(fs); err != nil {
		return nil, fmt.Errorf("sandbox: tmpfs: %w", err)
	}
	fd, err := unix.Fsmount(fs, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV)
	if err != nil {
		return nil, fmt.Errorf("sandbox: tmpfs: %w", err)
	}
	return newTree(fd), nil
}

// close drops the server's reference; the tree is unmounted once no process is rooted in it.
func (t *mountTree) close() error {
	if t == nil || t.f == nil {
		return nil
	}
	err := t.f.Close()
	t.f = nil
	return err
}

// hostDevices are the device nodes a sandbox gets, bound from the host over the image's own
// (which nodev disables).
var hostDevices = []string{"null", "zero", "random", "urandom"}

// bindDevices binds each host device over the node of the same name in t's /dev, where the
// image has one to mount over.
func (t *mountTree) bindDevices() error {
	for _, d := range hostDevices {
		// Not nodev (unlike the image it is mounted on): the device must work.
		dev, err := cloneTree("/dev/"+d, unix.MOUNT_ATTR_RDONLY|unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NOEXEC)
		if err != nil {
			return err
		}
		if err := t.attach("dev/"+d, dev); err != nil && !errors.Is(err, errNoTarget) {
			return err
		}
	}
	return nil
}
