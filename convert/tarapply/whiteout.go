package tarapply

import (
	"errors"
	"fmt"
	"path"
	"strconv"

	"golang.org/x/sys/unix"
)

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
	// Other ".wh..wh." names are aufs bookkeeping (".wh..wh.plnk"): ignored.
	aufsMetaPrefix = ".wh..wh."
)

// whiteout consumes a whiteout entry in directory dir: ".wh.NAME" removes NAME,
// the opaque marker removes every entry of dir that this layer did not write.
// Entries are never stored.
func (a *applier) whiteout(dir, base string) error {
	if base != opaqueMarker && len(base) > len(aufsMetaPrefix) && base[:len(aufsMetaPrefix)] == aufsMetaPrefix {
		return nil
	}
	parent, err := a.openDir(dir, false)
	if errors.Is(err, unix.ENOENT) {
		return nil // nothing below to hide
	}
	if err != nil {
		return err
	}
	defer unix.Close(parent)
	if err := a.touch(parent); err != nil {
		return err
	}
	if base == opaqueMarker {
		a.markLayer(dir)
		names, err := readDirNames(parent)
		if err != nil {
			return fmt.Errorf("opaque %s: %w", dir, err)
		}
		for _, n := range names {
			if a.layer[path.Join(dir, n)] || (dir == "." && n == TrashName && a.trash >= 0) {
				continue
			}
			if err := a.remove(parent, n); err != nil {
				return fmt.Errorf("opaque %s: %w", dir, err)
			}
		}
		return nil
	}
	victim := base[len(whiteoutPrefix):]
	if victim == "" || victim == "." || victim == ".." {
		return fmt.Errorf("%w: whiteout of %q", ErrUnsafePath, victim)
	}
	if a.layer[path.Join(dir, victim)] {
		return nil // a whiteout never hides what its own layer wrote
	}
	return a.remove(parent, victim)
}

// remove takes parent/name away: at once, or into the trash with DeferRemoval.
func (a *applier) remove(parent int, name string) error {
	if a.trash < 0 {
		return removeAll(parent, name)
	}
	err := unix.Renameat(parent, name, a.trash, strconv.Itoa(a.trashed))
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	a.trashed++
	return nil
}

func (a *applier) openTrash() error {
	if err := removeAll(a.root, TrashName); err != nil {
		return err
	}
	if err := unix.Mkdirat(a.root, TrashName, 0o700); err != nil {
		return fmt.Errorf("tarapply: create %s: %w", TrashName, err)
	}
	fd, err := unix.Openat(a.root, TrashName, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("tarapply: open %s: %w", TrashName, err)
	}
	a.trash = fd
	return nil
}

// emptyTrash deletes the trash and everything moved into it.
func (a *applier) emptyTrash() error {
	if a.trash < 0 {
		return nil
	}
	a.closeTrash()
	if err := removeAll(a.root, TrashName); err != nil {
		return fmt.Errorf("tarapply: empty %s: %w", TrashName, err)
	}
	return nil
}

func (a *applier) closeTrash() {
	if a.trash >= 0 {
		unix.Close(a.trash)
		a.trash = -1
	}
}

// removeAll deletes parent/name and, for a directory, everything below it,
// without following symlinks. A missing name is not an error.
func removeAll(parent int, name string) error {
	err := unix.Unlinkat(parent, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	fd, err := unix.Openat(parent, name, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	names, err := readDirNames(fd)
	if err == nil {
		for _, n := range names {
			if err = removeAll(fd, n); err != nil {
				break
			}
		}
	}
	unix.Close(fd)
	if err != nil {
		return err
	}
	if err := unix.Unlinkat(parent, name, unix.AT_REMOVEDIR); err != nil {
		return fmt.Errorf("remove directory %s: %w", name, err)
	}
	return nil
}

// readDirNames lists the directory open at fd (without "." and "..").
func readDirNames(fd int) ([]string, error) {
	dup, err := unix.Openat(fd, ".", unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	var names []string
	buf := make([]byte, 32<<10)
	defer unix.Close(dup)
	for {
		n, err := unix.Getdents(dup, buf)
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			return names, nil
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
}
