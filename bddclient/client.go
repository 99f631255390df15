// Package bddclient is what a client of bdd needs beside its API (api/bdd/v1): dialing the
// daemon's control socket, the command-line forms of layers and transports, and the checks of
// an API layer that the daemon applies as well. Clients (the snapshotter, ctr-obd, obd-lambda,
// the sandboxes' rootfs provider, `obd device`) import it instead of bdd, so that they link
// the client, not the daemon with its block devices and fetcher; bdd imports it for the
// shared checks, never the reverse.
package bddclient

import (
	"fmt"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
)

// DefaultSocket is where bdd listens unless its configuration says otherwise.
const DefaultSocket = "/run/obd/bdd.sock"

// Dial connects to the control API of the bdd listening on the unix socket at path.
// The connection is lazy: errors show up on the first call, which callers bound with
// a context deadline. Close the returned connection when done.
func Dial(path string) (bddv1.DaemonClient, *grpc.ClientConn, error) {
	// gRPC reads a relative "unix://x" as an authority, so make the path absolute.
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, nil, fmt.Errorf("bddclient: dial %s: %w", path, err)
	}
	// The socket is local and root-only, so the channel needs no transport security.
	conn, err := grpc.NewClient("unix://"+abs, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, fmt.Errorf("bddclient: dial %s: %w", path, err)
	}
	return bddv1.NewDaemonClient(conn), conn, nil
}

// KeeperPIDFile is where the descriptor keeper of the bdd whose run_dir is runDir records its
// process id. The keeper outlives bdd by design (it carries FUSE connections over restarts of
// bdd), so whoever removes a bdd for good (a test, the benchmark) stops it by this file.
func KeeperPIDFile(runDir string) string { return filepath.Join(runDir, "fdkeeper.pid") }
