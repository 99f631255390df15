// Package proxyplugin serves gRPC services to containerd as a proxy plugin on a unix socket. It
// is shared by the cold-start benchmark's peer snapshotters (bench/stargz, bench/soci), each a Go
// module of its own so that their dependencies never enter obd's go.mod; it is not part of obd.
// It is obd's snapshotter.ServeGRPC over again because importing obd's module would put obd's
// containerd into the peers' builds in place of the one stargz or SOCI was built against.
package proxyplugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
)

// Serve listens on the unix socket address (replacing a stale one, making its directory),
// registers the services on a new gRPC server and serves them until ctx is done, when it stops
// the server gracefully and returns nil.
func Serve(ctx context.Context, address string, register func(*grpc.Server)) error {
	if err := os.MkdirAll(filepath.Dir(address), 0o700); err != nil {
		return fmt.Errorf("socket dir: %w", err)
	}
	if err := os.Remove(address); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	ln, err := net.Listen("unix", address)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", address, err)
	}
	srv := grpc.NewServer()
	register(srv)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		srv.GracefulStop()
	}()
	err = srv.Serve(ln)
	if ctx.Err() != nil {
		<-stopped
		return nil
	}
	return err
}
