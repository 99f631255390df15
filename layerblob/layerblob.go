// Package layerblob opens and writes overlaybd layer blobs however they are wrapped.
//
// In the read path of docs/DESIGN.md it is the joint between the "tar member", "zfile.Reader"
// and "lsmt.Layer" boxes: a blob is detected by magic (a layer tar holding
// `overlaybd.commit`, a ZFile, or a plain committed LSMT file) and the matching readers
// are stacked on each other, all as io.ReaderAt. None of the wrapped packages knows
// about the others; only this one composes them.
package layerblob

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/obdproject/obd/lsmt"
	"github.com/obdproject/obd/tarblob"
	"github.com/obdproject/obd/zfile"
)

// Blob is an opened committed layer together with what wrapped it.
type Blob struct {
	*lsmt.File
	// Tar is true when the blob was a layer tar around the payload.
	Tar bool
	// ZFile is the decompressing reader under the layer, nil for a plain LSMT payload.
	ZFile *zfile.Reader

	closer io.Closer
}

// Kind describes the wrapping in words: "lsmt", "zfile+lsmt" or "tar+zfile+lsmt".
func (b *Blob) Kind() string {
	k := "lsmt"
	if b.ZFile != nil {
		k = "zfile+" + k
	}
	if b.Tar {
		k = "tar+" + k
	}
	return k
}

// Verify reads every compressed block and checks its CRC (a no-op for plain payloads,
// whose index was already validated when the blob was opened).
func (b *Blob) Verify(ctx context.Context) error {
	if b.ZFile == nil {
		return nil
	}
	return b.ZFile.Verify(ctx)
}

// Close releases the file opened by OpenFile; it is a no-op for blobs from Inspect.
func (b *Blob) Close() error {
	if b.closer == nil {
		return nil
	}
	return b.closer.Close()
}

// Open detects the wrapping of the blob in r and returns the committed layer inside.
// name is used in error messages (a path or a digest).
func Open(r io.ReaderAt, size int64, name string) (*lsmt.File, error) {
	b, err := Inspect(r, size, name)
	if err != nil {
		return nil, err
	}
	return b.File, nil
}

// Inspect is Open that also reports the wrapping.
func Inspect(r io.ReaderAt, size int64, name string) (*Blob, error) {
	b := &Blob{}
	if tarblob.HasMagic(r) {
		sec, err := tarblob.Open(r, size)
		if err != nil {
			return nil, fmt.Errorf("layer %s: %w", name, err)
		}
		b.Tar = true
		r, size = sec, sec.Size()
	}
	if zfile.HasMagic(r) {
		zr, err := zfile.Open(r, size, zfile.WithName(name))
		if err != nil {
			return nil, fmt.Errorf("layer %s: %w", name, err)
		}
		b.ZFile = zr
		r, size = zr, zr.Size()
	}
	f, err := lsmt.Open(r, size, lsmt.WithName(name))
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", name, err)
	}
	b.File = f
	return b, nil
}

// OpenFile opens the layer blob stored at path. The caller closes it.
func OpenFile(path string) (*Blob, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	b, err := Inspect(f, st.Size(), path)
	if err != nil {
		f.Close()
		return nil, err
	}
	b.closer = f
	return b, nil
}

// WriteOptions choose how a committed layer is wrapped on its way out.
type WriteOptions struct {
	// ZFile compresses the layer when non-nil.
	ZFile *zfile.Options
	// Tar wraps the result in a layer tar (the registry blob format). The tar header
	// needs the payload size first, so the payload is staged in a file in TempDir.
	Tar bool
	// TempDir holds staged payloads; "" means os.TempDir().
	TempDir string
}

// Write streams the committed layer that produce writes into out, compressed and
// tar-wrapped as opts say. When out is an *os.File and no tar is wanted, the ZFile
// header is rewritten in place with the final index information, as upstream's
// commit tool does.
func Write(out io.Writer, opts WriteOptions, produce func(io.Writer) error) error {
	if !opts.Tar {
		return writeMaybeCompressed(out, opts.ZFile, produce)
	}
	tmp, err := os.CreateTemp(opts.TempDir, "obd-layer-*")
	if err != nil {
		return fmt.Errorf("layerblob: staging payload: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if err := writeMaybeCompressed(tmp, opts.ZFile, produce); err != nil {
		return err
	}
	size, err := tmp.Seek(0, io.SeekEnd)
	if err != nil {
		return err
	}
	return tarblob.Write(out, io.NewSectionReader(tmp, 0, size), size)
}

func writeMaybeCompressed(out io.Writer, zopts *zfile.Options, produce func(io.Writer) error) error {
	if zopts == nil {
		return produce(out)
	}
	zw, err := zfile.NewWriter(out, *zopts)
	if err != nil {
		return err
	}
	if err := produce(zw); err != nil {
		return errors.Join(err, zw.Close())
	}
	return zw.Close()
}

// IsWritableDir reports whether dir holds a writable layer (the files lsmt.Create makes).
func IsWritableDir(dir string) bool {
	st, err := os.Stat(filepath.Join(dir, lsmt.DataFileName))
	return err == nil && st.Mode().IsRegular()
}
