package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/obdproject/obd/convert"
	"github.com/obdproject/obd/quantity"
	"github.com/obdproject/obd/zfile"
)

func newConvertCmd() *cobra.Command {
	var (
		algorithm, vsize, workDir, blockSize string
		rangeChunk                           string
		platforms                            []string
		level                                int
		reg                                  convert.RegistryOptions
	)
	cmd := &cobra.Command{
		Use:   "convert [flags] SRC DST",
		Short: "Convert an OCI image into an overlaybd image",
		Long: "convert reads the image SRC, turns every layer into an overlaybd layer (ext4 in a\n" +
			"ZFile-compressed LSMT layer) and pushes the result to DST. SRC and DST are registry\n" +
			"references or OCI image layouts written oci:DIR[:TAG]. Converted layers are cached in\n" +
			"--work-dir by chain ID, so converting an image that shares base layers is quick.\n" +
			"Needs root: each layer is applied to an ext4 mounted from a loop device.",
		Example: "  obd convert registry.local:5000/app:v1 registry.local:5000/app:v1-obd\n" +
			"  obd convert --algorithm zstd --block-size 64K --platform linux/amd64 oci:./img:v1 oci:./out:v1",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			algo, err := zfile.ParseAlgorithm(algorithm)
			if err != nil {
				return fmt.Errorf("--algorithm: %w", err)
			}
			size, err := quantity.ParseSize(vsize)
			if err != nil {
				return fmt.Errorf("--vsize: %w", err)
			}
			block, err := quantity.ParseSize(blockSize)
			if err != nil {
				return fmt.Errorf("--block-size: %w", err)
			}
			chunk, err := quantity.ParseSize(rangeChunk)
			if err != nil {
				return fmt.Errorf("--range-chunk: %w", err)
			}
			if chunk == 0 {
				chunk = -1 // no table
			}
			c, err := convert.New(convert.Options{
				Algorithm: algo, Level: level, BlockSize: int(block), VirtualSize: int64(size), RangeChunk: int64(chunk),
				Platforms: platforms, WorkDir: workDir, Registry: reg, Progress: os.Stderr,
			})
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			res, err := c.Convert(ctx, args[0], args[1])
			if errors.Is(err, convert.ErrAlreadyConverted) {
				fmt.Fprintf(cmd.OutOrStdout(), "%s is already an overlaybd image: nothing to do\n", args[0])
				return nil
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s (%d layers converted, %d reused)\n",
				args[1], res.Descriptor.Digest, res.Layers, res.Reused)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&algorithm, "algorithm", "lz4", "ZFile compression: lz4 or zstd")
	f.IntVar(&level, "level", 0, "zstd compression level, 1-22 (0 = default 3; higher: smaller layers, slower conversion)")
	f.StringVar(&blockSize, "block-size", "4K", "ZFile block size: 4K, 8K, 16K, 32K or 64K")
	f.StringVar(&vsize, "vsize", "64G", "virtual size of the image's ext4 filesystem")
	f.StringVar(&rangeChunk, "range-chunk", "16K", "chunk size of each layer's range table, which lets bdd check every fetched range (4K-1M; 0 = no table, as upstream)")
	f.StringSliceVar(&platforms, "platform", nil, "convert only these platforms of a multi-platform image (e.g. linux/amd64); default all")
	f.StringVar(&workDir, "work-dir", filepath.Join(os.TempDir(), "obd-convert"), "scratch space and converted-layer cache")
	f.StringVar(&reg.HostsDir, "hosts-dir", "", "registry host configuration (containerd certs.d layout with hosts.toml)")
	f.StringVar(&reg.DockerConfig, "docker-config", "", "docker config.json with registry credentials (default $DOCKER_CONFIG or ~/.docker)")
	f.BoolVar(&reg.PlainHTTP, "plain-http", false, "talk plain HTTP to every registry (localhost registries always may)")
	return cmd
}
