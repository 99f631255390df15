// Command obd-fdkeeper holds the /dev/fuse descriptors of bdd's fuseloop devices so
// that their FUSE connections survive a bdd crash or restart (see package
// blockdev/fdkeeper). Run it beside bdd, outside bdd's process tree's fate.
package main

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/obdproject/obd/blockdev/fdkeeper"
)

func main() {
	socket := flag.String("socket", "/run/obd/fdkeeper.sock", "unix socket (SOCK_SEQPACKET) to serve on")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := os.MkdirAll(filepath.Dir(*socket), 0o700); err != nil {
		slog.Error("fdkeeper", "err", err)
		os.Exit(1)
	}
	l, err := fdkeeper.Listen(*socket)
	if err != nil {
		slog.Error("fdkeeper", "err", err)
		os.Exit(1)
	}
	s := fdkeeper.NewServer(slog.Default())
	slog.Info("fdkeeper serving", "socket", *socket)
	if err := s.Serve(ctx, l); err != nil {
		slog.Error("fdkeeper", "err", err)
		os.Exit(1)
	}
	// Releasing the descriptors ends every FUSE connection only bdd does not hold.
	s.Close()
}
