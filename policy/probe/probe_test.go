package probe

import (
	"context"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/policy/sim"
	"github.com/obdproject/obd/policy/trace"
	"github.com/obdproject/obd/sandbox"
	"github.com/obdproject/obd/sandbox/sandboxapi"
)

// liveServer starts a real sandbox server (package sandbox behind its HTTP handler) with the
// given keep-alive, on the python rootfs scripts/mkrootfs.sh builds.
func liveServer(t *testing.T, keepAlive time.Duration) *sandboxapi.Client {
	t.Helper()
	rootfs := testenv.PythonRootfs(t)
	state := t.TempDir()
	m, err := sandbox.NewManager(sandbox.Config{StateDir: state, Rootfs: sandbox.DirProvider{Root: filepath.Dir(rootfs)},
		PoolSize: 4, KeepAlive: keepAlive})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(sandbox.NewHandler(m, filepath.Join(state, "code"), ""))
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
	const minute = 500 * time.Millisecond // of real time per trace minute
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
