package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/docker/go-units"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/bddclient"
	"github.com/obdproject/obd/convert"
	"github.com/obdproject/obd/ipfsnode"
	"github.com/obdproject/obd/quantity"
	"github.com/obdproject/obd/tracerec"
	"github.com/obdproject/obd/zfile"
)

func newConvertCmd() *cobra.Command {
	var (
		algorithm, vsize, workDir, blockSize string
		rangeChunk, ipfsAPI                  string
		ipfsPin                              bool
		platforms                            []string
		level                                int
		reg                                  convert.RegistryOptions
		rec                                  recordFlags
	)
	cmd := &cobra.Command{
		Use:   "convert [flags] SRC DST [-- COMMAND [ARG...]]",
		Short: "Convert an OCI image into an overlaybd image",
		Long: "convert reads the image SRC, turns every layer into an overlaybd layer (ext4 in a\n" +
			"ZFile-compressed LSMT layer) and pushes the result to DST. SRC and DST are registry\n" +
			"references or OCI image layouts written oci:DIR[:TAG]. Converted layers are cached in\n" +
			"--work-dir by chain ID, so converting an image that shares base layers is quick.\n" +
			"Needs root: each layer is applied to an ext4 mounted from a loop device.\n\n" +
			"With --record-trace, convert then runs the converted image's command once (the\n" +
			"entrypoint and cmd of its config, or COMMAND given after --) and pushes what that start\n" +
			"read as a start trace artifact of DST, which nodes replay when they pull it. The image is\n" +
			"read through bdd (--bdd-socket) from DST's registry, as a node would read it, and the\n" +
			"command runs in a sandbox on it, no containerd needed: an overlay over the image, new\n" +
			"PID, mount, UTS, IPC and network namespaces (no network), as the config's user. bdd\n" +
			"traces every device's reads meanwhile: record on a quiet bdd. --record-timeout bounds\n" +
			"the run; a command still running then (a server) is stopped and what it read so far is\n" +
			"kept. A command that exits non-zero fails the conversion and its output is shown; so\n" +
			"does a trace with no ranges or under 4 KiB. The trace is pushed before DST's tag moves:\n" +
			"a failed recording leaves the tag as it was. DST must be a registry reference.",
		Example: "  obd convert registry.local:5000/app:v1 registry.local:5000/app:v1-obd\n" +
			"  obd convert --algorithm zstd --block-size 64K --platform linux/amd64 oci:./img:v1 oci:./out:v1\n" +
			"  obd convert --record-trace registry.local:5000/app:v1 registry.local:5000/app:v1-obd\n" +
			"  obd convert --record-trace --record-timeout 20s registry.local:5000/web:v1 registry.local:5000/web:v1-obd\n" +
			"  obd convert --record-trace registry.local:5000/py:v1 registry.local:5000/py:v1-obd -- python3 -c 'import json'",
		Args: func(cmd *cobra.Command, args []string) error {
			if dash := cmd.ArgsLenAtDash(); dash >= 0 && dash != 2 {
				return fmt.Errorf("want SRC DST before --, got %d arguments", dash)
			}
			if len(args) < 2 || (cmd.ArgsLenAtDash() < 0 && len(args) != 2) {
				return fmt.Errorf("want SRC DST [-- COMMAND [ARG...]], got %d arguments", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if rec.command = args[2:]; len(rec.command) > 0 && !rec.enabled {
				return errors.New("a command after -- is what --record-trace runs: give --record-trace")
			}
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
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			recorder, err := rec.prepare(ctx, args[1], reg, workDir)
			if err != nil {
				return err
			}
			defer recorder.close()
			opts := convert.Options{
				Algorithm: algo, Level: level, BlockSize: int(block), VirtualSize: int64(size), RangeChunk: int64(chunk),
				Platforms: platforms, WorkDir: workDir, Registry: reg, Progress: os.Stderr, IPFSPin: ipfsPin,
			}
			if ipfsAPI != "" {
				if chunk < 0 {
					return errors.New("--ipfs-api needs range tables (--range-chunk): bdd reads only verified layers through IPFS")
				}
				if opts.IPFS, err = ipfsnode.NewClient(ipfsAPI); err != nil {
					return fmt.Errorf("--ipfs-api: %w", err)
				}
			} else if ipfsPin {
				return errors.New("--ipfs-pin needs --ipfs-api")
			}
			if recorder != nil {
				// The trace is recorded before the tag moves: a failed recording leaves DST's
				// tag where it was.
				opts.BeforeTag = func(ctx context.Context, desc ocispec.Descriptor) error {
					return recorder.record(ctx, args[1], desc, cmd.OutOrStdout(), cmd.ErrOrStderr())
				}
			}
			c, err := convert.New(opts)
			if err != nil {
				return err
			}
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
	registryFlags(f, &reg)
	f.StringVar(&ipfsAPI, "ipfs-api", "", "RPC API of a kubo node (http://127.0.0.1:5001): name each layer ipfs://<CID> for peer-to-peer reads")
	f.BoolVar(&ipfsPin, "ipfs-pin", false, "with --ipfs-api: also store the layers in that node, which serves them to peers")
	f.BoolVar(&rec.enabled, "record-trace", false, "run the converted image's command once and push its start trace with the image")
	f.DurationVar(&rec.timeout, "record-timeout", tracerec.DefaultTimeout, "with --record-trace: stop the command after this long (and keep the trace)")
	f.StringVar(&rec.socket, "bdd-socket", bddclient.DefaultSocket, "with --record-trace: control socket of the bdd that serves the image")
	return cmd
}

// registryFlags adds the flags of registry access (hosts, credentials, plain HTTP, timeout).
func registryFlags(f *pflag.FlagSet, reg *convert.RegistryOptions) {
	f.StringVar(&reg.HostsDir, "hosts-dir", "", "registry host configuration (containerd certs.d layout with hosts.toml)")
	f.StringVar(&reg.DockerConfig, "docker-config", "", "docker config.json with registry credentials (default $DOCKER_CONFIG or ~/.docker)")
	f.BoolVar(&reg.PlainHTTP, "plain-http", false, "talk plain HTTP to every registry (localhost registries always may)")
	f.DurationVar(&reg.Timeout, "registry-timeout", convert.DefaultRegistryTimeout, "fail a registry request that makes no progress for this long")
}

// recordFlags are convert's --record-trace options.
type recordFlags struct {
	enabled bool
	timeout time.Duration
	socket  string
	command []string // after --
}

// recorder records the start trace of a converted image; a nil one records nothing.
type recorder struct {
	flags    recordFlags
	bdd      bddv1.DaemonClient
	conn     *grpc.ClientConn
	resolver remotes.Resolver
	workDir  string
}

// prepare checks, before anything converts, that a recording can run: a registry
// destination and a bdd that answers. It returns nil when --record-trace is off.
func (f recordFlags) prepare(ctx context.Context, dst string, reg convert.RegistryOptions, workDir string) (*recorder, error) {
	if !f.enabled {
		return nil, nil
	}
	if f.timeout <= 0 {
		return nil, fmt.Errorf("--record-timeout %s: want a positive duration", f.timeout)
	}
	loc, err := convert.ParseLocation(dst)
	if err != nil {
		return nil, err
	}
	if loc.Dir != "" {
		return nil, fmt.Errorf("--record-trace: %s is an image layout; the trace goes to a registry, beside the image: give a registry reference", dst)
	}
	resolvers, err := reg.Resolvers(ctx)
	if err != nil {
		return nil, err
	}
	client, conn, err := bddclient.Dial(f.socket)
	if err != nil {
		return nil, fmt.Errorf("--record-trace: %w", err)
	}
	callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := client.List(callCtx, &bddv1.ListRequest{}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("--record-trace: bdd at %s (--bdd-socket): %w", f.socket, err)
	}
	return &recorder{flags: f, bdd: client, conn: conn, resolver: resolvers(), workDir: filepath.Join(workDir, "record")}, nil
}

func (r *recorder) close() {
	if r != nil {
		r.conn.Close()
	}
}

// record runs the image pushed as desc at dst once and pushes its start trace.
func (r *recorder) record(ctx context.Context, dst string, desc ocispec.Descriptor, stdout, progress io.Writer) error {
	if err := os.MkdirAll(r.workDir, 0o700); err != nil {
		return err
	}
	res, err := tracerec.Record(ctx, dst, desc, tracerec.Options{
		BDD: r.bdd, Resolver: r.resolver, Command: r.flags.command, Timeout: r.flags.timeout,
		WorkDir: r.workDir, Progress: progress, Recorder: "obd convert --record-trace",
	})
	if err != nil {
		return fmt.Errorf("recording its start: %w", err)
	}
	p := res.Pushed
	fmt.Fprintf(stdout, "start trace %s pushed for %s@%s (%d blobs, %d ranges, %s; %d page ranges)\n", p.Descriptor.Digest, dst,
		p.Subject.Digest, p.Summary.Blobs, p.Summary.Ranges, units.BytesSize(float64(p.Summary.Bytes)), res.PageRanges)
	if p.ReferrersTag != "" {
		fmt.Fprintf(progress, "the registry keeps no referrers itself: listed in the referrers tag %s\n", p.ReferrersTag)
	}
	return nil
}
