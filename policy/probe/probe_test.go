package probe

import (
	"context"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/policy/live"
	"github.com/obdproject/obd/policy/sim"
	"github.com/obdproject/obd/policy/trace"
	"github.com/obdproject/obd/sandbox"
	"github.com/obdproject/obd/sandbox/sandboxapi"
)

// liveServer starts a real sandbox server (package sandbox behind its HTTP handler) with the
// given keep-alive, on the python rootfs scripts/mkrootfs.sh builds.
func liveServer(t *testing.T, keepAlive time.Duration) *sandboxapi.Client {
	return startServer(t, sandbox.Config{PoolSize: 4, KeepAlive: keepAlive})
}

// startServer starts a real sandbox server configured by cfg, its state dir and rootfs set.
func startServer(t *testing.T, cfg sandbox.Config) *sandboxapi.Client {
	t.Helper()
	cfg.StateDir = t.TempDir()
	cfg.Rootfs = sandbox.DirProvider{Root: filepath.Dir(testenv.PythonRootfs(t))}
	m, err := sandbox.NewManager(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(sandbox.NewHandler(m, filepath.Join(cfg.StateDir, "code"), ""))
	t.Cleanup(func() {
		srv.Close()
		if err := m.Close(); err != nil {
			t.Errorf("sandbox manager close: %v", err)
		}
	})
	return &sandboxapi.Client{Base: srv.URL}
}

// TestLiveServerMatchesSimulator replays a small trace against a live server with a fixed
// keep-alive and checks the server's starts against the simulator's prediction for the same
// arrival schedule; it also measures the idle lifetime and cold against hot latency.
func TestLiveServerMatchesSimulator(t *testing.T) {
	const minute = time.Second // of real time per trace minute, the margin a stall under load must stay within
	const keepAlive = 5 * minute
	c := liveServer(t, keepAlive)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rootfsRef := "python3-bookworm"
	names, err := Deploy(ctx, c, rootfsRef, "probe", 3)
	if err != nil {
		t.Fatal(err)
	}

	samples, err := Lifetime(ctx, c, names[0], []time.Duration{minute, 3 * minute, 9 * minute})
	if err != nil {
		t.Fatal(err)
	}
	alive, gone := LifetimeBounds(samples)
	if alive < 3*minute || gone == 0 || gone > 9*minute {
		t.Fatalf("idle lifetime: alive after %v, gone after %v; keep-alive is %v (%+v)", alive, gone, keepAlive, samples)
	}

	// Trace minutes: function 0 every 2 minutes (always within the keep-alive), function 1
	// every 8 (always past it), function 2 at gaps of 1, 3, 12, 2, 9 and 2 minutes. No
	// gap is within a minute of the keep-alive, so arrival spreading cannot flip a start.
	tr := &trace.Trace{Minutes: 32}
	every := func(period int) []int {
		c := make([]int, tr.Minutes)
		for m := 0; m < tr.Minutes; m += period {
			c[m] = 1
		}
		return c
	}
	gaps := make([]int, tr.Minutes)
	for _, m := range []int{0, 1, 4, 16, 18, 27, 29} {
		gaps[m] = 1
	}
	for i, counts := range [][]int{every(2), every(8), gaps} {
		tr.Invocations = append(tr.Invocations, trace.Invocations{FunctionKey: trace.FunctionKey{Owner: "o", App: "a", Function: names[i]}, Counts: counts})
	}
	cfg := sim.Config{Seed: 1, DefaultDuration: 10 * time.Millisecond, InstancePerInvocation: true, MaxArrivalsPerMinute: 1 << 20}
	schedule, err := sim.Arrivals(tr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Let the lifetime probe's instance expire so every function starts cold.
	time.Sleep(2 * keepAlive)
	obs, err := Replay(ctx, c, names, schedule, float64(minute)/float64(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	live := Summarize(obs)
	predicted, err := Predict(ctx, tr, cfg, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("live: %+v; simulator: %d starts; idle lifetime in (%v, %v]", live, predicted[0], alive, gone)
	if live.Errors != 0 || live.Invocations != 4+16+7 {
		t.Fatalf("live replay: %+v", live)
	}
	if want := int64(1 + 4 + 3); predicted[0] != want {
		t.Fatalf("simulator predicts %d starts, want %d", predicted[0], want)
	}
	if int64(live.Starts()) != predicted[0] {
		t.Fatalf("live server started %d sandboxes, the simulator predicts %d (%+v)", live.Starts(), predicted[0], obs)
	}
	if live.HotP50 >= max(live.ColdP50, live.WarmP50) {
		t.Fatalf("hot median %v is not faster than cold %v / warm %v", live.HotP50, live.ColdP50, live.WarmP50)
	}
}

// policyServer starts a real sandbox server whose functions' policies come from package
// policy through policy/live, on a clock time.Minute/minute times as fast.
func policyServer(t *testing.T, minute time.Duration) *sandboxapi.Client {
	t.Helper()
	ps, err := live.New("fixed-10m", float64(time.Minute)/float64(minute), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return startServer(t, sandbox.Config{PoolSize: 8, Policies: func(spec string) (sandbox.Policy, error) {
		p, err := ps.Get(spec)
		if err != nil {
			return nil, err
		}
		return p, nil
	}})
}

// TestLivePoliciesMatchSimulator replays a hand-made trace against a live server under the
// hybrid histogram and cross-function reuse policies and checks the server's starts, reuse
// and wasted memory-time against the simulator's for the same arrivals. The trace's idle
// gaps keep clear of every window edge by a trace minute or more, so arrival spreading and
// start latency cannot flip an outcome:
//   - "timer" fires every 4 minutes: the hybrid policy learns it (fixed 10 minutes until 5
//     idle times are known) and then pre-warms it about 2.7 minutes after each run;
//   - "lender" (json, decimal) and "borrower" (decimal) are called 3 minutes apart every 16
//     minutes: under reuse+fixed-10m the borrower takes the lender's idle sandbox each time,
//     and both are gone by the next round.
func TestLivePoliciesMatchSimulator(t *testing.T) {
	const minute = time.Second // of real time per trace minute
	c := policyServer(t, minute)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	tr := &trace.Trace{Minutes: 48, Packages: map[trace.FunctionKey][]string{}}
	add := func(name string, packages []string, minutes ...int) {
		counts := make([]int, tr.Minutes)
		for _, m := range minutes {
			counts[m] = 1
		}
		key := trace.FunctionKey{Owner: "o", App: "a", Function: name}
		tr.Invocations = append(tr.Invocations, trace.Invocations{FunctionKey: key, Counts: counts})
		tr.Packages[key] = packages
	}
	add("timer", []string{"csv"}, 0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44)
	add("lender", []string{"decimal", "json"}, 0, 16, 32)
	add("borrower", []string{"decimal"}, 3, 19, 35)

	results, timing, err := Compare(ctx, c, tr, Comparison{Image: "python3-bookworm", Prefix: "cmp",
		Policies: []string{"hybrid", "reuse+fixed-10m"}, Minute: minute, MemoryMB: 64, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("measured %+v\n%s", timing, Table(results))
	for _, r := range results {
		if r.Live.Errors != 0 || r.Live.Invocations != 18 || r.Sim.Invocations != 18 {
			t.Errorf("%s: live %+v, simulated %+v: want 18 invocations each, no errors", r.Policy, r.Live, r.Sim)
		}
		if r.Live.Starts != r.Sim.Starts || r.Live.Reused != r.Sim.Reused {
			t.Errorf("%s: live %d starts and %d reused, simulated %d and %d", r.Policy, r.Live.Starts, r.Live.Reused, r.Sim.Starts, r.Sim.Reused)
		}
		if d := r.Live.WastedMBSeconds/r.Sim.WastedMBSeconds - 1; d > 0.25 || d < -0.25 {
			t.Errorf("%s: wasted memory-time live %.0f MB·s, simulated %.0f", r.Policy, r.Live.WastedMBSeconds, r.Sim.WastedMBSeconds)
		}
	}
	hybrid, reuse := results[0], results[1]
	// 1 start of the timer, 3 each of lender and borrower without reuse.
	if hybrid.Sim.Starts != 7 || hybrid.Live.PreWarmed == 0 {
		t.Errorf("hybrid: %d simulated starts (want 7), %d pre-warmed live (want some)", hybrid.Sim.Starts, hybrid.Live.PreWarmed)
	}
	if reuse.Sim.Starts != 4 || reuse.Sim.Reused != 3 {
		t.Errorf("reuse: simulated %d starts and %d reused, want 4 and 3", reuse.Sim.Starts, reuse.Sim.Reused)
	}
}
