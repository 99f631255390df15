package ctrplugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/cmd/ctr/commands"
	"github.com/containerd/containerd/v2/core/images"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/urfave/cli/v3"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/imagelabels"
	"github.com/obdproject/obd/tracestore"
)

var rpullCommand = &cli.Command{
	Name:      "rpull",
	Usage:     "Pull an overlaybd image lazily: only its manifest and config are fetched",
	ArgsUsage: "<ref>",
	Description: `rpull resolves the image, fetches its manifest and config and unpacks it through the
overlaybd snapshotter, which records every layer without downloading it: the container's
blocks are read from the registry when first touched. When a start trace was recorded for
the image (record-trace), bdd prefetches the traced ranges into its cache before rpull
returns, so the next start finds them local.`,
	Flags: append([]cli.Flag{
		snapshotterFlag, bddSocketFlag, traceDirFlag,
		&cli.BoolFlag{Name: "no-prefetch", Usage: "Do not prefetch a recorded trace"},
		&cli.DurationFlag{Name: "prefetch-timeout", Usage: "Bound on the prefetch of a recorded trace", Value: 10 * time.Minute},
	}, commands.RegistryFlags...),
	Action: runRPull,
}

func runRPull(ctx context.Context, cmd *cli.Command) error {
	if cmd.NArg() != 1 {
		return fmt.Errorf("rpull: want one image reference, got %d arguments", cmd.NArg())
	}
	ref := cmd.Args().First()
	client, ctx, cancel, err := commands.NewClient(ctx, cmd)
	if err != nil {
		return err
	}
	defer cancel()
	defer client.Close()

	resolver, err := commands.GetResolver(ctx, cmd)
	if err != nil {
		return err
	}
	start := time.Now()
	img, err := client.Pull(ctx, ref,
		containerd.WithResolver(resolver),
		containerd.WithPullUnpack,
		containerd.WithPullSnapshotter(cmd.String("snapshotter")),
		containerd.WithImageHandlerWrapper(lazyLayerLabels(ref)),
	)
	if err != nil {
		return fmt.Errorf("rpull %s: %w", ref, err)
	}
	out := cmd.Root().Writer
	fmt.Fprintf(out, "%s %s: metadata pulled in %.2fs, layers are read lazily\n", img.Name(), img.Target().Digest, time.Since(start).Seconds())
	if cmd.Bool("no-prefetch") {
		return nil
	}
	return prefetchRecorded(ctx, cmd, img, out)
}

// lazyLayerLabels adds the image reference and the manifest's digest (which the snapshotter
// looks up start traces by) to the layer descriptors of every manifest the pull walks. containerd's unpacker passes a layer's containerd.io/snapshot/ annotations to the
// snapshotter as labels (next to its own chain-ID label containerd.io/snapshot.ref), and the
// overlaybd snapshotter needs the reference to know which repository holds the blobs. A layer
// that is not an overlaybd blob fails the pull before anything is downloaded.
func lazyLayerLabels(ref string) func(images.Handler) images.Handler {
	return func(h images.Handler) images.Handler {
		return images.HandlerFunc(func(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
			children, err := h.Handle(ctx, desc)
			if err != nil || !images.IsManifestType(desc.MediaType) {
				return children, err
			}
			for i := range children {
				if !images.IsLayerType(children[i].MediaType) {
					continue
				}
				if _, ok := children[i].Annotations[imagelabels.BlobDigest]; !ok {
					return nil, fmt.Errorf("%w: layer %s of manifest %s has no %s annotation (convert it with obdconv, or pull it with `images pull`)",
						ErrNotOverlaybd, children[i].Digest, desc.Digest, imagelabels.BlobDigest)
				}
				annotations := maps.Clone(children[i].Annotations)
				annotations[imagelabels.ImageRef] = ref
				annotations[imagelabels.CRIManifestDigest] = desc.Digest.String()
				children[i].Annotations = annotations
			}
			return children, nil
		})
	}
}

// prefetchRecorded asks bdd to prefetch the trace recorded for img, if there is one.
func prefetchRecorded(ctx context.Context, cmd *cli.Command, img containerd.Image, out io.Writer) error {
	chain, manifest, err := imageTraceChain(ctx, img)
	if err != nil {
		return err
	}
	store := tracestore.Store{Dir: cmd.String("trace-dir")}
	trace, err := store.Load(chain)
	if errors.Is(err, tracestore.ErrNoTrace) {
		fmt.Fprintf(out, "no start trace recorded for %s (record-trace records one)\n", img.Name())
		return nil
	}
	if err != nil {
		return err
	}
	daemon, conn, err := dialBDD(ctx, cmd.String("bdd-socket"))
	if err != nil {
		return fmt.Errorf("prefetch the trace of %s: %w", img.Name(), err)
	}
	defer conn.Close()
	start := time.Now()
	pctx, cancel := context.WithTimeout(ctx, cmd.Duration("prefetch-timeout"))
	defer cancel()
	if _, err := daemon.Prefetch(pctx, &bddv1.PrefetchRequest{Trace: pinTrace(trace, manifest)}); err != nil {
		return fmt.Errorf("prefetch %s: %w", store.Path(chain), err)
	}
	fmt.Fprintf(out, "prefetched the start trace %s in %.2fs\n", store.Path(chain), time.Since(start).Seconds())
	return nil
}
