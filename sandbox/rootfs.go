package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ErrBadImage is returned for an image reference a provider cannot resolve.
var ErrBadImage = errors.New("sandbox: bad image reference")

// RootfsProvider gives the read-only root filesystem of an image. Manager acquires each image
// once and bind-mounts the directory into every sandbox of that image.
type RootfsProvider interface {
	// Acquire returns a directory holding the image's rootfs. It stays valid until release
	// is called.
	Acquire(ctx context.Context, imageRef string) (dir string, release func() error, err error)
}

// DirProvider resolves an image reference to the directory Root/REF: a rootfs unpacked on the
// local disk, as scripts/mkrootfs.sh makes (REF "python3-bookworm"). For tests and
// `obd-lambda --rootfs-dir`.
type DirProvider struct {
	Root string
}

// Acquire implements RootfsProvider. REF must be one path element.
func (p DirProvider) Acquire(_ context.Context, ref string) (string, func() error, error) {
	if ref == "" || ref == "." || ref == ".." || strings.ContainsAny(ref, "/\x00") {
		return "", nil, fmt.Errorf("%w: %q is not a directory name under %s", ErrBadImage, ref, p.Root)
	}
	dir := filepath.Join(p.Root, ref)
	if _, err := os.Stat(filepath.Join(dir, pythonPath)); err != nil {
		return "", nil, fmt.Errorf("%w: %s has no %s: %v", ErrBadImage, dir, pythonPath, err)
	}
	return dir, func() error { return nil }, nil
}
