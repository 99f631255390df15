package sandbox

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// bind is one bind mount into a sandbox root: host directory src at target inside it.
type bind struct {
	src, target string
	writable    bool
}

// rootMount is a sandbox's (or a zygote's) root: a read-only, private bind of the image's
// rootfs with more binds on top. Bind mounts are cheap (no copy), which is why every sandbox
// gets its own root instead of sharing one.
type rootMount struct {
	dir    string
	mounts []string // mounted paths, outermost first
}

func mountRoot(dir, image string, binds []bind) (_ *rootMount, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("sandbox: root %s: %w", dir, err)
	}
	r := &rootMount{dir: dir}
	defer func() {
		if err != nil {
			r.unmount()
		}
	}()
	if err := r.bind(image, dir, false); err != nil {
		return nil, err
	}
	// Private, so the binds below never propagate into the image's mount or other roots.
	if err := unix.Mount("", dir, "", unix.MS_PRIVATE, ""); err != nil {
		return nil, fmt.Errorf("sandbox: make %s private: %w", dir, err)
	}
	for _, b := range append(devBinds(image), binds...) {
		if err := r.bind(b.src, filepath.Join(dir, b.target), b.writable); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// hostDevices are the device nodes a sandbox gets, bound from the host over the image's own
// (which nodev disables).
var hostDevices = []string{"null", "zero", "random", "urandom"}

// devBinds binds each host device over the node of the same name in the image, where the
// image has one to mount over.
func devBinds(image string) []bind {
	var binds []bind
	for _, d := range hostDevices {
		if _, err := os.Lstat(filepath.Join(image, "dev", d)); err == nil {
			// "Writable" only skips the read-only remount: a device's data is not the image's.
			binds = append(binds, bind{src: "/dev/" + d, target: "dev/" + d, writable: true})
		}
	}
	return binds
}

func (r *rootMount) bind(src, dst string, writable bool) error {
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("sandbox: bind %s at %s: %w", src, dst, err)
	}
	r.mounts = append(r.mounts, dst)
	if writable {
		return nil
	}
	// A bind mount takes MS_RDONLY only on a remount.
	// nodev too: device nodes shipped in an image (or handler code) are not honoured; the few
	// a runtime needs are bound from the host (devBinds).
	if err := unix.Mount("", dst, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		return fmt.Errorf("sandbox: make %s read-only: %w", dst, err)
	}
	return nil
}

// unmount removes every mount of the root, innermost first, and the root directory.
func (r *rootMount) unmount() error {
	var errs []error
	for i := len(r.mounts) - 1; i >= 0; i-- {
		if err := unix.Unmount(r.mounts[i], unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("sandbox: unmount %s: %w", r.mounts[i], err))
		}
	}
	r.mounts = nil
	if err := os.Remove(r.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// unmountUnder detaches every mount at or below dir, deepest first: what a server killed
// without cleanup left in its state dir.
func unmountUnder(dir string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// Field 5 is the mount point, with spaces and the like octal-escaped.
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		p := unescapeMountinfo(fields[4])
		if p == dir || strings.HasPrefix(p, dir+"/") {
			points = append(points, p)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	var errs []error
	for _, p := range points {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("sandbox: unmount leftover %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &c); err == nil {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
