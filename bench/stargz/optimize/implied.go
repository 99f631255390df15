package main

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images/converter"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Implied directories. A layer tar need not hold an entry for every directory above its files:
// umoci, which builds the benchmark's Debian image, writes only the directories that changed,
// so the python layer has usr/bin/python3.11 but no usr/. stargz's sorter (estargz.Build with
// prioritized files) moves each prioritized file's parents ahead of it and fails on a parent
// the tar lacks ("failed to sort tar entries: file: "usr": not found"), which ctr-remote would
// do too on this image. So before a layer is converted, the directories its prioritized files
// need and it lacks are put in front of it, each a copy of the nearest lower layer's entry
// for it: the merged file system stays the same.

// layerEntries is what one layer tar holds: every entry's name, and the headers of its
// directories.
type layerEntries struct {
	names map[string]bool
	dirs  map[string]*tar.Header
}

// readEntries lists the entries of a (compressed) layer blob.
func readEntries(ctx context.Context, cs content.Store, desc ocispec.Descriptor) (layerEntries, error) {
	e := layerEntries{names: map[string]bool{}, dirs: map[string]*tar.Header{}}
	err := walkLayer(ctx, cs, desc, func(h *tar.Header, _ io.Reader) error {
		name := cleanName(h.Name)
		e.names[name] = true
		if h.Typeflag == tar.TypeDir {
			e.dirs[name] = h
		}
		return nil
	})
	return e, err
}

// walkLayer calls fn for each entry of a (compressed) layer blob, in tar order.
func walkLayer(ctx context.Context, cs content.Store, desc ocispec.Descriptor, fn func(*tar.Header, io.Reader) error) error {
	ra, err := cs.ReaderAt(ctx, desc)
	if err != nil {
		return fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	defer ra.Close()
	r, err := compression.DecompressStream(io.NewSectionReader(ra, 0, desc.Size))
	if err != nil {
		return fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	defer r.Close()
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("layer %s: %w", desc.Digest, err)
		}
		if err := fn(h, tr); err != nil {
			return err
		}
	}
}

// cleanName is a tar entry's name as estargz compares them: no leading "./" or "/", no
// trailing "/".
func cleanName(name string) string { return strings.TrimPrefix(path.Clean("/"+name), "/") }

// impliedDirs returns, per layer, the directory entries its prioritized files need and its tar
// lacks, copied from the nearest lower layer holding each, parents first.
func impliedDirs(layers []ocispec.Descriptor, entries []layerEntries, prioritized map[digest.Digest][]string) map[digest.Digest][]*tar.Header {
	out := map[digest.Digest][]*tar.Header{}
	for i, layer := range layers {
		need := map[string]*tar.Header{}
		for _, file := range prioritized[layer.Digest] {
			for dir := path.Dir(cleanName(file)); dir != "." && dir != "/"; dir = path.Dir(dir) {
				if entries[i].names[dir] || need[dir] != nil {
					continue
				}
				for j := i - 1; j >= 0; j-- {
					if h := entries[j].dirs[dir]; h != nil {
						need[dir] = h
						break
					}
				}
			}
		}
		if len(need) == 0 {
			continue
		}
		dirs := make([]string, 0, len(need))
		for dir := range need {
			dirs = append(dirs, dir)
		}
		sort.Slice(dirs, func(a, b int) bool { // parents first
			da, db := strings.Count(dirs[a], "/"), strings.Count(dirs[b], "/")
			return da < db || (da == db && dirs[a] < dirs[b])
		})
		for _, dir := range dirs {
			h := *need[dir]
			h.Name = dir + "/"
			out[layer.Digest] = append(out[layer.Digest], &h)
		}
	}
	return out
}

// withImpliedDirs wraps convert (the eStargz converter of a layer, given the layer's own
// options by its original digest) so that a layer listed in dirs is converted from a tar that
// starts with those directory entries, then holds the layer's own entries unchanged.
func withImpliedDirs(dirs map[digest.Digest][]*tar.Header, convert func(original digest.Digest) converter.ConvertFunc) converter.ConvertFunc {
	return func(ctx context.Context, cs content.Store, desc ocispec.Descriptor) (*ocispec.Descriptor, error) {
		add := dirs[desc.Digest]
		if len(add) == 0 {
			return convert(desc.Digest)(ctx, cs, desc)
		}
		tarDesc, err := writeWithDirs(ctx, cs, desc, add)
		if err != nil {
			return nil, err
		}
		return convert(desc.Digest)(ctx, cs, tarDesc)
	}
}

// writeWithDirs stores, uncompressed, the tar of layer desc with the entries add in front, and
// returns its descriptor (an uncompressed OCI layer).
func writeWithDirs(ctx context.Context, cs content.Store, desc ocispec.Descriptor, add []*tar.Header) (ocispec.Descriptor, error) {
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		err := func() error {
			for _, h := range add {
				if err := tw.WriteHeader(h); err != nil {
					return err
				}
			}
			if err := walkLayer(ctx, cs, desc, func(h *tar.Header, body io.Reader) error {
				if err := tw.WriteHeader(h); err != nil {
					return err
				}
				_, err := io.Copy(tw, body)
				return err
			}); err != nil {
				return err
			}
			return tw.Close()
		}()
		pw.CloseWithError(err)
	}()
	w, err := content.OpenWriter(ctx, cs, content.WithRef("estargz-optimize-dirs-"+desc.Digest.String()))
	if err != nil {
		pr.CloseWithError(err)
		return ocispec.Descriptor{}, err
	}
	defer w.Close()
	if err := w.Truncate(0); err != nil { // a writer left by an interrupted run
		pr.CloseWithError(err)
		return ocispec.Descriptor{}, err
	}
	n, err := io.Copy(w, pr)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("layer %s with implied directories: %w", desc.Digest, err)
	}
	if err := w.Commit(ctx, n, ""); err != nil && !errdefs.IsAlreadyExists(err) {
		return ocispec.Descriptor{}, err
	}
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: w.Digest(), Size: n}, nil
}
