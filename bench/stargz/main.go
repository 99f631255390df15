// Command stargz-snapshotter serves the stargz snapshotter (github.com/containerd/stargz-snapshotter,
// built from its library packages because its cmd module is not in the Go module proxy) as a
// containerd proxy snapshotter on a unix socket. It is the lazy-pulling peer that obd's cold-start
// benchmark (bench/coldstart) compares against; it is not part of obd's read path.
//
// It lives in its own Go module so that stargz's dependencies never enter obd's go.mod.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/stargz-snapshotter/service"
	"github.com/obdproject/obd/bench/proxyplugin"
	"google.golang.org/grpc"
)

func main() {
	root := flag.String("root", "/var/lib/obd-bench-stargz", "directory of the snapshots and the layer cache")
	address := flag.String("address", "/run/obd-bench-stargz/grpc.sock", "unix socket to serve containerd's snapshots API on")
	noBackgroundFetch := flag.Bool("no-background-fetch", false, "do not fetch whole layers in the background (stargz fetches them by default)")
	flag.Parse()
	if err := run(*root, *address, *noBackgroundFetch); err != nil {
		fmt.Fprintln(os.Stderr, "stargz-snapshotter:", err)
		os.Exit(1)
	}
}

func run(root, address string, noBackgroundFetch bool) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	var cfg service.Config
	cfg.NoBackgroundFetch = noBackgroundFetch
	// Registries on 127.0.0.1 are reached over plain HTTP by stargz's resolver (MatchLocalhost).
	sn, err := service.NewStargzSnapshotterService(ctx, root, &cfg)
	if err != nil {
		return fmt.Errorf("start stargz snapshotter in %s: %w", root, err)
	}
	defer sn.Close()

	slog.Info("serving", "address", address, "root", root, "backgroundFetch", !noBackgroundFetch)
	return proxyplugin.Serve(ctx, address, func(srv *grpc.Server) {
		snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	})
}
