// Package fstree records a directory tree's observable state (path, type, mode,
// ownership, size, content digest, xattrs, link target, device numbers, mtime)
// so tests can compare trees produced by different appliers: obd's converter
// against `umoci unpack`, or a tree before and after hostile input.
package fstree

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// Entry is one path's state.
type Entry struct {
	Type   string // "dir", "file", "symlink", "char", "block", "fifo", "socket"
	Mode   uint32 // permission bits with setuid/setgid/sticky
	UID    uint32
	GID    uint32
	Size   int64 // regular files only
	SHA256 string
	Link   string // symlink target
	Rdev   uint64
	Nlink  uint64 // regular files only: hardlink groups must match
	Mtime  int64  // seconds; directories and files
	Xattrs map[string]string
}

// Options choose what Snapshot records.
type Options struct {
	// Skip lists root-relative paths left out with everything below them
	// (e.g. "lost+found").
	Skip []string
	// NoMtime leaves modification times out.
	NoMtime bool
	// XattrFilter keeps an xattr when it returns true (nil: keep all).
	XattrFilter func(name string) bool
}

// Snapshot walks root without following symlinks and returns every entry below
// it by root-relative path ("." is root itself).
func Snapshot(root string, opts Options) (map[string]Entry, error) {
	out := map[string]Entry{}
	skip := map[string]bool{}
	for _, s := range opts.Skip {
		skip[s] = true
	}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		if skip[rel] {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		e, err := stat(p, opts)
		if err != nil {
			return fmt.Errorf("fstree: %s: %w", rel, err)
		}
		out[rel] = e
		return nil
	})
	return out, err
}

func stat(p string, opts Options) (Entry, error) {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return Entry{}, err
	}
	e := Entry{Mode: st.Mode & 07777, UID: st.Uid, GID: st.Gid}
	if !opts.NoMtime {
		e.Mtime = st.Mtim.Sec
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		e.Type = "dir"
	case unix.S_IFREG:
		e.Type, e.Size, e.Nlink = "file", st.Size, uint64(st.Nlink)
		sum, err := fileSHA256(p)
		if err != nil {
			return e, err
		}
		e.SHA256 = sum
	case unix.S_IFLNK:
		e.Type, e.Mtime = "symlink", 0 // symlink times are not comparable across tools
		t, err := os.Readlink(p)
		if err != nil {
			return e, err
		}
		e.Link = t
	case unix.S_IFCHR:
		e.Type, e.Rdev = "char", st.Rdev
	case unix.S_IFBLK:
		e.Type, e.Rdev = "block", st.Rdev
	case unix.S_IFIFO:
		e.Type = "fifo"
	default:
		e.Type = "socket"
	}
	x, err := xattrs(p, opts.XattrFilter)
	if err != nil {
		return e, err
	}
	e.Xattrs = x
	return e, nil
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func xattrs(p string, keep func(string) bool) (map[string]string, error) {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if errors.Is(err, unix.ENOTSUP) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list xattrs: %w", err)
	}
	var out map[string]string
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" || (keep != nil && !keep(name)) {
			continue
		}
		v := make([]byte, 64<<10)
		m, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			return nil, fmt.Errorf("get xattr %s: %w", name, err)
		}
		if out == nil {
			out = map[string]string{}
		}
		out[name] = string(v[:m])
	}
	return out, nil
}

// Diff lists the differences between two snapshots, one line per path, sorted.
func Diff(want, got map[string]Entry) []string {
	var out []string
	for p, w := range want {
		g, ok := got[p]
		if !ok {
			out = append(out, fmt.Sprintf("%s: missing (want %+v)", p, w))
			continue
		}
		if d := fmt.Sprintf("%+v", w); d != fmt.Sprintf("%+v", g) {
			out = append(out, fmt.Sprintf("%s:\n  want %s\n  got  %+v", p, d, g))
		}
	}
	for p, g := range got {
		if _, ok := want[p]; !ok {
			out = append(out, fmt.Sprintf("%s: unexpected %+v", p, g))
		}
	}
	sort.Strings(out)
	return out
}
