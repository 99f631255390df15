// Package tracerec records the start trace of an overlaybd image in a registry without
// containerd, for `obd convert --record-trace`: it attaches the image's layer blobs through
// bdd as a new read-only device (bdd reads them from the registry like any node would), mounts
// its ext4, runs the image's command once in a sandbox on it (sandbox/once) while bdd traces
// every read of the blobs, records the page trace the run left on the fresh device, and pushes
// both as a start trace artifact of the image (traceartifact). It sits beside the read path
// of docs/DESIGN.md, driving it from the top (the sandbox) while bdd watches the bottom (the
// registry blobs), and is a client of bdd: it talks to the daemon through api/bdd/v1.
package tracerec

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/platforms"
	"github.com/docker/go-units"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/obdimage"
	"github.com/obdproject/obd/pagetrace"
	"github.com/obdproject/obd/sandbox/bddrootfs"
	"github.com/obdproject/obd/sandbox/once"
	"github.com/obdproject/obd/traceartifact"
)

// DefaultTimeout bounds a recording run unless Options say otherwise.
const DefaultTimeout = 2 * time.Minute

// Options configure Record.
type Options struct {
	// BDD is the daemon that serves the image while it runs; it must reach the image's
	// registry (its own hosts.toml and credentials). Its trace records every device's reads
	// while the command runs: record on a quiet bdd.
	BDD bddv1.DaemonClient
	// Resolver reads the image from its registry and pushes the trace artifact there.
	Resolver remotes.Resolver
	// Command replaces the image's entrypoint and command when not empty.
	Command []string
	// Timeout bounds the run (DefaultTimeout when 0): a command still running then is
	// killed and the trace of what it read so far is kept, as for a server that never exits.
	Timeout time.Duration
	// WorkDir holds the image's mount and the run's scratch directory.
	WorkDir string
	// Platform chooses the manifest of an index; platforms.Default() when nil.
	Platform platforms.MatchComparer
	// Output receives the command's output as it comes; nil discards it (a failure's error
	// quotes its end either way).
	Output io.Writer
	// Progress receives a line per step; nil discards them.
	Progress io.Writer
	// Recorder names the recording program in the artifact.
	Recorder string
}

// Result is what Record recorded and pushed.
type Result struct {
	Pushed     traceartifact.Pushed
	PageRanges int      // ranges of the page trace pushed with the block trace
	Command    []string // what ran
	TimedOut   bool     // the command was still running at the timeout
	Took       time.Duration
}

// ErrNoCommand is returned for an image whose config names no command, when Options give none.
var ErrNoCommand = errors.New("tracerec: the image names no command to run")

// Record runs the image at ref (desc is its manifest or index, as the registry has it) once
// and pushes its start trace. A command that fails, and a trace with no ranges or implausibly
// few bytes, are errors; nothing is pushed then.
func Record(ctx context.Context, ref string, desc ocispec.Descriptor, opts Options) (Result, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Platform == nil {
		opts.Platform = platforms.Default()
	}
	progress := opts.Progress
	if progress == nil {
		progress = io.Discard
	}
	img, err := obdimage.Read(ctx, opts.Resolver, ref, desc, opts.Platform)
	if err != nil {
		return Result{}, fmt.Errorf("tracerec: %w", err)
	}
	args := opts.Command
	if len(args) == 0 {
		args = append(append([]string(nil), img.Config.Entrypoint...), img.Config.Cmd...)
	}
	if len(args) == 0 {
		return Result{}, fmt.Errorf("%w (entrypoint and cmd are empty): give one", ErrNoCommand)
	}
	fmt.Fprintf(progress, "recording the start of %s@%s: %s (at most %s)\n", ref, img.Manifest.Digest, quote(args), opts.Timeout)
	start := time.Now()
	r := run{opts: opts, ref: ref, img: img, args: args}
	blocks, pages, timedOut, err := r.record(ctx)
	if err != nil {
		return Result{}, err
	}
	res := Result{PageRanges: len(pages), Command: args, TimedOut: timedOut, Took: time.Since(start)}
	summary, err := traceartifact.Summarize(blocks)
	if err == nil {
		err = summary.CheckPlausible()
	}
	if err != nil {
		return Result{}, fmt.Errorf("tracerec: the start of %s: %w", ref, err)
	}
	stopped := "the command exited"
	if timedOut {
		stopped = fmt.Sprintf("the command still ran after %s and was stopped", opts.Timeout)
	}
	fmt.Fprintf(progress, "recorded %d blobs, %d ranges, %s and %d page ranges in %s (%s)\n", summary.Blobs, summary.Ranges,
		units.BytesSize(float64(summary.Bytes)), len(pages), res.Took.Round(time.Millisecond), stopped)
	var encodedPages []byte
	if len(pages) > 0 {
		encodedPages = pages.Encode()
	}
	res.Pushed, err = traceartifact.Push(ctx, opts.Resolver, ref, traceartifact.Image{Manifest: img.Manifest, Layers: img.Blobs()},
		traceartifact.Trace{Blocks: blocks, Pages: encodedPages},
		traceartifact.Info{Created: start, Command: args, Recorder: opts.Recorder})
	if err != nil {
		return Result{}, fmt.Errorf("tracerec: push the start trace of %s: %w", ref, err)
	}
	return res, nil
}

// run is one recording.
type run struct {
	opts Options
	ref  string
	img  obdimage.Image
	args []string
}

// record runs the command on a new device under bdd's trace and returns the block trace, the
// page trace of the device and whether the timeout stopped the command.
func (r run) record(ctx context.Context) (blocks []byte, pages pagetrace.Trace, timedOut bool, err error) {
	var stack []string
	for _, l := range r.img.Layers {
		stack = append(stack, fmt.Sprintf("%s@%s:%d", r.img.Repository, l.Digest, l.Size))
	}
	if err := r.callBDD(ctx, func(ctx context.Context) error {
		_, err := r.opts.BDD.StartTrace(ctx, &bddv1.StartTraceRequest{})
		return err
	}); err != nil {
		return nil, nil, false, fmt.Errorf("tracerec: bdd StartTrace: %w", err)
	}
	stopped := false
	stopTrace := func() error {
		stopped = true
		return r.callBDD(context.WithoutCancel(ctx), func(ctx context.Context) error {
			resp, err := r.opts.BDD.StopTrace(ctx, &bddv1.StopTraceRequest{})
			blocks = resp.GetTrace()
			return err
		})
	}
	defer func() {
		if !stopped { // an early return: do not leave bdd recording
			err = errors.Join(err, stopTrace())
		}
	}()

	provider := bddrootfs.Provider{Client: r.opts.BDD, MountDir: r.opts.WorkDir}
	root, release, err := provider.Acquire(ctx, strings.Join(stack, ","))
	if err != nil {
		return nil, nil, false, fmt.Errorf("tracerec: %w", err)
	}
	defer func() {
		if rerr := release(); rerr != nil {
			err = errors.Join(err, fmt.Errorf("tracerec: %w", rerr))
		}
	}()

	runCtx, cancel := context.WithTimeout(ctx, r.opts.Timeout)
	defer cancel()
	cfg := r.img.Config
	runErr := once.Run(runCtx, once.Command{Root: root, Args: r.args, Env: cfg.Env, Dir: cfg.WorkingDir, User: cfg.User,
		Scratch: root + ".scratch", Output: r.opts.Output})
	timedOut = runErr != nil && errors.Is(runErr, context.DeadlineExceeded) && ctx.Err() == nil
	if err := stopTrace(); err != nil {
		return nil, nil, false, fmt.Errorf("tracerec: bdd StopTrace: %w", err)
	}
	if runErr != nil && !timedOut {
		return nil, nil, false, fmt.Errorf("tracerec: %s: %w", quote(r.args), runErr)
	}
	// The device is new: its page cache holds what this run read and nothing else.
	if pages, err = pagetrace.Record(ctx, root); err != nil {
		return nil, nil, false, fmt.Errorf("tracerec: page trace: %w", err)
	}
	return blocks, pages, timedOut, nil
}

// bddCallTimeout bounds one call to bdd.
const bddCallTimeout = time.Minute

func (r run) callBDD(ctx context.Context, call func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, bddCallTimeout)
	defer cancel()
	return call(ctx)
}

// quote shows a command line, quoting the arguments a shell would split or expand.
func quote(args []string) string {
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = a
		if a == "" || strings.ContainsFunc(a, func(r rune) bool {
			return !unicode.IsLetter(r) && !unicode.IsDigit(r) && !strings.ContainsRune("-_./=:,+@%", r)
		}) {
			quoted[i] = strconv.Quote(a)
		}
	}
	return strings.Join(quoted, " ")
}
