package sandbox

import (
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/obdproject/obd/policy"
	"github.com/obdproject/obd/sandbox/sandboxapi"
)

// stubPolicy returns a fixed window per function and records the invocations it saw.
type stubPolicy struct {
	mu      sync.Mutex
	windows map[string][2]time.Duration // function → pre-warm, keep-alive
	lends   bool
	seen    map[string]int
	forgot  []string
}

func newStub(lends bool, windows map[string][2]time.Duration) *stubPolicy {
	return &stubPolicy{windows: windows, lends: lends, seen: map[string]int{}}
}

func (p *stubPolicy) Decide(fn string, arrival, end time.Time) (time.Duration, time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if end.Before(arrival) {
		panic("end before arrival")
	}
	p.seen[fn]++
	w := p.windows[fn]
	return w[0], w[1]
}

// set changes fn's window.
func (p *stubPolicy) set(fn string, preWarm, keepAlive time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.windows[fn] = [2]time.Duration{preWarm, keepAlive}
}

func (p *stubPolicy) Forget(fn string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.forgot = append(p.forgot, fn)
}

func (p *stubPolicy) Lends() bool { return p.lends }

// withPolicies serves spec "stub" (and the default, "") with p.
func withPolicies(p Policy) func(*Config) {
	return func(c *Config) {
		c.Policies = func(spec string) (Policy, error) {
			if spec != "" && spec != "stub" {
				return nil, os.ErrNotExist
			}
			return p, nil
		}
	}
}

// waitFor polls cond until it holds, failing after a generous bound (a condition, not a
// timing threshold: it holds at once on a quiet machine).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waited 30s for %s", what)
		}
	}
}

func TestPolicyKeepAlivePerFunction(t *testing.T) {
	p := newStub(false, map[string][2]time.Duration{"long": {0, time.Hour}, "none": {0, 0}})
	m := newTestManager(t, withPolicies(p))
	register(t, m, "long", nil)
	register(t, m, "none", func(f *Function) { f.Policy = "stub" })
	for _, name := range []string{"long", "none"} {
		invoke(t, m, name, map[string]any{"op": "echo"})
	}
	if st, _ := m.Stats("long"); st.Idle != 1 {
		t.Errorf("long: %d idle sandboxes, want 1", st.Idle)
	}
	if st, _ := m.Stats("none"); st.Idle != 0 {
		t.Errorf("none: %d idle sandboxes, want 0 (keep-alive 0)", st.Idle)
	}
	if _, res := invoke(t, m, "long", map[string]any{"op": "echo"}); res.Path != sandboxapi.Hot {
		t.Errorf("long's second call took the %s path, want hot", res.Path)
	}
	if _, res := invoke(t, m, "none", map[string]any{"op": "echo"}); res.Path == sandboxapi.Hot {
		t.Error("none's second call was hot with a keep-alive of 0")
	}
	if st, _ := m.Stats("long"); st.IdleMBSeconds <= 0 {
		t.Errorf("long: idle memory-time %v after idling", st.IdleMBSeconds)
	}
	if p.seen["long"] != 2 || p.seen["none"] != 2 {
		t.Errorf("policy saw %v, want 2 invocations each", p.seen)
	}
	if _, err := m.Delete("long"); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(p.forgot, []string{"long"}) {
		t.Errorf("policy forgot %v, want [long]", p.forgot)
	}
	err := m.Register(t.Context(), Function{Name: "bad", Image: "python3-bookworm", Entry: "main.handler", Dir: handlerDir(t), Policy: "nonesuch"})
	if err == nil {
		t.Error("registered a function under an unknown policy")
	}
}

func TestFixedPolicyRefusesSpecs(t *testing.T) {
	m := newTestManager(t, nil)
	err := m.Register(t.Context(), Function{Name: "f", Image: "python3-bookworm", Entry: "main.handler", Dir: handlerDir(t), Policy: "hybrid"})
	if err == nil {
		t.Error("a server without policies registered a function naming one")
	}
}

func TestPreWarm(t *testing.T) {
	p := newStub(false, map[string][2]time.Duration{"pw": {50 * time.Millisecond, time.Hour}, "later": {time.Hour, time.Hour}})
	m := newTestManager(t, withPolicies(p))
	register(t, m, "pw", nil)
	register(t, m, "later", nil)

	invoke(t, m, "pw", map[string]any{"op": "echo"})
	waitFor(t, "the pre-warmed sandbox", func() bool {
		st, _ := m.Stats("pw")
		return st.Idle == 1 && st.PreWarms == 1
	})
	before := float64(time.Now().UnixNano()) / 1e9
	out, res := invoke(t, m, "pw", map[string]any{"op": "imported_at"})
	if res.Path != sandboxapi.PreWarmed {
		t.Fatalf("call after the pre-warm took the %s path, want prewarmed", res.Path)
	}
	// The pre-warmed sandbox waited for its event before running handler code.
	if at := out["imported_at"].(float64); at < before {
		t.Errorf("handler imported at %v, before the invocation at %v", at, before)
	}
	if st, _ := m.Stats("pw"); st.PreWarmed != 1 || st.Idle != 0 {
		t.Errorf("stats after the pre-warmed call: %+v", st)
	}
	// Kept after serving, the once pre-warmed sandbox is an ordinary idle one: frozen, then
	// thawed.
	p.set("pw", 0, time.Hour)
	waitFor(t, "the second pre-warmed sandbox", func() bool {
		st, _ := m.Stats("pw")
		return st.Idle == 1 && st.PreWarms == 2
	})
	if _, res := invoke(t, m, "pw", map[string]any{"op": "echo"}); res.Path != sandboxapi.PreWarmed {
		t.Fatalf("call after the second pre-warm took the %s path", res.Path)
	}
	if _, res := invoke(t, m, "pw", map[string]any{"op": "echo"}); res.Path != sandboxapi.Hot {
		t.Errorf("call after a kept sandbox took the %s path, want hot", res.Path)
	}

	// An invocation before the pre-warm is due cancels it: the instance is not loaded yet.
	invoke(t, m, "later", map[string]any{"op": "echo"})
	if _, res := invoke(t, m, "later", map[string]any{"op": "echo"}); res.Path == sandboxapi.Hot || res.Path == sandboxapi.PreWarmed {
		t.Errorf("call before the pre-warm took the %s path", res.Path)
	}
	m.mu.Lock()
	pending := len(m.funcs["later"].pending)
	m.mu.Unlock()
	if pending != 1 {
		t.Errorf("%d pending pre-warms, want 1 (the first cancelled by the second call)", pending)
	}
}

// lenderDir is a handler dir with the test handler and a marker file naming its function.
func lenderDir(t *testing.T, marker string) string {
	dir := handlerDir(t)
	if err := os.WriteFile(filepath.Join(dir, marker), []byte(marker), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestLendScrubsTheLender(t *testing.T) {
	p := newStub(true, map[string][2]time.Duration{"lender": {0, time.Hour}, "borrower": {0, time.Hour}, "other": {0, time.Hour}})
	m := newTestManager(t, withPolicies(p))
	register(t, m, "lender", func(f *Function) { f.Imports = []string{"json", "decimal"}; f.Dir = lenderDir(t, "lender.txt") })
	register(t, m, "borrower", func(f *Function) { f.Imports = []string{"decimal"}; f.Dir = lenderDir(t, "borrower.txt") })
	register(t, m, "other", func(f *Function) { f.Imports = []string{"csv"} })

	out, _ := invoke(t, m, "lender", map[string]any{"op": "taint"})
	child, fd := out["child"], out["fd"]
	out, res := invoke(t, m, "lender", map[string]any{"op": "inspect", "pid": child, "fd": fd})
	if res.Path != sandboxapi.Hot || out["env"] != "secret" || !slices.Contains(toStrings(out["tmp"]), "lender-secret") || out["alive"] != true || out["leaked"] != "secret" {
		t.Fatalf("the lender's own sandbox does not hold its taint (the test proves nothing): %v (%s)", out, res.Path)
	}

	out, res = invoke(t, m, "borrower", map[string]any{"op": "inspect", "pid": child, "fd": fd})
	if res.Path != sandboxapi.Borrowed {
		t.Fatalf("borrower took the %s path, want borrowed", res.Path)
	}
	if srv := toStrings(out["srv"]); !slices.Contains(srv, "borrower.txt") || slices.Contains(srv, "lender.txt") {
		t.Errorf("borrower's /srv: %v", srv)
	}
	if cwd := toStrings(out["cwd"]); slices.Contains(cwd, "lender.txt") {
		t.Errorf("borrower's working directory is the lender's code: %v", cwd)
	}
	if tmp := toStrings(out["tmp"]); len(tmp) != 0 {
		t.Errorf("borrower's /tmp holds %v", tmp)
	}
	if out["env"] != nil {
		t.Errorf("borrower sees the lender's environment: %v", out["env"])
	}
	if out["alive"] != false {
		t.Errorf("the lender's child process is alive in the borrower's sandbox")
	}
	if out["leaked"] == "secret" {
		t.Errorf("the borrower reads the lender's open file through descriptor %v", fd)
	}
	if out["tainted"] != float64(0) {
		t.Errorf("the borrower runs the lender's handler module (%v open files of the lender)", out["tainted"])
	}

	// Lent once: the lender has no idle sandbox left, the borrower has one of its own now.
	if st, _ := m.Stats("lender"); st.Lent != 1 || st.Idle != 0 {
		t.Errorf("lender stats %+v", st)
	}
	if st, _ := m.Stats("borrower"); st.Borrowed != 1 || st.Idle != 1 {
		t.Errorf("borrower stats %+v", st)
	}
	if _, res := invoke(t, m, "borrower", map[string]any{"op": "echo"}); res.Path != sandboxapi.Hot {
		t.Errorf("borrower's next call took the %s path, want hot", res.Path)
	}
	// The borrower's sandbox does not cover the lender (no json import): no lend back.
	if _, res := invoke(t, m, "lender", map[string]any{"op": "echo"}); res.Path == sandboxapi.Borrowed || res.Path == sandboxapi.Hot {
		t.Errorf("lender took the %s path with no sandbox covering it", res.Path)
	}
	// Nobody covers other (csv).
	if _, res := invoke(t, m, "other", map[string]any{"op": "echo"}); res.Path == sandboxapi.Borrowed {
		t.Error("a function whose imports no sandbox holds borrowed one")
	}
	if st := m.ServerStats(); st.Lends != 1 || st.ColdStartsSaved != 1 || st.LendFailures != 0 {
		t.Errorf("server stats %+v", st)
	}
}

func toStrings(v any) []string {
	var out []string
	list, _ := v.([]any)
	for _, s := range list {
		str, _ := s.(string)
		out = append(out, str)
	}
	return out
}

func TestCovers(t *testing.T) {
	lending, other := newStub(true, nil), newStub(true, nil)
	fn := func(p Policy, image string, imports, packages []string) *function {
		return &function{Function: Function{Image: image, Imports: imports, Packages: packages}, policy: p}
	}
	donor := fn(lending, "py", []string{"json", "decimal"}, []string{"np"})
	for _, c := range []struct {
		name string
		r    *function
		want bool
	}{
		{"subset", fn(lending, "py", []string{"decimal"}, nil), true},
		{"same", fn(lending, "py", []string{"json", "decimal"}, []string{"np"}), true},
		{"import missing", fn(lending, "py", []string{"csv"}, nil), false},
		{"package missing", fn(lending, "py", nil, []string{"pd"}), false},
		{"other image", fn(lending, "py2", nil, nil), false},
		{"other policy", fn(other, "py", nil, nil), false},
		{"non-lending policy", fn(fixedPolicy(time.Minute), "py", nil, nil), false},
	} {
		if got := covers(donor, c.r); got != c.want {
			t.Errorf("%s: covers = %v, want %v", c.name, got, c.want)
		}
	}
	if covers(donor, donor) {
		t.Error("a function covers itself as a lender")
	}
}

// TestCoversIsReuseCanLend checks, on random functions, that the server's lending rule is the
// simulator's (policy.Reuse.CanLend) with a function's image, imports and packages as its
// packages: the live server and the simulator lend in the same cases.
func TestCoversIsReuseCanLend(t *testing.T) {
	lending := newStub(true, nil)
	rapid.Check(t, func(rt *rapid.T) {
		draw := func(label string) *function {
			f := &function{policy: lending}
			f.Name = label
			f.Image = rapid.SampledFrom([]string{"py", "py2"}).Draw(rt, label+" image")
			f.Imports = rapid.SliceOfDistinct(rapid.SampledFrom([]string{"json", "decimal", "csv"}), rapid.ID).Draw(rt, label+" imports")
			f.Packages = rapid.SliceOfDistinct(rapid.SampledFrom([]string{"json", "np", "pd"}), rapid.ID).Draw(rt, label+" packages")
			return f
		}
		d, r := draw("donor"), draw("recipient")
		packages := func(f *function) []string {
			out := []string{"image:" + f.Image}
			for _, m := range f.Imports {
				out = append(out, "import:"+m)
			}
			for _, p := range f.Packages {
				out = append(out, "package:"+p)
			}
			return out
		}
		reuse, err := policy.NewReuse(policy.Fixed{}, map[string][]string{"donor": packages(d), "recipient": packages(r)})
		if err != nil {
			rt.Fatal(err)
		}
		if got, want := covers(d, r), reuse.CanLend("donor", "recipient"); got != want {
			rt.Fatalf("covers = %v, policy.Reuse.CanLend = %v", got, want)
		}
	})
}
