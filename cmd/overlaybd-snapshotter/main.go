// Command overlaybd-snapshotter serves obd's containerd snapshotter (package snapshotter) on a
// unix socket, for containerd to use as the proxy plugin `overlaybd`:
//
//	[proxy_plugins.overlaybd]
//	  type = "snapshot"
//	  address = "/run/overlaybd-snapshotter/grpc.sock"
//
// With criImageProxy set it also serves kubelet's CRI image service (package criproxy),
// which hands the credentials of each pull to bdd.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"google.golang.org/grpc"

	"github.com/obdproject/obd/bddclient"
	"github.com/obdproject/obd/criproxy"
	"github.com/obdproject/obd/snapshotter"
)

func main() {
	configPath := flag.String("config", snapshotter.DefaultConfigPath, "config file (JSON); the defaults apply when the default path does not exist")
	root := flag.String("root", "", "root directory (overrides the config file)")
	address := flag.String("address", "", "unix socket to serve on (overrides the config file)")
	bddSocket := flag.String("bdd-socket", "", "bdd's control socket (overrides the config file)")
	flag.Parse()

	cfg, err := loadConfig(*configPath, *configPath != snapshotter.DefaultConfigPath)
	if err == nil {
		err = override(&cfg, *root, *address, *bddSocket)
	}
	if err == nil {
		err = run(cfg)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "overlaybd-snapshotter:", err)
		os.Exit(1)
	}
}

func loadConfig(path string, explicit bool) (snapshotter.Config, error) {
	if _, err := os.Stat(path); !explicit && errors.Is(err, os.ErrNotExist) {
		return snapshotter.DefaultConfig(), nil
	}
	return snapshotter.LoadConfig(path)
}

func override(cfg *snapshotter.Config, root, address, bddSocket string) error {
	if root != "" {
		cfg.Root = root
	}
	if address != "" {
		cfg.Address = address
	}
	if bddSocket != "" {
		cfg.BDDSocket = bddSocket
	}
	return cfg.Validate()
}

func run(cfg snapshotter.Config) error {
	level, err := cfg.Level()
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	opts := append(cfg.Options(), snapshotter.WithLogger(logger))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	proxyDone := make(chan error, 1)
	if cfg.BDDSocket != "" {
		client, conn, err := bddclient.Dial(cfg.BDDSocket)
		if err != nil {
			return err
		}
		defer conn.Close()
		if cfg.CRIImageProxy != "" {
			upstream, upConn, err := criproxy.DialContainerd(cfg.ContainerdAddress)
			if err != nil {
				return err
			}
			defer upConn.Close()
			proxy := criproxy.New(upstream, criproxy.BDDSink{Client: client}, logger)
			go func() {
				proxyDone <- snapshotter.ServeGRPC(ctx, cfg.CRIImageProxy, func(s *grpc.Server) { criproxy.Register(s, proxy) }, criproxy.ServerOptions()...)
				stop() // a proxy that failed takes the snapshotter down: the service restarts both
			}()
			logger.Info("serving the CRI image service", "address", cfg.CRIImageProxy, "containerd", cfg.ContainerdAddress)
		}
		bddOpts := []snapshotter.BDDOption{snapshotter.WithBDDLogger(logger)}
		if cfg.TraceDir != "" {
			bddOpts = append(bddOpts, snapshotter.WithTracePrefetch(cfg.TraceDir))
		}
		if cfg.RemoteTraces {
			remote := snapshotter.NewRemoteTraces(client, logger)
			bddOpts = append(bddOpts, snapshotter.WithRemoteTracePrefetch(remote))
			opts = append(opts, snapshotter.WithRemoteTraces(remote))
		}
		if cfg.RemoteIndexes {
			opts = append(opts, snapshotter.WithRemoteIndexes(snapshotter.NewRemoteIndexes(client, logger)))
		}
		devices, err := snapshotter.NewBDDDevices(client, filepath.Join(cfg.Root, "devices"), bddOpts...)
		if err != nil {
			return err
		}
		// Devices a previous run attached but never recorded (it was killed in between).
		if err := devices.Reconcile(ctx); err != nil {
			logger.Warn("reconciling bdd's devices with the snapshotter's records", "err", err)
		}
		opts = append(opts, snapshotter.WithDeviceManager(devices))
	} else {
		logger.Warn("no bddSocket configured: containers of overlaybd images cannot start")
	}
	sn, err := snapshotter.NewSnapshotter(cfg.Root, opts...)
	if err != nil {
		return err
	}
	defer sn.Close()

	logger.Info("serving", "address", cfg.Address, "root", cfg.Root, "rwMode", cfg.RWMode, "bddSocket", cfg.BDDSocket,
		"traceDir", cfg.TraceDir, "remoteTraces", cfg.RemoteTraces, "remoteIndexes", cfg.RemoteIndexes)
	err = snapshotter.Serve(ctx, sn, cfg.Address)
	if cfg.CRIImageProxy != "" && cfg.BDDSocket != "" {
		stop()
		err = errors.Join(err, <-proxyDone)
	}
	return err
}
