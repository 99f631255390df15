package tarapply

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// dirState is a directory the layer created or changed: where it is and the
// access and modification times it gets back once the layer is applied.
type dirState struct {
	path         string // root-relative, symlinks resolved
	atime, mtime unix.Timespec
}

// touch records the directory open at fd, with its current times, before the
// layer first changes it; later calls for the same directory do nothing.
func (a *applier) touch(fd int) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat directory: %w", err)
	}
	if _, ok := a.dirs[st.Ino]; ok {
		return nil
	}
	p, err := a.relPath(fd)
	if err != nil {
		return err
	}
	a.record(st.Ino, dirState{path: p, atime: st.Atim, mtime: st.Mtim})
	return nil
}

// created records the directory parent/base the layer just made, with
// Options.ImplicitTime (an entry for it in the tar sets its own times later).
func (a *applier) created(parent int, base string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(parent, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("stat new directory %s: %w", base, err)
	}
	p, err := a.relPath(parent)
	if err != nil {
		return err
	}
	d := dirState{path: filepath.Join(p, base), atime: st.Atim, mtime: st.Mtim}
	if t := a.opts.ImplicitTime; !t.IsZero() {
		d.atime = unix.NsecToTimespec(t.UnixNano())
		d.mtime = d.atime
	}
	a.record(st.Ino, d)
	return nil
}

func (a *applier) record(ino uint64, d dirState) {
	if _, ok := a.dirs[ino]; !ok {
		a.dirOrder = append(a.dirOrder, ino)
	}
	a.dirs[ino] = d
}

// restoreDirs gives every recorded directory still in the tree its recorded
// times. A path that now names another inode (the recorded one was removed)
// is left alone.
func (a *applier) restoreDirs() error {
	for _, ino := range a.dirOrder {
		d := a.dirs[ino]
		fd, err := a.openInRoot(d.path)
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			continue
		}
		if err != nil {
			return &EntryError{Name: d.path, Err: err}
		}
		var st unix.Stat_t
		err = unix.Fstat(fd, &st)
		if err == nil && st.Ino == ino {
			err = unix.UtimesNanoAt(fd, ".", []unix.Timespec{d.atime, d.mtime}, 0)
		}
		unix.Close(fd)
		if err != nil {
			return &EntryError{Name: d.path, Err: fmt.Errorf("set times: %w", err)}
		}
	}
	return nil
}

// relPath is the root-relative path of the directory open at fd.
func (a *applier) relPath(fd int) (string, error) {
	p, err := fdPath(fd)
	if err != nil {
		return "", err
	}
	rel, err := filepath.Rel(a.rootPath, p)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("directory %s is outside the root %s", p, a.rootPath)
	}
	return rel, nil
}

// fdPath is the path the kernel has for the open directory fd.
func fdPath(fd int) (string, error) {
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd), buf)
	if err != nil {
		return "", fmt.Errorf("path of directory: %w", err)
	}
	if n == len(buf) {
		return "", fmt.Errorf("path of directory: longer than %d bytes", len(buf))
	}
	return string(buf[:n]), nil
}
