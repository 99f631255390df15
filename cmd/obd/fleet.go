package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/obdproject/obd/fleetsim"
	"github.com/obdproject/obd/mirrorwarm"
)

func newFleetSimCmd() *cobra.Command {
	var (
		figures, chart, nodes  string
		cfg                    fleetsim.Config
		originGbit, mirrorGbit float64
	)
	cmd := &cobra.Command{
		Use:   "fleet-sim --figures firststart.json [--nodes 100,1000,10000] [--chart fleet.png]",
		Short: "Model a fleet starting one image at once, from one node's measured starts",
		Long: "fleet-sim reads the figures of bench/fleet (one node's start against a far origin: direct, through a\n" +
			"warm zone mirror, through a cold mirror warmed on the manifest GET) and models fleets of nodes\n" +
			"starting the image at once: the origin's egress and the p50/p99 start time per mode, with\n" +
			"peer to peer through IPFS (a canary seeds the image, the fleet starts from its peers). It prints\n" +
			"a markdown table and can draw a PNG chart.",
		Example: "  go test ./bench/fleet -run TestFirstStart -fleet -fleet.out /tmp/firststart.json\n" +
			"  obd fleet-sim --figures bench/fleet/firststart-1gbit.json --chart bench/fleet/fleet.png",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := fleetsim.Load(figures)
			if err != nil {
				return err
			}
			for s := range strings.SplitSeq(nodes, ",") {
				n, err := strconv.Atoi(strings.TrimSpace(s))
				if err != nil || n <= 0 {
					return fmt.Errorf("--nodes: %q is not a positive number", s)
				}
				cfg.Nodes = append(cfg.Nodes, n)
			}
			if originGbit <= 0 || mirrorGbit <= 0 || cfg.ZoneSize <= 0 {
				return errors.New("--origin-gbit, --mirror-gbit and --zone-size must be positive")
			}
			cfg.OriginBW, cfg.MirrorBW = originGbit*1e9/8, mirrorGbit*1e9/8
			points, err := fleetsim.Simulate(f, cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Figures: %s\nFleet: zones of %d nodes, origin %g Gbit/s, mirrors %g Gbit/s.\n\n%s",
				f.Note, cfg.ZoneSize, originGbit, mirrorGbit, fleetsim.Markdown(points))
			if chart == "" {
				return nil
			}
			out, err := os.Create(chart)
			if err != nil {
				return err
			}
			title := fmt.Sprintf("origin %g Gbit/s, zones of %d", originGbit, cfg.ZoneSize)
			if err := fleetsim.WriteChart(out, points, title); err != nil {
				out.Close()
				return err
			}
			return out.Close()
		},
	}
	cmd.Flags().StringVar(&figures, "figures", "bench/fleet/firststart-1gbit.json", "figures measured by bench/fleet")
	cmd.Flags().StringVar(&nodes, "nodes", "100,300,1000,3000,10000", "fleet sizes, comma-separated")
	cmd.Flags().IntVar(&cfg.ZoneSize, "zone-size", 100, "nodes per zone mirror")
	cmd.Flags().Float64Var(&originGbit, "origin-gbit", 10, "what the origin registry can send in all, Gbit/s")
	cmd.Flags().Float64Var(&mirrorGbit, "mirror-gbit", 10, "what one zone mirror can send, Gbit/s")
	cmd.Flags().Uint64Var(&cfg.Seed, "seed", 1, "seed of the draws from the measured runs")
	cmd.Flags().StringVar(&chart, "chart", "", "write a PNG chart here")
	return cmd
}

func newMirrorWarmCmd() *cobra.Command {
	var (
		listen string
		opts   mirrorwarm.Options
	)
	cmd := &cobra.Command{
		Use:   "mirror-warm --mirror HOST:PORT [--listen ADDR]",
		Short: "Warm a zone mirror with an image's layers when a node pulls its manifest",
		Long: "mirror-warm serves the webhook of a distribution registry in pull-through proxy mode (its\n" +
			"notifications endpoint): on every pull of an image manifest it reads the image's layers whole\n" +
			"through the mirror, which makes the mirror fetch and keep them, the layers the image's start\n" +
			"trace names first. Credentials for the mirror come from Docker's config.json.",
		Example: "  obd mirror-warm --mirror zone-mirror.internal:5000 --listen 127.0.0.1:5001\n" +
			"  # the mirror's config.yml: notifications: endpoints: [{name: obd-warm, url: http://127.0.0.1:5001/events}]",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts.Logger = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
			w, err := mirrorwarm.New(opts)
			if err != nil {
				return err
			}
			defer w.Close()
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			srv := &http.Server{Addr: listen, Handler: w, ReadHeaderTimeout: 10 * time.Second}
			go func() {
				<-ctx.Done()
				sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = srv.Shutdown(sctx)
			}()
			opts.Logger.Info("mirror-warm: listening", "addr", listen, "mirror", opts.Mirror)
			if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:5001", "address of the webhook")
	cmd.Flags().StringVar(&opts.Mirror, "mirror", "", "the mirror's host:port, as nodes name it")
	cmd.Flags().BoolVar(&opts.PlainHTTP, "plain-http", false, "talk plain HTTP to the mirror (loopback mirrors always may)")
	cmd.Flags().StringVar(&opts.HostsDir, "hosts-dir", "", "containerd certs.d directory for the mirror's TLS settings")
	cmd.Flags().StringVar(&opts.DockerConfig, "docker-config", "", "docker config.json with the mirror's credentials (default $DOCKER_CONFIG or ~/.docker)")
	cmd.Flags().IntVar(&opts.Concurrency, "concurrency", 4, "blobs read through the mirror at once")
	cmd.Flags().DurationVar(&opts.Remember, "remember", 10*time.Minute, "how long a warmed image is not warmed again")
	return cmd
}
