package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/core/snapshots"
	"google.golang.org/grpc"
)

// stopGrace bounds how long Serve waits for calls in flight when its context ends.
const stopGrace = 10 * time.Second

// Serve serves sn as containerd's snapshots gRPC API on the unix socket at address until ctx
// ends (then it returns nil) or the server fails. A stale socket file from an earlier run is
// replaced; the socket is made accessible to root only.
func Serve(ctx context.Context, sn snapshots.Snapshotter, address string) error {
	return ServeGRPC(ctx, address, func(server *grpc.Server) {
		snapshotsapi.RegisterSnapshotsServer(server, snapshotservice.FromSnapshotter(sn))
	})
}

// ServeGRPC serves the services register adds to a gRPC server (made with opts) on the unix
// socket at address, as Serve does: the process's other APIs (the CRI image proxy) are served
// the same way.
func ServeGRPC(ctx context.Context, address string, register func(*grpc.Server), opts ...grpc.ServerOption) error {
	if err := os.MkdirAll(filepath.Dir(address), 0o700); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	if err := os.Remove(address); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("serve: remove stale socket: %w", err)
	}
	listener, err := net.Listen("unix", address)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	if err := os.Chmod(address, 0o600); err != nil {
		listener.Close()
		return fmt.Errorf("serve: %w", err)
	}
	server := grpc.NewServer(opts...)
	register(server)

	served := make(chan error, 1)
	go func() { served <- server.Serve(listener) }()
	select {
	case err := <-served:
		return fmt.Errorf("serve %s: %w", address, err)
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() {
		server.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(stopGrace):
		server.Stop()
	}
	return nil
}
