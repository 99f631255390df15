// Command soci-snapshotter serves the SOCI snapshotter (github.com/awslabs/soci-snapshotter, built
// from its library packages because its cmd module has no tagged releases in the Go module proxy)
// as a containerd proxy snapshotter on a unix socket. It is the SOCI peer that obd's cold-start
// benchmark (bench/coldstart) compares against; it is not part of obd's read path.
//
// It lives in its own Go module so that SOCI's dependencies never enter obd's go.mod.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/awslabs/soci-snapshotter/config"
	socifs "github.com/awslabs/soci-snapshotter/fs"
	"github.com/awslabs/soci-snapshotter/metadata"
	"github.com/awslabs/soci-snapshotter/service"
	"github.com/awslabs/soci-snapshotter/ztoc"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/log"
	"github.com/obdproject/obd/bench/proxyplugin"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc"
)

func main() {
	root := flag.String("root", "/var/lib/obd-bench-soci", "directory of the snapshots, the SOCI artifacts and the layer cache")
	address := flag.String("address", "/run/obd-bench-soci/grpc.sock", "unix socket to serve containerd's snapshots API on")
	configPath := flag.String("config", "", "SOCI's config.toml (empty: SOCI's defaults)")
	minLayerSize := flag.Int64("min-layer-size", -1, "layers smaller than this many bytes are pulled whole instead of lazily (-1: the config's)")
	noBackgroundFetch := flag.Bool("no-background-fetch", false, "do not fetch whole layers in the background (SOCI fetches them by default)")
	flag.Parse()
	if err := run(*root, *address, *configPath, *minLayerSize, *noBackgroundFetch); err != nil {
		fmt.Fprintln(os.Stderr, "soci-snapshotter:", err)
		os.Exit(1)
	}
}

func run(root, address, configPath string, minLayerSize int64, noBackgroundFetch bool) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// JSON lines: the benchmark reads how each layer was prepared from them
	// (bench/coldstart.ReadSOCIPrepared).
	if err := log.SetFormat(log.JSONFormat); err != nil {
		return err
	}

	cfg := config.NewConfig()
	if configPath != "" {
		var err error
		if cfg, err = config.NewConfigFromToml(configPath); err != nil {
			return err
		}
	}
	if cfg == nil {
		return errors.New("SOCI's default config did not parse")
	}
	if minLayerSize >= 0 {
		cfg.MinLayerSize = minLayerSize
	}
	if noBackgroundFetch {
		cfg.BackgroundFetchConfig.Disable = true
	}
	// SOCI's own content store (under root): no containerd socket to share, and each node's
	// artifacts go when its root does. Registries on 127.0.0.1 are reached over plain HTTP
	// (SOCI's resolver: docker.IsLocalhost).
	cfg.ContentStoreConfig.Type = config.SociContentStoreType
	cfg.NoPrometheus = true
	if err := os.MkdirAll(root, 0o700); err != nil {
		return err
	}
	// The layers' file metadata (from their zTOCs) in one bbolt database, SOCI's "db"
	// metadata store; the service has no default and needs one.
	db, err := bolt.Open(filepath.Join(root, "metadata.db"), 0o600, &bolt.Options{NoFreelistSync: true, NoSync: cfg.MetadataDBNoSync})
	if err != nil {
		return fmt.Errorf("metadata database: %w", err)
	}
	defer db.Close()
	store := func(sr *io.SectionReader, toc ztoc.TOC, opts ...metadata.Option) (metadata.Reader, error) {
		return metadata.NewReader(db, sr, toc, opts...)
	}
	sn, err := service.NewSociSnapshotterService(ctx, root, &cfg.ServiceConfig,
		service.WithFilesystemOptions(socifs.WithMetadataStore(store)))
	if err != nil {
		return fmt.Errorf("start SOCI snapshotter in %s: %w", root, err)
	}
	defer sn.Close()

	log.G(ctx).WithFields(log.Fields{"address": address, "root": root, "minLayerSize": cfg.MinLayerSize,
		"backgroundFetch": !cfg.BackgroundFetchConfig.Disable, "contentStore": cfg.ContentStoreConfig.Type}).Info("serving")
	return proxyplugin.Serve(ctx, address, func(srv *grpc.Server) {
		snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	})
}
