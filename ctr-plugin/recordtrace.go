package ctrplugin

import (
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
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/docker/go-units"
	"github.com/urfave/cli/v3"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/imagelabels"
	"github.com/obdproject/obd/traceartifact"
	"github.com/obdproject/obd/tracestore"
)

var recordTraceCommand = &cli.Command{
	Name:      "record-trace",
	Usage:     "Run an rpulled image once and record what its start reads, for later prefetch",
	ArgsUsage: "<ref> <trace-file> [-- <command> [args...]]",
	Description: `record-trace runs the image once in a new container on the overlaybd snapshotter (with
the image's command, or the one given after --), with bdd recording every range the start
reads of the image's blobs, whether bdd's cache holds them or not. Recording stops when the
command exits or after --run-timeout, whichever is first; a command that exits non-zero
records nothing. The trace is written to <trace-file> and kept in --trace-dir under the chain
of the image's layer blobs, where rpull finds it and has bdd prefetch it.
The container reads through a device of its own (snapshot label
containerd.io/snapshot/overlaybd/own-device), whose page cache is empty, so a node that has
run the image before records what a fresh node would. bdd records reads of every device while
the trace runs: record on a quiet host. A trace with no ranges, or under 4 KiB, is refused as
such.

When the container is gone, record-trace has containerd collect its snapshot at once; the
snapshotter then stores what the run left in the device's page cache as the image's page
trace (in its traceDir, which must be --trace-dir).

With --push the trace also goes to the image's repository as an OCI artifact whose subject
is the image's manifest (for an index, the platform's manifest that was unpacked), so that
nodes pulling the image find it there, with the page trace of this run when the snapshotter
stored one (the output says when it did not). The image itself is not changed.`,
	Flags: append([]cli.Flag{
		snapshotterFlag, bddSocketFlag, traceDirFlag,
		&cli.DurationFlag{Name: "run-timeout", Usage: "Stop recording (and kill the container) after this long", Value: time.Minute},
		&cli.BoolFlag{Name: "push", Usage: "Also push the trace to the image's repository, attached to the image's manifest"},
	}, commands.RegistryFlags...),
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

	var resolver remotes.Resolver
	if cmd.Bool("push") { // before the run: a wrong registry flag costs no recording
		if resolver, err = commands.GetResolver(ctx, cmd); err != nil {
			return err
		}
	}

	out := cmd.Root().Writer
	run := traceRun{client: client, daemon: daemon, image: img, snapshotter: sn, args: procArgs,
		timeout: cmd.Duration("run-timeout"), stdout: out, stderr: cmd.Root().ErrWriter}
	started := time.Now()
	trace, ranArgs, collected, err := run.record(ctx)
	if err != nil {
		return fmt.Errorf("record-trace %s: %w", ref, err)
	}
	summary, err := traceartifact.Summarize(trace)
	if err == nil {
		err = summary.CheckPlausible()
	}
	if err != nil {
		return fmt.Errorf("record-trace %s: no trace kept: %w", ref, err)
	}
	if err := os.WriteFile(traceFile, trace, 0o644); err != nil {
		return fmt.Errorf("record-trace: %w", err)
	}
	store := tracestore.Store{Dir: cmd.String("trace-dir")}
	if err := store.Save(chain, trace); err != nil {
		return fmt.Errorf("record-trace: %w", err)
	}
	fmt.Fprintf(out, "recorded %s in %s and %s\n", describe(summary), traceFile, store.Path(chain))
	if resolver == nil {
		return nil
	}
	pages, err := recordedPages(store, chain, collected)
	if err != nil {
		return fmt.Errorf("record-trace: page trace: %w", err)
	}
	pushed, err := pushTrace(ctx, resolver, img, traceartifact.Trace{Blocks: trace, Pages: pages},
		traceartifact.Info{Created: started, Command: ranArgs, Recorder: "ctr-obd record-trace"})
	if err != nil {
		return fmt.Errorf("record-trace: push the trace of %s: %w", ref, err)
	}
	withPages := "no page trace: the snapshotter stored none when the run's snapshot went (its traceDir must be --trace-dir " + store.Dir + ")"
	if collected.IsZero() {
		withPages = "no page trace: containerd did not collect the run's snapshot"
	}
	if pages != nil {
		withPages = "the page trace " + store.PagesPath(chain)
	}
	fmt.Fprintf(out, "pushed start trace %s (%s: manifest, block trace, %s) for %s@%s\n", pushed.Descriptor.Digest,
		units.BytesSize(float64(pushed.Bytes)), withPages, img.Name(), pushed.Subject.Digest)
	if pushed.ReferrersTag != "" {
		fmt.Fprintf(out, "the registry keeps no referrers itself: listed in the referrers tag %s\n", pushed.ReferrersTag)
	}
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
// it), and returns the trace and the command that ran. The container and its snapshot are
// removed, also on errors and when ctx is cancelled; collected is when the collection of the
// snapshot began (zero if it did not), after which the snapshotter has stored the run's page
// trace.
func (r traceRun) record(ctx context.Context) (_ []byte, args []string, collected time.Time, err error) {
	// Cleanup must run after a Ctrl-C too, with the namespace ctx carries.
	cleanupCtx := context.WithoutCancel(ctx)
	if err := r.callBDD(ctx, func(ctx context.Context) error {
		_, err := r.daemon.StartTrace(ctx, &bddv1.StartTraceRequest{})
		return err
	}); err != nil {
		return nil, nil, time.Time{}, fmt.Errorf("bdd StartTrace: %w", err)
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
	// A device of its own, so that reads the page cache of the image's shared device would
	// answer reach bdd.
	ownDevice := snapshots.WithLabels(map[string]string{imagelabels.OwnDevice: "true"})
	container, err := r.client.NewContainer(ctx, id,
		containerd.WithImage(r.image),
		containerd.WithSnapshotter(r.snapshotter),
		containerd.WithNewSnapshot(id, r.image, ownDevice),
		containerd.WithNewSpec(specOpts...))
	if err != nil {
		return nil, nil, time.Time{}, fmt.Errorf("create container: %w", err)
	}
	defer func() {
		if derr := container.Delete(cleanupCtx, containerd.WithSnapshotCleanup); derr != nil {
			err = errors.Join(err, fmt.Errorf("delete container %s: %w", id, derr))
			return
		}
		// containerd removes the snapshot from the snapshotter, whose removal of the device
		// stores the page trace, at its next collection: have it collect now.
		start := time.Now()
		if cerr := collectGarbage(cleanupCtx, r.client); cerr != nil {
			fmt.Fprintf(r.stderr, "record-trace: containerd did not collect the container's snapshot: %v\n", cerr)
			return
		}
		collected = start
	}()
	spec, err := container.Spec(ctx)
	if err != nil {
		return nil, nil, time.Time{}, fmt.Errorf("spec of container %s: %w", id, err)
	}
	args = spec.Process.Args
	task, err := container.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, r.stdout, r.stderr)))
	if err != nil {
		return nil, nil, time.Time{}, fmt.Errorf("create task: %w", err)
	}
	defer func() {
		if _, derr := task.Delete(cleanupCtx, containerd.WithProcessKill); derr != nil {
			err = errors.Join(err, fmt.Errorf("delete task %s: %w", id, derr))
		}
	}()
	exited, err := task.Wait(cleanupCtx)
	if err != nil {
		return nil, nil, time.Time{}, fmt.Errorf("wait for task: %w", err)
	}
	if err := task.Start(ctx); err != nil {
		return nil, nil, time.Time{}, fmt.Errorf("start task: %w", err)
	}
	timer := time.NewTimer(r.timeout)
	defer timer.Stop()
	var status containerd.ExitStatus
	select {
	case status = <-exited:
	case <-timer.C:
		fmt.Fprintf(r.stderr, "record-trace: the command still runs after %s: recording stops, the container is killed\n", r.timeout)
	case <-ctx.Done():
		return nil, nil, time.Time{}, ctx.Err()
	}
	if err := stopTrace(); err != nil {
		return nil, nil, time.Time{}, fmt.Errorf("bdd StopTrace: %w", err)
	}
	if err := status.Error(); err != nil {
		return nil, nil, time.Time{}, fmt.Errorf("wait for the command: %w", err)
	}
	if code := status.ExitCode(); code != 0 {
		return nil, nil, time.Time{}, fmt.Errorf("the command exited with status %d: no trace kept", code)
	}
	return trace, args, collected, nil
}

// collectGarbage has containerd collect garbage now and waits until it has, snapshots
// included: a lease deleted synchronously does that.
func collectGarbage(ctx context.Context, client *containerd.Client) error {
	ls := client.LeasesService()
	lease, err := ls.Create(ctx, leases.WithRandomID(), leases.WithExpiration(time.Minute))
	if err != nil {
		return err
	}
	return ls.Delete(ctx, lease, leases.SynchronousDelete)
}

func (r traceRun) callBDD(ctx context.Context, call func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, bddCallTimeout)
	defer cancel()
	return call(ctx)
}

// describe describes a trace for the user: blobs, ranges and bytes.
func describe(s traceartifact.Summary) string {
	return fmt.Sprintf("a trace of %d blobs, %d ranges, %s", s.Blobs, s.Ranges, units.BytesSize(float64(s.Bytes)))
}
