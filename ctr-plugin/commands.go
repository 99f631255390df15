package ctrplugin

import (
	"context"
	"fmt"
	"time"

	"github.com/urfave/cli/v3"
	"google.golang.org/grpc"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/bddclient"
	"github.com/obdproject/obd/tracestore"
)

// Snapshotter is the proxy snapshotter name lazy images are unpacked with; containerd's config
// registers obd's snapshotter under it, and nerdctl passes lazy-layer labels only for it.
const Snapshotter = "overlaybd"

// Commands returns the commands to add to ctr's root command.
func Commands() []*cli.Command {
	return []*cli.Command{rpullCommand, obdconvCommand, recordTraceCommand}
}

// Flags shared by the commands that talk to bdd or the trace store.
var (
	snapshotterFlag = &cli.StringFlag{
		Name:  "snapshotter",
		Usage: "Proxy snapshotter that prepares overlaybd layers lazily",
		Value: Snapshotter,
	}
	bddSocketFlag = &cli.StringFlag{
		Name:  "bdd-socket",
		Usage: "Control socket of bdd",
		Value: bddclient.DefaultSocket,
	}
	traceDirFlag = &cli.StringFlag{
		Name:  "trace-dir",
		Usage: "Directory of recorded start traces, keyed by the chain of layer blobs",
		Value: tracestore.DefaultDir,
	}
)

// bddCallTimeout bounds the short bdd calls (StartTrace, StopTrace, Stats).
const bddCallTimeout = 30 * time.Second

// dialBDD connects to bdd's control socket and checks that it answers, so a wrong socket is
// reported before any work starts.
func dialBDD(ctx context.Context, socket string) (bddv1.DaemonClient, *grpc.ClientConn, error) {
	client, conn, err := bddclient.Dial(socket)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, bddCallTimeout)
	defer cancel()
	if _, err := client.List(ctx, &bddv1.ListRequest{}); err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("bdd at %s does not answer: %w", socket, err)
	}
	return client, conn, nil
}
