// Package tarapply applies one OCI layer tar onto a directory tree, refusing
// hostile input.
//
// It sits in the converter (docs/DESIGN.md, "The write paths"), between the pulled OCI layer
// and the ext4 filesystem mounted from the writable LSMT upper: the converter
// mounts the stack, calls Apply with the uncompressed layer stream, unmounts and
// commits. Apply is independent of ext4 and works on any directory, which is how
// its tests and fuzz target run.
//
// Semantics follow the OCI image layer spec: whiteouts (".wh.NAME") delete NAME
// from lower layers, ".wh..wh..opq" hides every lower entry of its directory,
// later entries replace earlier ones. Hardlinks, symlinks, device nodes, fifos,
// xattrs (PAX SCHILY.xattr.*), ownership, modes with setuid/setgid/sticky and
// times are kept; files are written sparsely (runs of zero blocks become holes).
//
// Access and modification times never come from the clock: an entry gets its
// tar's, a directory that gains or loses entries without the layer listing it
// keeps the times it had, and a missing parent Apply creates gets
// Options.ImplicitTime. Only the change (and birth) times, which userspace
// cannot set, are the kernel's.
//
// Every path is resolved inside the root with openat2(RESOLVE_IN_ROOT), and the
// last component is always created or changed through its parent's descriptor
// without following it, so no write lands outside the root whatever symlinks or
// hardlinks earlier entries planted.
package tarapply

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Sentinel errors callers can branch on (wrapped in an *EntryError).
var (
	// ErrUnsafePath: an entry name or hardlink target is absolute or climbs
	// out of the root with "..".
	ErrUnsafePath = errors.New("path escapes the root")
	// ErrTooLarge: an entry's size or name exceeds the configured limits.
	ErrTooLarge = errors.New("entry too large")
	// ErrUnsupported: an entry type that a layer must not contain.
	ErrUnsupported = errors.New("unsupported entry")
)

// DefaultMaxEntrySize is the largest regular file Apply accepts unless
// Options.MaxEntrySize says otherwise.
const DefaultMaxEntrySize = 64 << 30

// Longest entry name accepted (Linux PATH_MAX).
const maxNameLen = 4096

// Options tune Apply.
type Options struct {
	// MaxEntrySize refuses regular files larger than this many bytes
	// (0: DefaultMaxEntrySize). The converter sets it to the filesystem size.
	MaxEntrySize int64
	// DeferRemoval moves replaced and whited-out entries into a directory at
	// the root (TrashName) and deletes it only after the last entry. ext4
	// without a journal will not reuse an inode freed in the last 30 seconds,
	// a clock-dependent choice; with no inode freed until the end, inode
	// allocation does not depend on the clock.
	DeferRemoval bool
	// ImplicitTime is the access and modification time of the directories
	// Apply creates without a tar entry (missing parents). Zero leaves the
	// kernel's clock there.
	ImplicitTime time.Time
}

// TrashName is the root directory DeferRemoval uses; a layer may not contain it.
const TrashName = ".obd-tarapply-removed"

// Stats describes what Apply did.
type Stats struct {
	Entries   int   // tar entries consumed
	Bytes     int64 // regular file bytes written (holes included)
	Whiteouts int   // whiteouts and opaque markers applied
}

// EntryError names the tar entry that failed.
type EntryError struct {
	Name string
	Err  error
}

func (e *EntryError) Error() string { return fmt.Sprintf("entry %q: %v", e.Name, e.Err) }
func (e *EntryError) Unwrap() error { return e.Err }

// Apply reads the tar stream r and applies it onto the directory root. On error
// the root may hold part of the layer (the converter throws the upper away), but
// nothing outside root was touched. ctx is checked between entries.
func Apply(ctx context.Context, root string, r io.Reader, opts Options) (Stats, error) {
	if opts.MaxEntrySize <= 0 {
		opts.MaxEntrySize = DefaultMaxEntrySize
	}
	rootFD, err := unix.Open(root, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return Stats{}, fmt.Errorf("tarapply: open root %s: %w", root, err)
	}
	a := &applier{root: rootFD, opts: opts, layer: map[string]bool{}, trash: -1, dirs: map[uint64]dirState{}}
	defer unix.Close(rootFD)
	if a.rootPath, err = fdPath(rootFD); err != nil {
		return Stats{}, fmt.Errorf("tarapply: root %s: %w", root, err)
	}
	if opts.DeferRemoval {
		if err := a.touch(a.root); err != nil {
			return Stats{}, fmt.Errorf("tarapply: root %s: %w", root, err)
		}
		if err := a.openTrash(); err != nil {
			return Stats{}, err
		}
		defer a.closeTrash()
	}

	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return a.stats, err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return a.stats, fmt.Errorf("tarapply: after %d entries: reading header: %w", a.stats.Entries, err)
		}
		a.stats.Entries++
		if err := a.entry(hdr, tr); err != nil {
			return a.stats, &EntryError{Name: hdr.Name, Err: err}
		}
	}
	if err := a.emptyTrash(); err != nil {
		return a.stats, err
	}
	// Directory times last: creating children changed them. Those the
	// layer lists get their tar's times after the others got theirs back.
	if err := a.restoreDirs(); err != nil {
		return a.stats, err
	}
	for i := len(a.dirTimes) - 1; i >= 0; i-- {
		d := a.dirTimes[i]
		if err := a.setTimes(d.name, d.atime, d.mtime); err != nil && !errors.Is(err, unix.ENOENT) {
			return a.stats, &EntryError{Name: d.name, Err: err}
		}
	}
	return a.stats, nil
}

type dirTime struct {
	name         string
	atime, mtime time.Time
}

type applier struct {
	root     int
	opts     Options
	stats    Stats
	layer    map[string]bool // paths (and their ancestors) this layer wrote
	dirTimes []dirTime
	rootPath string              // the root's path, symlinks resolved
	dirs     map[uint64]dirState // directories created or changed, by inode
	dirOrder []uint64            // dirs' keys in the order first seen
	trash    int                 // DeferRemoval's directory, -1 when removing at once
	trashed  int                 // entries moved there so far (their names)
}

// cleanName turns a tar name into a root-relative path ("." for the root),
// refusing names that are absolute or leave the root. The name "/" alone is the root
// directory itself (umoci and others write such an entry), not an escape.
func cleanName(name string) (string, error) {
	if len(name) > maxNameLen {
		return "", fmt.Errorf("%w: name is %d bytes", ErrTooLarge, len(name))
	}
	if strings.Trim(name, "/") == "" && name != "" {
		return ".", nil
	}
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("%w: absolute name", ErrUnsafePath)
	}
	c := path.Clean(name)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("%w: name climbs above the root", ErrUnsafePath)
	}
	return c, nil
}

func (a *applier) markLayer(p string) {
	for ; p != "." && p != "/"; p = path.Dir(p) {
		if a.layer[p] {
			return
		}
		a.layer[p] = true
	}
}

func (a *applier) entry(hdr *tar.Header, body io.Reader) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	name, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	dir, base := path.Split(name)
	dir = path.Clean(dir)
	if a.trash >= 0 && (name == TrashName || strings.HasPrefix(name, TrashName+"/")) {
		return fmt.Errorf("%w: %s is reserved", ErrUnsupported, TrashName)
	}
	if strings.HasPrefix(base, whiteoutPrefix) {
		a.stats.Whiteouts++
		return a.whiteout(dir, base)
	}
	if name == "." {
		if hdr.Typeflag != tar.TypeDir {
			return fmt.Errorf("%w: the root must be a directory", ErrUnsupported)
		}
		return a.meta(a.root, ".", name, hdr)
	}
	parent, err := a.openDir(dir, true)
	if err != nil {
		return err
	}
	defer unix.Close(parent)
	if err := a.touch(parent); err != nil {
		return err
	}

	switch hdr.Typeflag {
	case tar.TypeDir:
		err = a.mkdir(parent, base)
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
		err = a.regular(parent, base, hdr, body)
	case tar.TypeSymlink:
		err = a.replace(parent, base, func() error { return unix.Symlinkat(hdr.Linkname, parent, base) })
	case tar.TypeLink:
		err = a.hardlink(parent, base, name, hdr.Linkname)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		err = a.replace(parent, base, func() error {
			return unix.Mknodat(parent, base, nodeMode(hdr), int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))))
		})
	default:
		return fmt.Errorf("%w: type %q", ErrUnsupported, hdr.Typeflag)
	}
	if err != nil {
		return err
	}
	a.markLayer(name)
	if hdr.Typeflag == tar.TypeLink {
		return nil // a hardlink shares its target's inode and metadata
	}
	return a.meta(parent, base, name, hdr)
}

func nodeMode(hdr *tar.Header) uint32 {
	m := uint32(hdr.Mode) & 07777
	switch hdr.Typeflag {
	case tar.TypeChar:
		return m | unix.S_IFCHR
	case tar.TypeBlock:
		return m | unix.S_IFBLK
	}
	return m | unix.S_IFIFO
}

// openDir opens the directory dir (root-relative, resolved inside the root),
// creating missing components with mode 0755 when create is set.
func (a *applier) openDir(dir string, create bool) (int, error) {
	fd, err := a.openInRoot(dir)
	if err == nil || !create || !errors.Is(err, unix.ENOENT) {
		return fd, err
	}
	parts := strings.Split(dir, "/")
	prev, err := unix.Dup(a.root)
	if err != nil {
		return -1, err
	}
	for i, p := range parts {
		sub := strings.Join(parts[:i+1], "/")
		fd, err := a.openInRoot(sub)
		if errors.Is(err, unix.ENOENT) {
			if err := a.makeParent(prev, p); err != nil {
				unix.Close(prev)
				return -1, fmt.Errorf("create parent %s: %w", sub, err)
			}
			fd, err = a.openInRoot(sub)
		}
		unix.Close(prev)
		if err != nil {
			return -1, fmt.Errorf("open parent %s: %w", sub, err)
		}
		prev = fd
	}
	return prev, nil
}

// makeParent creates the missing directory prev/name (mode 0755), recording it
// and the change to prev.
func (a *applier) makeParent(prev int, name string) error {
	if err := a.touch(prev); err != nil {
		return err
	}
	err := unix.Mkdirat(prev, name, 0o755)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	if err != nil {
		return err
	}
	return a.created(prev, name)
}

func (a *applier) openInRoot(p string) (int, error) {
	how := unix.OpenHow{
		Flags:   unix.O_DIRECTORY | unix.O_RDONLY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	}
	for {
		fd, err := unix.Openat2(a.root, p, &how)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return -1, fmt.Errorf("open %s: %w", p, err)
		}
		return fd, nil
	}
}

// replace removes whatever is at parent/base and runs create.
func (a *applier) replace(parent int, base string, create func() error) error {
	if err := a.remove(parent, base); err != nil {
		return err
	}
	return create()
}

func (a *applier) mkdir(parent int, base string) error {
	var st unix.Stat_t
	err := unix.Fstatat(parent, base, &st, unix.AT_SYMLINK_NOFOLLOW)
	if err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return nil // a repeated directory only updates metadata
	}
	return a.replace(parent, base, func() error {
		if err := unix.Mkdirat(parent, base, 0o700); err != nil {
			return err
		}
		return a.created(parent, base)
	})
}

func (a *applier) regular(parent int, base string, hdr *tar.Header, body io.Reader) error {
	if hdr.Size < 0 || hdr.Size > a.opts.MaxEntrySize {
		return fmt.Errorf("%w: size %d exceeds the limit %d", ErrTooLarge, hdr.Size, a.opts.MaxEntrySize)
	}
	if err := a.remove(parent, base); err != nil {
		return err
	}
	fd, err := unix.Openat(parent, base, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	n, err := writeSparse(fd, body, hdr.Size)
	a.stats.Bytes += n
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	return err
}

func (a *applier) hardlink(parent int, base, name, target string) error {
	t, err := cleanName(target)
	if err != nil {
		return fmt.Errorf("hardlink target %q: %w", target, err)
	}
	if t == name || t == "." {
		return fmt.Errorf("%w: hardlink %q to %q", ErrUnsupported, name, target)
	}
	tdir, tbase := path.Split(t)
	tparent, err := a.openDir(path.Clean(tdir), false)
	if err != nil {
		return fmt.Errorf("hardlink target %q: %w", target, err)
	}
	defer unix.Close(tparent)
	var st unix.Stat_t
	if err := unix.Fstatat(tparent, tbase, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("hardlink target %q: %w", target, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return fmt.Errorf("%w: hardlink to directory %q", ErrUnsupported, target)
	}
	return a.replace(parent, base, func() error { return unix.Linkat(tparent, tbase, parent, base, 0) })
}

// meta sets ownership, mode, xattrs and times on parent/base (root-relative
// name), in that order: chown clears setuid bits and security.capability.
func (a *applier) meta(parent int, base, name string, hdr *tar.Header) error {
	if err := unix.Fchownat(parent, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if hdr.Typeflag != tar.TypeSymlink {
		if err := unix.Fchmodat(parent, base, uint32(hdr.Mode)&07777, 0); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	if err := setXattrs(parent, base, hdr); err != nil {
		return err
	}
	atime := hdr.AccessTime
	if atime.IsZero() {
		atime = hdr.ModTime
	}
	if hdr.Typeflag == tar.TypeDir {
		a.dirTimes = append(a.dirTimes, dirTime{name: name, atime: atime, mtime: hdr.ModTime})
		return nil
	}
	return utimes(parent, base, atime, hdr.ModTime)
}

func (a *applier) setTimes(name string, atime, mtime time.Time) error {
	if name == "." {
		return utimes(a.root, ".", atime, mtime)
	}
	dir, base := path.Split(name)
	parent, err := a.openDir(path.Clean(dir), false)
	if err != nil {
		return err
	}
	defer unix.Close(parent)
	return utimes(parent, base, atime, mtime)
}

func utimes(parent int, base string, atime, mtime time.Time) error {
	ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	if err := unix.UtimesNanoAt(parent, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}
