package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/bddclient"
	"github.com/obdproject/obd/quantity"
	"github.com/spf13/cobra"
)

// daemonFlags are the connection settings every bdd client command takes.
type daemonFlags struct {
	socket  string
	timeout time.Duration
}

func addDaemonFlags(cmd *cobra.Command) *daemonFlags {
	f := &daemonFlags{}
	cmd.Flags().StringVar(&f.socket, "socket", bddclient.DefaultSocket, "control socket of bdd")
	cmd.Flags().DurationVar(&f.timeout, "timeout", time.Minute, "time limit of the call to bdd")
	return f
}

// call dials bdd and runs fn with a context bounded by the timeout flag.
func (f *daemonFlags) call(cmd *cobra.Command, fn func(context.Context, bddv1.DaemonClient) error) error {
	client, conn, err := bddclient.Dial(f.socket)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
	defer cancel()
	return fn(ctx, client)
}

func newAttachCmd() *cobra.Command {
	var (
		req       bddv1.AttachRequest
		transport string
		upperSize quantity.Size
	)
	cmd := &cobra.Command{
		Use:   "attach (--layer FILE | --blob REF@DIGEST:SIZE)... [--upper DIR] [--ro] [--transport fuse|nbd]",
		Short: "Expose a stack of layers as a block device (via bdd)",
		Long: "attach asks bdd to open a stack of layers, bottom first, and serve it as a block device.\n" +
			"Local layer files are given with --layer, registry blobs with --blob, in stack order\n" +
			"(the two may be mixed). With --upper the device is writable\n" +
			"(the directory holds the writable layer). Prints the device id, path and NBD socket.",
		Args: cobra.NoArgs,
	}
	df := addDaemonFlags(cmd)
	cmd.Flags().Var(layerFlag{&req.Layers, false}, "layer", "local layer file (repeatable, bottom first)")
	cmd.Flags().Var(layerFlag{&req.Layers, true}, "blob", "registry layer blob REF@DIGEST:SIZE, with #TABLE@OFFSET for its range table (repeatable, bottom first)")
	cmd.Flags().StringVar(&req.UpperDir, "upper", "", "writable upper layer directory")
	cmd.Flags().Var(&upperSize, "upper-size", "virtual size of a new upper layer (default: the lower layers' size)")
	cmd.Flags().BoolVar(&req.ReadOnly, "ro", false, "read-only device")
	cmd.Flags().StringVar(&transport, "transport", "", "fuse (loop device) or nbd (NBD socket); default: bdd's")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if req.UpperDir != "" {
			abs, err := filepath.Abs(req.UpperDir)
			if err != nil {
				return fmt.Errorf("upper %s: %w", req.UpperDir, err)
			}
			req.UpperDir = abs
		}
		req.UpperSize = int64(upperSize)
		if transport != "" {
			t, err := bddclient.ParseTransport(transport)
			if err != nil {
				return err
			}
			req.Transport = t
		}
		return df.call(cmd, func(ctx context.Context, c bddv1.DaemonClient) error {
			resp, err := c.Attach(ctx, &req)
			if err != nil {
				return fmt.Errorf("attach: %w", err)
			}
			d := resp.GetDevice()
			fmt.Fprintf(cmd.OutOrStdout(), "id: %s\ndevice: %s\nnbd socket: %s\nsize: %d\n", d.GetId(), d.GetDevicePath(), d.GetNbdSocket(), d.GetSize())
			return nil
		})
	}
	return cmd
}

// layerFlag appends --layer and --blob values to one list, so the stack keeps the
// order they were given in.
type layerFlag struct {
	layers *[]*bddv1.Layer
	remote bool
}

func (f layerFlag) Set(s string) error {
	if f.remote {
		l, err := bddclient.ParseBlobLayer(s)
		if err != nil {
			return err
		}
		*f.layers = append(*f.layers, l)
		return nil
	}
	abs, err := filepath.Abs(s)
	if err != nil {
		return fmt.Errorf("layer %s: %w", s, err)
	}
	*f.layers = append(*f.layers, &bddv1.Layer{Source: &bddv1.Layer_Path{Path: abs}})
	return nil
}

func (f layerFlag) String() string { return "" }

func (f layerFlag) Type() string {
	if f.remote {
		return "REF@DIGEST:SIZE"
	}
	return "FILE"
}

func newDetachCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "detach ID",
		Short: "Detach a device served by bdd (fails while it is mounted)",
		Args:  cobra.ExactArgs(1),
	}
	df := addDaemonFlags(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return df.call(cmd, func(ctx context.Context, c bddv1.DaemonClient) error {
			if _, err := c.Detach(ctx, &bddv1.DetachRequest{Id: args[0]}); err != nil {
				return fmt.Errorf("detach %s: %w", args[0], err)
			}
			return nil
		})
	}
	return cmd
}

func newLsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the devices bdd serves",
		Args:  cobra.NoArgs,
	}
	df := addDaemonFlags(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return df.call(cmd, func(ctx context.Context, c bddv1.DaemonClient) error {
			resp, err := c.List(ctx, &bddv1.ListRequest{})
			if err != nil {
				return fmt.Errorf("ls: %w", err)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tTRANSPORT\tMODE\tSIZE\tDEVICE\tNBD SOCKET\tLAYERS\tUPPER")
			for _, d := range resp.GetDevices() {
				mode := "rw"
				if d.GetReadOnly() || d.GetUpperDir() == "" {
					mode = "ro"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", d.GetId(), bddclient.TransportName(d.GetTransport()), mode,
					quantity.Size(d.GetSize()), dash(d.GetDevicePath()), dash(d.GetNbdSocket()), len(d.GetLayers()), dash(d.GetUpperDir()))
			}
			return w.Flush()
		})
	}
	return cmd
}

func newStatsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "stats ID",
		Short: "Show per-layer read counters of a device served by bdd",
		Args:  cobra.ExactArgs(1),
	}
	df := addDaemonFlags(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return df.call(cmd, func(ctx context.Context, c bddv1.DaemonClient) error {
			resp, err := c.Stats(ctx, &bddv1.StatsRequest{Id: args[0]})
			if err != nil {
				return fmt.Errorf("stats %s: %w", args[0], err)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "#\tHITS\tMISSES\tFETCHED\tRETRIES\tERRORS\tLAYER")
			for _, l := range resp.GetLayers() {
				fmt.Fprintf(w, "%d\t%d\t%d\t%d\t%d\t%d\t%s\n", l.GetIndex(), l.GetHits(), l.GetMisses(), l.GetBytesFetched(), l.GetRetries(), l.GetErrors(), l.GetName())
			}
			return w.Flush()
		})
	}
	return cmd
}

func newTraceCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "trace start | stop FILE | replay FILE",
		Short: "Record which ranges of remote layers are read, and prefetch them later (via bdd)",
	}
	start := &cobra.Command{Use: "start", Short: "Start recording reads of remote layers", Args: cobra.NoArgs}
	startFlags := addDaemonFlags(start)
	start.RunE = func(cmd *cobra.Command, _ []string) error {
		return startFlags.call(cmd, func(ctx context.Context, c bddv1.DaemonClient) error {
			_, err := c.StartTrace(ctx, &bddv1.StartTraceRequest{})
			return err
		})
	}
	stop := &cobra.Command{Use: "stop FILE", Short: "Stop recording and write the trace to FILE", Args: cobra.ExactArgs(1)}
	stopFlags := addDaemonFlags(stop)
	stop.RunE = func(cmd *cobra.Command, args []string) error {
		return stopFlags.call(cmd, func(ctx context.Context, c bddv1.DaemonClient) error {
			resp, err := c.StopTrace(ctx, &bddv1.StopTraceRequest{})
			if err != nil {
				return err
			}
			return os.WriteFile(args[0], resp.GetTrace(), 0o644)
		})
	}
	replay := &cobra.Command{Use: "replay FILE", Short: "Prefetch the ranges recorded in a trace into bdd's cache", Args: cobra.ExactArgs(1)}
	replayFlags := addDaemonFlags(replay)
	replay.RunE = func(cmd *cobra.Command, args []string) error {
		trace, err := os.ReadFile(args[0])
		if err != nil {
			return err
		}
		return replayFlags.call(cmd, func(ctx context.Context, c bddv1.DaemonClient) error {
			_, err := c.Prefetch(ctx, &bddv1.PrefetchRequest{Trace: trace})
			return err
		})
	}
	cmd.AddCommand(start, stop, replay)
	return cmd
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
