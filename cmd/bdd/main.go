// Command bdd is obd's block-device daemon: it serves layer stacks as block devices
// (FUSE file + loop, or NBD export) and is controlled over a unix socket by
// `obd attach|detach|ls|stats` and the overlaybd snapshotter. The logic lives in
// package bdd; this file parses flags and wires it up.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/obdproject/obd/bdd"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
)

func main() {
	if err := newCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "bdd:", err)
		os.Exit(1)
	}
}

func newCmd() *cobra.Command {
	cfg := bdd.DefaultConfig()
	var configPath string
	cmd := &cobra.Command{
		Use:   "bdd [flags]",
		Short: "obd's block-device daemon",
		Long: `bdd serves overlaybd layer stacks as block devices.

Clients (obd attach|detach|ls|stats, the overlaybd snapshotter) talk to it over a
gRPC unix socket. Layers are local files or registry blobs fetched lazily through a
persistent cache. Every device is recorded under the state dir, so after bdd is
killed and started again the devices come back and mounts on them keep working.

Settings come from a TOML config file (default ` + bdd.DefaultConfigPath + `, optional),
then from flags, which override it. Config keys: state_dir, socket, log_level,
metrics_addr, transport, run_dir, memory_limit, [cache] dir and size, [registry]
certs_dir, docker_config and read_timeout. Example:

  state_dir = "/var/lib/obd/bdd"
  [cache]
  size = "20GiB"
  [registry]
  read_timeout = "1m"`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	cmd.CompletionOptions.DisableDefaultCmd = true
	cmd.Flags().StringVar(&configPath, "config", bdd.DefaultConfigPath, "TOML config file")
	cfg.RegisterFlags(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := cfg.Load(configPath, cmd.Flags()); err != nil {
			return err
		}
		return run(cfg)
	}
	cmd.AddCommand(newKeeperCmd())
	return cmd
}

// keeperCommand is the hidden subcommand bdd starts to hold FUSE descriptors.
const keeperCommand = "fdkeeper"

func newKeeperCmd() *cobra.Command {
	cfg := bdd.DefaultConfig()
	cmd := &cobra.Command{
		Use:    keeperCommand,
		Short:  "hold the FUSE descriptors of bdd's devices across bdd restarts (started by bdd)",
		Hidden: true,
		Args:   cobra.NoArgs,
	}
	cmd.Flags().StringVar(&cfg.RunDir, "run-dir", cfg.RunDir, "bdd's run dir")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		// bdd starts the keeper in its own session, so signals aimed at bdd's
		// terminal or process group miss it; SIGTERM stops it (and with it the
		// FUSE connections of devices bdd is not serving).
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
		defer stop()
		return bdd.RunKeeper(ctx, cfg, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	}
	return cmd
}

func run(cfg bdd.Config) error {
	level, err := cfg.SlogLevel()
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if cfg.MemoryLimit > 0 {
		go bdd.LimitMemory(ctx, int64(cfg.MemoryLimit), time.Second)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	srv, err := bdd.NewServer(cfg, log, reg, bdd.WithKeeperCommand(exe, keeperCommand, "--run-dir", cfg.RunDir))
	if err != nil {
		return err
	}
	l, err := bdd.ListenControl(cfg.Socket)
	if err != nil {
		return err
	}
	if err := srv.Restore(ctx); err != nil {
		log.Error("some devices were not restored", "err", err)
	}
	if cfg.MetricsAddr != "" {
		ml, err := net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			return fmt.Errorf("metrics listener: %w", err)
		}
		log.Info("metrics listening", "addr", ml.Addr().String())
		go func() {
			if err := bdd.ServeMetrics(ctx, ml, reg); err != nil {
				log.Error("metrics listener failed", "err", err)
			}
		}()
	}
	log.Info("bdd serving", "socket", cfg.Socket, "state", cfg.StateDir)
	if err := srv.Serve(ctx, l); err != nil {
		return err
	}
	return srv.Shutdown()
}
