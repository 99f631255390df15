// Command soci-index builds the SOCI index of an image in a registry and pushes it beside the
// image, as `soci convert` followed by a push does: a zTOC per layer, the SOCI index manifest v2
// that lists them, and an OCI index holding the image's manifest (annotated with the SOCI index's
// digest; its config and layers unchanged) and the SOCI index. It is built from the library
// packages of github.com/awslabs/soci-snapshotter (its cmd module, with `soci`, has no tagged
// releases in the Go module proxy) for obd's cold-start benchmark (bench/coldstart); it is not part
// of obd.
//
// Usage: soci-index [flags] SOURCE-REF TARGET-REF. The target must be in the source's repository:
// only the new manifests and the SOCI artifacts are pushed, the layers are the source's.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/awslabs/soci-snapshotter/soci/store"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/registry/remote"
)

func main() {
	work := flag.String("work-dir", "", "directory for the image's content and the SOCI artifacts (empty: a temporary one, removed at the end)")
	minLayerSize := flag.Int64("min-layer-size", 10<<20, "build no zTOC for layers smaller than this many bytes (SOCI's default 10 MiB; such layers are pulled whole)")
	spanSize := flag.Int64("span-size", 4<<20, "uncompressed bytes between two checkpoints of a zTOC (SOCI's default 4 MiB)")
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: soci-index [flags] SOURCE-REF TARGET-REF")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 2 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(context.Background(), *work, flag.Arg(0), flag.Arg(1), *minLayerSize, *spanSize); err != nil {
		fmt.Fprintln(os.Stderr, "soci-index:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, work, src, dst string, minLayerSize, spanSize int64) error {
	srcRef, err := reference.ParseNormalizedNamed(src)
	if err != nil {
		return fmt.Errorf("source %q: %w", src, err)
	}
	dstRef, err := reference.ParseNormalizedNamed(dst)
	if err != nil {
		return fmt.Errorf("target %q: %w", dst, err)
	}
	dstTagged, ok := dstRef.(reference.Tagged)
	if !ok || dstRef.Name() != srcRef.Name() {
		return fmt.Errorf("target %q: want a tag in the source's repository %s", dst, srcRef.Name())
	}
	if work == "" {
		if work, err = os.MkdirTemp("", "soci-index-"); err != nil {
			return err
		}
		defer os.RemoveAll(work)
	}
	cs, err := local.NewStore(filepath.Join(work, "content"))
	if err != nil {
		return fmt.Errorf("content store: %w", err)
	}
	start := time.Now()
	img, err := fetch(ctx, cs, srcRef.String())
	if err != nil {
		return err
	}
	fetched := time.Since(start)

	// SOCI's artifacts (zTOCs, index manifests) go to a store of their own, its artifacts
	// database beside it rather than under /var/lib/soci-snapshotter-grpc.
	blobs, err := store.NewSociStore(filepath.Join(work, "soci"))
	if err != nil {
		return fmt.Errorf("SOCI store: %w", err)
	}
	db, err := soci.NewDB(filepath.Join(work, "artifacts.db"))
	if err != nil {
		return err
	}
	builder, err := soci.NewIndexBuilder(cs, blobs, soci.WithArtifactsDb(db),
		soci.WithMinLayerSize(minLayerSize), soci.WithSpanSize(spanSize))
	if err != nil {
		return err
	}
	start = time.Now()
	root, err := builder.Convert(ctx, img, soci.ConvertWithNoGarbageCollectionLabels())
	if err != nil {
		return fmt.Errorf("build SOCI index of %s: %w", src, err)
	}
	built := time.Since(start)
	artifacts, ztocs, err := artifactSize(ctx, blobs, *root)
	if err != nil {
		return err
	}

	repo, err := remote.NewRepository(dstRef.Name())
	if err != nil {
		return err
	}
	repo.PlainHTTP, _ = docker.MatchLocalhost(reference.Domain(dstRef))
	// The image's config and layers are in the target repository already: oras copies what the
	// registry lacks (the annotated manifest, the SOCI index, its zTOCs, the OCI index).
	start = time.Now()
	if err := oras.CopyGraph(ctx, blobs, repo, *root, oras.DefaultCopyGraphOptions); err != nil {
		return fmt.Errorf("push SOCI index to %s: %w", dst, err)
	}
	if err := repo.Tag(ctx, *root, dstTagged.Tag()); err != nil {
		return fmt.Errorf("tag %s: %w", dst, err)
	}
	fmt.Printf("pushed %s@%s: %d zTOCs, SOCI artifacts %d bytes; fetch %s, build %s, push %s\n",
		dst, root.Digest, ztocs, artifacts, fetched.Round(time.Millisecond), built.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	return nil
}

// fetch pulls the manifest, config and layers of ref's image for this platform into cs.
func fetch(ctx context.Context, cs content.Store, ref string) (images.Image, error) {
	resolver := docker.NewResolver(docker.ResolverOptions{
		Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(docker.MatchLocalhost)),
	})
	name, desc, err := resolver.Resolve(ctx, ref)
	if err != nil {
		return images.Image{}, fmt.Errorf("resolve %s: %w", ref, err)
	}
	fetcher, err := resolver.Fetcher(ctx, name)
	if err != nil {
		return images.Image{}, err
	}
	children := images.FilterPlatforms(images.ChildrenHandler(cs), platforms.Default())
	if err := images.Dispatch(ctx, images.Handlers(remotes.FetchHandler(cs, fetcher), children), nil, desc); err != nil {
		return images.Image{}, fmt.Errorf("fetch %s: %w", ref, err)
	}
	return images.Image{Name: name, Target: desc}, nil
}

// artifactSize returns the bytes of the SOCI artifacts under root (the SOCI index manifests and
// their zTOCs, not the image's manifests) and how many zTOCs there are.
func artifactSize(ctx context.Context, blobs *store.SociStore, root ocispec.Descriptor) (size int64, ztocs int, err error) {
	index, err := readJSON[ocispec.Index](ctx, blobs, root)
	if err != nil {
		return 0, 0, err
	}
	for _, m := range index.Manifests {
		if m.ArtifactType != soci.SociIndexArtifactTypeV2 {
			continue
		}
		sociIndex, err := readJSON[ocispec.Manifest](ctx, blobs, m)
		if err != nil {
			return 0, 0, err
		}
		size += m.Size
		for _, l := range sociIndex.Layers {
			size += l.Size
			if l.MediaType == soci.SociLayerMediaType {
				ztocs++
			}
		}
	}
	if ztocs == 0 {
		return 0, 0, errors.New("the SOCI index lists no zTOC")
	}
	return size, ztocs, nil
}

func readJSON[T any](ctx context.Context, blobs *store.SociStore, desc ocispec.Descriptor) (T, error) {
	var v T
	r, err := blobs.Fetch(ctx, desc)
	if err != nil {
		return v, fmt.Errorf("read %s: %w", desc.Digest, err)
	}
	defer r.Close()
	if err := json.NewDecoder(r).Decode(&v); err != nil {
		return v, fmt.Errorf("decode %s: %w", desc.Digest, err)
	}
	return v, nil
}
