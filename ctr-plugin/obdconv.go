package ctrplugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/urfave/cli/v3"

	"github.com/obdproject/obd/convert"
	"github.com/obdproject/obd/quantity"
	"github.com/obdproject/obd/zfile"
)

var obdconvCommand = &cli.Command{
	Name:      "obdconv",
	Usage:     "Convert an OCI image into an overlaybd image (the engine of `obd convert`)",
	ArgsUsage: "<src> <dst>",
	Description: `obdconv reads the image SRC, turns every layer into an overlaybd layer (ext4 in a
ZFile-compressed LSMT layer) and pushes the result to DST. SRC and DST are registry references
or OCI image layouts written oci:DIR[:TAG]. The registries are reached directly, not through
containerd; rpull the result to run it lazily. Needs root.`,
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "algorithm", Usage: "ZFile compression: lz4 or zstd", Value: "lz4"},
		&cli.IntFlag{Name: "block-size", Usage: "ZFile block size in bytes (4096 to 65536)", Value: zfile.DefaultBlockSize},
		&cli.StringFlag{Name: "vsize", Usage: "Virtual size of the image's ext4 filesystem", Value: "64G"},
		&cli.StringSliceFlag{Name: "platform", Usage: "Convert only these platforms (e.g. linux/amd64); default all"},
		&cli.StringFlag{Name: "work-dir", Usage: "Scratch space and converted-layer cache", Value: filepath.Join(os.TempDir(), "obd-convert")},
		&cli.StringFlag{Name: "hosts-dir", Usage: "Registry host configuration (containerd certs.d layout with hosts.toml)"},
		&cli.StringFlag{Name: "docker-config", Usage: "Docker config.json with registry credentials (default $DOCKER_CONFIG or ~/.docker)"},
		&cli.BoolFlag{Name: "plain-http", Usage: "Talk plain HTTP to every registry (localhost registries always may)"},
	},
	Action: runObdconv,
}

func runObdconv(ctx context.Context, cmd *cli.Command) error {
	if cmd.NArg() != 2 {
		return fmt.Errorf("obdconv: want SRC and DST, got %d arguments", cmd.NArg())
	}
	src, dst := cmd.Args().Get(0), cmd.Args().Get(1)
	algo, err := zfile.ParseAlgorithm(cmd.String("algorithm"))
	if err != nil {
		return fmt.Errorf("--algorithm: %w", err)
	}
	size, err := quantity.ParseSize(cmd.String("vsize"))
	if err != nil || size <= 0 {
		return fmt.Errorf("--vsize %q: want a size such as 64G", cmd.String("vsize"))
	}
	c, err := convert.New(convert.Options{
		Algorithm: algo, BlockSize: int(cmd.Int("block-size")), VirtualSize: int64(size),
		Platforms: cmd.StringSlice("platform"), WorkDir: cmd.String("work-dir"),
		Registry: convert.RegistryOptions{
			HostsDir: cmd.String("hosts-dir"), DockerConfig: cmd.String("docker-config"), PlainHTTP: cmd.Bool("plain-http"),
		},
		Progress: os.Stderr,
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := c.Convert(ctx, src, dst)
	out := cmd.Root().Writer
	if errors.Is(err, convert.ErrAlreadyConverted) {
		fmt.Fprintf(out, "%s is already an overlaybd image: nothing to do\n", src)
		return nil
	}
	if err != nil {
		return fmt.Errorf("obdconv %s %s: %w", src, dst, err)
	}
	fmt.Fprintf(out, "%s %s (%d layers converted, %d reused)\n", dst, res.Descriptor.Digest, res.Layers, res.Reused)
	return nil
}
