// Package probe measures a live sandbox server (cmd/obd-lambda, package sandbox) from outside,
// the way "Peeking behind the curtains of serverless platforms" (Wang et al., ATC'18) measured
// public platforms: it deploys tiny functions through the server's HTTP API, invokes them on a
// schedule and reads each response's start path (cold, warm = forked from a zygote, hot =
// thawed idle instance; pre-warmed; borrowed from another function) and latency. It measures
// cold against warm/hot start latency, how long an idle instance lives, and whether the
// server's starts and wasted memory-time over a trace match what the simulator (package
// policy/sim) predicts for the same schedule, under each keep-alive policy (compare.go). It sits outside the read
// path of docs/DESIGN.md, looking at its top box ("container / sandbox") through the API alone
// (sandbox/sandboxapi), without linking the engine.
package probe

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/obdproject/obd/policy"
	"github.com/obdproject/obd/policy/sim"
	"github.com/obdproject/obd/policy/trace"
	"github.com/obdproject/obd/sandbox/sandboxapi"
)

// Server is the part of the sandbox server's API the probe invokes (sandboxapi.Client has it).
type Server interface {
	Run(ctx context.Context, name string, event []byte) (json.RawMessage, sandboxapi.StartPath, error)
}

// callTimeout bounds each call to the server (a function's own timeout defaults to 10 s).
const callTimeout = time.Minute

// handlerCode is the probe's function: it returns at once, so latency is start-up and
// transport only.
const handlerCode = "def handler(event):\n    return {\"ok\": True}\n"

// Deploy registers n probe functions named prefix-0 ... on image and returns their names
// (on error, the names registered so far).
func Deploy(ctx context.Context, c *sandboxapi.Client, image, prefix string, n int) ([]string, error) {
	specs := make([]sandboxapi.FunctionSpec, n)
	for i := range specs {
		specs[i] = sandboxapi.FunctionSpec{Name: fmt.Sprintf("%s-%d", prefix, i), Image: image, Entry: "main.handler"}
	}
	return DeploySpecs(ctx, c, specs)
}

// DeploySpecs registers the probe's handler as each of specs (their Entry is main.handler)
// and returns their names (on error, the names registered so far).
func DeploySpecs(ctx context.Context, c *sandboxapi.Client, specs []sandboxapi.FunctionSpec) ([]string, error) {
	var code bytes.Buffer
	tw := tar.NewWriter(&code)
	if err := tw.WriteHeader(&tar.Header{Name: "main.py", Mode: 0o644, Size: int64(len(handlerCode)), Typeflag: tar.TypeReg}); err != nil {
		return nil, err
	}
	if _, err := tw.Write([]byte(handlerCode)); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	names := make([]string, 0, len(specs))
	for _, spec := range specs {
		callCtx, cancel := context.WithTimeout(ctx, callTimeout)
		err := c.Register(callCtx, spec, bytes.NewReader(code.Bytes()))
		cancel()
		if err != nil {
			return names, fmt.Errorf("probe: register %s: %w", spec.Name, err)
		}
		names = append(names, spec.Name)
	}
	return names, nil
}

// Observation is one invocation as seen from outside.
type Observation struct {
	Function int                  // index into the names given to Replay
	At       time.Duration        // when it was sent, from the start of the replay
	Path     sandboxapi.StartPath // how the server obtained the sandbox
	Latency  time.Duration        // request to response
	Err      error
}

// invoke runs one invocation and times it.
func invoke(ctx context.Context, s Server, name string) (sandboxapi.StartPath, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	start := time.Now()
	out, path, err := s.Run(ctx, name, []byte(`{}`))
	took := time.Since(start)
	if err == nil && !bytes.Contains(out, []byte(`"ok"`)) {
		err = fmt.Errorf("probe: %s answered %.100q", name, out)
	}
	return path, took, err
}

// Replay sends invocation j of function i at schedule[i][j] × scale after the start (so a
// trace minute lasts scale minutes of real time) and returns every observation in send order.
// Invocations run concurrently; a late one is sent at once.
func Replay(ctx context.Context, s Server, names []string, schedule [][]time.Duration, scale float64) ([]Observation, error) {
	return replayFrom(ctx, s, names, schedule, scale, time.Now())
}

// replayFrom is Replay with the schedule counted from start.
func replayFrom(ctx context.Context, s Server, names []string, schedule [][]time.Duration, scale float64, start time.Time) ([]Observation, error) {
	if len(schedule) != len(names) {
		return nil, fmt.Errorf("probe: schedule for %d functions, %d names", len(schedule), len(names))
	}
	var obs []Observation
	for i, times := range schedule {
		for _, at := range times {
			obs = append(obs, Observation{Function: i, At: time.Duration(float64(at) * scale)})
		}
	}
	slices.SortStableFunc(obs, func(a, b Observation) int { return int(a.At - b.At) })
	var wg sync.WaitGroup
	for k := range obs {
		o := &obs[k]
		select {
		case <-ctx.Done():
			wg.Wait()
			return nil, ctx.Err()
		case <-time.After(time.Until(start.Add(o.At))):
		}
		wg.Go(func() { o.Path, o.Latency, o.Err = invoke(ctx, s, names[o.Function]) })
	}
	wg.Wait()
	return obs, nil
}

// Summary counts observations by start path with the median latency of each.
type Summary struct {
	Invocations, Cold, Warm, Hot, PreWarmed, Borrowed, Errors int
	ColdP50, WarmP50, HotP50                                  time.Duration
}

// Starts is the number of invocations that found no idle instance (cold or warm path): the
// simulator's cold starts.
func (s Summary) Starts() int { return s.Cold + s.Warm }

// Summarize counts obs.
func Summarize(obs []Observation) Summary {
	var s Summary
	lat := map[sandboxapi.StartPath][]time.Duration{}
	for _, o := range obs {
		s.Invocations++
		if o.Err != nil {
			s.Errors++
			continue
		}
		switch o.Path {
		case sandboxapi.Cold:
			s.Cold++
		case sandboxapi.Warm:
			s.Warm++
		case sandboxapi.Hot:
			s.Hot++
		case sandboxapi.PreWarmed:
			s.PreWarmed++
		case sandboxapi.Borrowed:
			s.Borrowed++
		}
		lat[o.Path] = append(lat[o.Path], o.Latency)
	}
	s.ColdP50, s.WarmP50, s.HotP50 = median(lat[sandboxapi.Cold]), median(lat[sandboxapi.Warm]), median(lat[sandboxapi.Hot])
	return s
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[len(d)/2]
}

// LifetimeSample is one idle gap tried by Lifetime.
type LifetimeSample struct {
	Gap time.Duration
	Hot bool // the instance left idle for Gap served the next invocation
}

// Lifetime measures how long an idle instance of name lives: for each gap, it invokes name,
// waits gap and invokes it again, recording whether the second invocation was hot. Gaps are
// tried in the order given; one instance is made idle per gap.
func Lifetime(ctx context.Context, s Server, name string, gaps []time.Duration) ([]LifetimeSample, error) {
	out := make([]LifetimeSample, 0, len(gaps))
	for _, gap := range gaps {
		if _, _, err := invoke(ctx, s, name); err != nil {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(gap):
		}
		path, _, err := invoke(ctx, s, name)
		if err != nil {
			return nil, err
		}
		out = append(out, LifetimeSample{Gap: gap, Hot: path == sandboxapi.Hot})
	}
	return out, nil
}

// LifetimeBounds reads samples as an idle lifetime: the longest gap still hot and the
// shortest gap already not hot (0 when none was seen).
func LifetimeBounds(samples []LifetimeSample) (alive, gone time.Duration) {
	for _, s := range samples {
		if s.Hot {
			alive = max(alive, s.Gap)
		} else if gone == 0 || s.Gap < gone {
			gone = s.Gap
		}
	}
	return alive, gone
}

// Predict returns the simulator's cold starts for t replayed under cfg with each fixed
// keep-alive (in trace time), for comparison with a live replay of sim.Arrivals(t, cfg).
// For the sandbox server, cfg wants InstancePerInvocation and a MaxArrivalsPerMinute above
// the trace's busiest minute, so that both replay the same invocations the same way.
func Predict(ctx context.Context, t *trace.Trace, cfg sim.Config, keepAlives ...time.Duration) ([]int64, error) {
	out := make([]int64, len(keepAlives))
	for i, ka := range keepAlives {
		p, err := policy.NewFixed(ka)
		if err != nil {
			return nil, err
		}
		r, err := sim.Run(ctx, t, p, cfg)
		if err != nil {
			return nil, err
		}
		out[i] = r.ColdStarts
	}
	return out, nil
}
