package ctrplugin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/cmd/ctr/commands"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/docker/go-units"
	"github.com/urfave/cli/v3"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/remotefetch"
	"github.com/obdproject/obd/tracestore"
)

var recordTraceCommand = &cli.Command{
	Name:      "record-trace",
	Usage:     "Run an rpulled image once and record what its start reads, for later prefetch",
	ArgsUsage: "<ref> <trace-file> [-- <command> [args...]]",
	Description: `record-trace runs the image once in a new container on the overlaybd snapshotter (with
the image's command, or the one given after --), with bdd recording every range the start
reads from the registry. Recording stops when the command exits or after --run-timeout,
whichever is first. The trace is written to <trace-file> and kept in --trace-dir under the
chain of the image's layer blobs, where rpull finds it and has bdd prefetch it.
bdd records reads of every device while the trace runs: record on a quiet host. The image's
device must not be mounted yet (no running container of it), or the page cache hides reads.`,
	Flags: []cli.Flag{
		snapshotterFlag, bddSocketFlag, traceDirFlag,
		&cli.DurationFlag{Name: "run-timeout", Usage: "Stop recording (and kill the container) after this long", Value: time.Minute},
	},
	Action: runRecordTrace,
}

func runRecordTrace(ctx context.Context, cmd *cli.Command) error {
	args := cmd.Args().Slice()
	if len(args) < 2 {
		return fmt.Errorf("record-trace: want <ref> <trace-file> [-- command], got %d arguments", len(args))
	}
	ref, traceFile, procArgs := args[0], args[1], args[2:]
	if len(procArgs) > 0 && procArgs[0] == "--" {
		procArgs = procArgs[1:]
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	client, ctx, cancel, err := commands.NewClient(ctx, cmd)
	if err != nil {
		return err
	}
	defer cancel()
	defer client.Close()

	sn := cmd.String("snapshotter")
	img, err := client.GetImage(ctx, ref)
	if err != nil {
		return fmt.Errorf("record-trace: image %s (rpull it first): %w", ref, err)
	}
	if unpacked, err := img.IsUnpacked(ctx, sn); err != nil || !unpacked {
		return fmt.Errorf("record-trace: image %s is not unpacked for snapshotter %s (rpull it first): %v", ref, sn, err)
	}
	chain, err := traceChain(ctx, img)
	if err != nil {
		return err
	}
	daemon, conn, err := dialBDD(ctx, cmd.String("bdd-socket"))
	if err != nil {
		return fmt.Errorf("record-trace: %w", err)
	}
	defer conn.Close()

	out := cmd.Root().Writer
	run := traceRun{client: client, daemon: daemon, image: img, snapshotter: sn, args: procArgs,
		timeout: cmd.Duration("run-timeout"), stdout: out, stderr: cmd.Root().ErrWriter}
	trace, err := run.record(ctx)
	if err != nil {
		return fmt.Errorf("record-trace %s: %w", ref, err)
	}
	if err := os.WriteFile(traceFile, trace, 0o644); err != nil {
		return fmt.Errorf("record-trace: %w", err)
	}
	store := tracestore.Store{Dir: cmd.String("trace-dir")}
	if err := store.Save(chain, trace); err != nil {
		return fmt.Errorf("record-trace: %w", err)
	}
	fmt.Fprintf(out, "recorded %s in %s and %s\n", summarize(trace), traceFile, store.Path(chain))
	return nil
}

// traceRun is one traced start of an image.
type traceRun struct {
	client         *containerd.Client
	daemon         bddv1.DaemonClient
	image          containerd.Image
	snapshotter    string
	args           []string // the image's command when empty
	timeout        time.Duration
	stdout, stderr io.Writer
}

// record starts bdd's trace, runs the container until its command exits (or the timeout kills
// it), and returns the trace. The container and its snapshot are removed, also on errors and
// when ctx is cancelled.
func (r traceRun) record(ctx context.Context) (_ []byte, err error) {
	// Cleanup must run after a Ctrl-C too, with the namespace ctx carries.
	cleanupCtx := context.WithoutCancel(ctx)
	if err := r.callBDD(ctx, func(ctx context.Context) error {
		_, err := r.daemon.StartTrace(ctx, &bddv1.StartTraceRequest{})
		return err
	}); err != nil {
		return nil, fmt.Errorf("bdd StartTrace: %w", err)
	}
	var trace []byte
	stopTrace := func() error {
		return r.callBDD(cleanupCtx, func(ctx context.Context) error {
			resp, err := r.daemon.StopTrace(ctx, &bddv1.StopTraceRequest{})
			trace = resp.GetTrace()
			return err
		})
	}
	defer func() {
		if trace == nil { // an early return: do not leave bdd recording
			err = errors.Join(err, stopTrace())
		}
	}()

	id := fmt.Sprintf("obd-record-trace-%d", time.Now().UnixNano())
	specOpts := []oci.SpecOpts{oci.WithImageConfig(r.image)}
	if len(r.args) > 0 {
		specOpts = append(specOpts, oci.WithProcessArgs(r.args...))
	}
	container, err := r.client.NewContainer(ctx, id,
		containerd.WithImage(r.image),
		containerd.WithSnapshotter(r.snapshotter),
		containerd.WithNewSnapshot(id, r.image),
		containerd.WithNewSpec(specOpts...))
	if err != nil {
		return nil, fmt.Errorf("create container: %w", err)
	}
	defer func() {
		if derr := container.Delete(cleanupCtx, containerd.WithSnapshotCleanup); derr != nil {
			err = errors.Join(err, fmt.Errorf("delete container %s: %w", id, derr))
		}
	}()
	task, err := container.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, r.stdout, r.stderr)))
	if err != nil {
		return nil, fmt.Errorf("create task: %w", err)
	}
	defer func() {
		if _, derr := task.Delete(cleanupCtx, containerd.WithProcessKill); derr != nil {
			err = errors.Join(err, fmt.Errorf("delete task %s: %w", id, derr))
		}
	}()
	exited, err := task.Wait(cleanupCtx)
	if err != nil {
		return nil, fmt.Errorf("wait for task: %w", err)
	}
	if err := task.Start(ctx); err != nil {
		return nil, fmt.Errorf("start task: %w", err)
	}
	timer := time.NewTimer(r.timeout)
	defer timer.Stop()
	var status containerd.ExitStatus
	select {
	case status = <-exited:
	case <-timer.C:
		fmt.Fprintf(r.stderr, "record-trace: the command still runs after %s: recording stops, the container is killed\n", r.timeout)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if err := stopTrace(); err != nil {
		return nil, fmt.Errorf("bdd StopTrace: %w", err)
	}
	if err := status.Error(); err != nil {
		return nil, fmt.Errorf("wait for the command: %w", err)
	}
	if code := status.ExitCode(); code != 0 {
		return nil, fmt.Errorf("the command exited with status %d: no trace kept", code)
	}
	return trace, nil
}

func (r traceRun) callBDD(ctx context.Context, call func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, bddCallTimeout)
	defer cancel()
	return call(ctx)
}

// summarize describes a trace for the user: blobs, ranges and bytes.
func summarize(trace []byte) string {
	t, err := remotefetch.ReadTrace(bytes.NewReader(trace))
	if err != nil {
		return fmt.Sprintf("an unreadable trace (%v)", err)
	}
	var ranges int
	var size int64
	for _, b := range t.Blobs {
		ranges += len(b.Ranges)
		for _, rg := range b.Ranges {
			size += rg.Len
		}
	}
	return fmt.Sprintf("a trace of %d blobs, %d ranges, %s", len(t.Blobs), ranges, units.BytesSize(float64(size)))
}
