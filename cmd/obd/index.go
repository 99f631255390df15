package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/obdproject/obd/convert"
	"github.com/obdproject/obd/gzindex"
	"github.com/obdproject/obd/quantity"
	"github.com/obdproject/obd/zfile"
)

func newIndexCmd() *cobra.Command {
	var (
		vsize, workDir, spacing string
		platforms               []string
		timeout                 time.Duration
		noPush                  bool
		reg                     convert.RegistryOptions
	)
	cmd := &cobra.Command{
		Use:   "index [flags] SRC",
		Short: "Index an OCI image so obd can start it lazily, without converting it",
		Long: "index reads the image SRC (gzip, zstd or uncompressed tar layers) and builds, per layer, a seek\n" +
			"index into the compressed blob and a small ext4 metadata layer whose file data points into\n" +
			"the layer's tar. It pushes them to SRC's repository as an artifact whose subject is the\n" +
			"image's manifest: the image, its digest and its signatures do not change. A node whose\n" +
			"snapshotter finds the artifact starts the image lazily. Needs root: each layer is applied\n" +
			"to an ext4 mounted from a loop device.",
		Example: "  obd index registry.local:5000/app:v1\n" +
			"  obd index --platform linux/amd64 --spacing 1M registry.local:5000/app:v1",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			size, err := quantity.ParseSize(vsize)
			if err != nil {
				return fmt.Errorf("--vsize: %w", err)
			}
			space, err := quantity.ParseSize(spacing)
			if err != nil {
				return fmt.Errorf("--spacing: %w", err)
			}
			if int64(space) < gzindex.MinSpacing || int64(space) > gzindex.MaxSpanBytes/2 {
				return fmt.Errorf("--spacing: %s outside %d to %d bytes", spacing, gzindex.MinSpacing, gzindex.MaxSpanBytes/2)
			}
			c, err := convert.New(convert.Options{
				Algorithm: zfile.ZSTD, VirtualSize: int64(size),
				Platforms: platforms, WorkDir: workDir, Registry: reg, Progress: os.Stderr,
			})
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			res, err := c.Index(ctx, args[0], convert.IndexOptions{Spacing: int64(space), Push: !noPush})
			if errors.Is(err, convert.ErrAlreadyConverted) {
				fmt.Fprintf(cmd.OutOrStdout(), "%s is an overlaybd image: it starts lazily without an index\n", args[0])
				return nil
			}
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			for _, img := range res.Images {
				var blobs int64
				for _, l := range img.Layers {
					blobs += l.Source.Size
				}
				fmt.Fprintf(out, "%s: index %s, %d layers, %d index bytes for %d image bytes (%.1f%%)",
					img.Manifest.Digest, img.Artifact.Digest, len(img.Layers), img.IndexBytes, blobs, 100*float64(img.IndexBytes)/float64(max(blobs, 1)))
				if img.ReferrersTag != "" {
					fmt.Fprintf(out, ", referrers tag %s", img.ReferrersTag)
				}
				if noPush {
					fmt.Fprint(out, ", not pushed")
				}
				fmt.Fprintln(out)
			}
			fmt.Fprintf(out, "indexed in %s\n", res.Duration.Round(time.Millisecond))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&spacing, "spacing", "256K", "uncompressed bytes between seek index checkpoints (64K to 32M): smaller, faster random reads and a larger index")
	f.StringVar(&vsize, "vsize", "64G", "virtual size of the image's ext4 filesystem")
	f.StringSliceVar(&platforms, "platform", nil, "index only these platforms of a multi-platform image (e.g. linux/amd64); default all")
	f.DurationVar(&timeout, "timeout", 0, "give up after this long (0: never)")
	f.BoolVar(&noPush, "no-push", false, "build the index in --work-dir without pushing it")
	f.StringVar(&workDir, "work-dir", filepath.Join(os.TempDir(), "obd-index"), "scratch space: layer blobs and index files")
	registryFlags(f, &reg)
	return cmd
}
