package sandbox

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// ErrBadCode is returned for a handler code archive that cannot be unpacked safely.
var ErrBadCode = errors.New("sandbox: bad handler code archive")

// Limits on uploaded handler code.
const (
	maxCodeBytes = 64 << 20
	maxCodeFiles = 10000
)

// ExtractCode unpacks a handler code archive (tar, optionally gzip-compressed) from r into dir,
// which must exist. Only regular files and directories are accepted, every name must stay
// inside dir, and files are made readable by the sandbox user. Anything else is ErrBadCode.
func ExtractCode(r io.Reader, dir string) error {
	br := bufio.NewReader(r)
	if magic, err := br.Peek(2); err == nil && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("%w: gzip: %w", ErrBadCode, err)
		}
		defer zr.Close()
		return extractTar(zr, dir)
	}
	return extractTar(br, dir)
}

func extractTar(r io.Reader, dir string) error {
	tr := tar.NewReader(r)
	var total int64
	for files := 0; ; files++ {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: %w", ErrBadCode, err)
		}
		if files >= maxCodeFiles {
			return fmt.Errorf("%w: more than %d entries", ErrBadCode, maxCodeFiles)
		}
		name := filepath.Clean(h.Name)
		if !filepath.IsLocal(name) {
			return fmt.Errorf("%w: entry %q leaves the code directory", ErrBadCode, h.Name)
		}
		target := filepath.Join(dir, name)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return fmt.Errorf("%w: %s: %w", ErrBadCode, h.Name, err)
			}
		case tar.TypeReg:
			total += h.Size
			if h.Size < 0 || total > maxCodeBytes {
				return fmt.Errorf("%w: more than %d bytes", ErrBadCode, maxCodeBytes)
			}
			if err := writeCodeFile(target, tr, h); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%w: entry %q: only regular files and directories are allowed", ErrBadCode, h.Name)
		}
	}
}

func writeCodeFile(target string, r io.Reader, h *tar.Header) error {
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrBadCode, h.Name, err)
	}
	mode := fs.FileMode(0o644)
	if h.Mode&0o111 != 0 {
		mode = 0o755
	}
	// O_EXCL: a name repeated in the archive, or one that is an existing directory, is refused
	// rather than followed or overwritten.
	f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrBadCode, h.Name, err)
	}
	_, err = io.CopyN(f, r, h.Size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrBadCode, h.Name, err)
	}
	return nil
}
