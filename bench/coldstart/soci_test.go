package coldstart

import (
	"strings"
	"testing"
	"time"
)

// sociLog is what bench/soci's snapshotter logs for a pull of a 3-layer image whose SOCI index
// has zTOCs for the two lower layers only (lines abridged from a real run).
const sociLog = `{"level":"info","msg":"serving","address":"/tmp/obd-cs-1/soci.sock","time":"2026-12-05T11:40:00Z"}
{"digest":"sha256:5b0d","level":"info","msg":"fetching SOCI artifacts using index descriptor","time":"2026-12-05T11:40:01Z"}
{"key":"default/1/extract","level":"info","msg":"remote snapshot successfully prepared.","remote-snapshot-prepared":"true","time":"2026-12-05T11:40:01Z"}
{"key":"default/2/extract","level":"info","msg":"remote snapshot successfully prepared.","remote-snapshot-prepared":"true","time":"2026-12-05T11:40:01Z"}
{"error":"skipping mounting layer sha256:f79a as FUSE mount: no ztoc for layer","key":"default/3/extract","level":"warning","msg":"failed to prepare remote snapshot","remote-snapshot-prepared":"false","time":"2026-12-05T11:40:01Z"}
panic: not JSON, skipped
{"key":"default/3/extract","level":"info","local-snapshot-prepared":"true","msg":"local snapshot successfully prepared","time":"2026-12-05T11:40:03Z"}
`

func TestReadSOCIPrepared(t *testing.T) {
	p, err := ReadSOCIPrepared(strings.NewReader(sociLog))
	if err != nil {
		t.Fatal(err)
	}
	if want := (SOCIPrepared{Remote: 2, Local: 1}); p != want {
		t.Fatalf("got %+v, want %+v", p, want)
	}
	err = p.Lazy(3)
	if err == nil || !strings.Contains(err.Error(), "2 of 3 layers lazily, 1 whole") {
		t.Fatalf("a layer pulled whole passed as lazy: %v", err)
	}
}

func TestSOCILazy(t *testing.T) {
	for _, c := range []struct {
		p      SOCIPrepared
		layers int
		lazy   bool
	}{
		{SOCIPrepared{Remote: 3}, 3, true},
		{SOCIPrepared{Remote: 2}, 3, false},              // a layer never prepared
		{SOCIPrepared{Remote: 3, Deferred: 1}, 3, false}, // containerd pulled one
		{SOCIPrepared{Deferred: 3}, 3, false},            // no index at all
		{SOCIPrepared{}, 0, true},                        // an image without layers
	} {
		if err := c.p.Lazy(c.layers); (err == nil) != c.lazy {
			t.Errorf("%+v of %d layers: lazy error %v, want lazy %v", c.p, c.layers, err, c.lazy)
		}
	}
}

func TestSOCITargets(t *testing.T) {
	const mb = int64(1 << 20)
	r := &Report{Workloads: []string{"python", "gcc"}}
	for _, ms := range [][]Measurement{
		shapedRuns("python", ModeOBDIndex, 2*time.Second, 18*mb),
		shapedRuns("python", ModeSOCI, 3*time.Second, 30*mb),
		shapedRuns("gcc", ModeOBDIndex, 5*time.Second, 40*mb),
		shapedRuns("gcc", ModeSOCI, 4*time.Second, 41*mb),
	} {
		r.Measurements = append(r.Measurements, ms...)
	}
	got := map[string]TargetResult{}
	for _, target := range r.Targets() {
		got[target.Name] = target
	}
	for name, want := range map[string]TargetResult{
		"obd+index vs soci, end to end (python)": {Measured: "1.50× (3.00 s vs 2.00 s; 30.0 MiB vs 18.0 MiB)", Met: true},
		"obd+index vs soci, end to end (gcc)":    {Measured: "0.80× (4.00 s vs 5.00 s; 41.0 MiB vs 40.0 MiB)", Met: false},
	} {
		if g := got[name]; g.Measured != want.Measured || g.Met != want.Met {
			t.Errorf("%s: got %q met=%v, want %q met=%v", name, g.Measured, g.Met, want.Measured, want.Met)
		}
	}

	r.Measurements = shapedRuns("python", ModeSOCI, 3*time.Second, 30*mb) // no obd+index cell
	for _, target := range r.Targets() {
		if strings.HasPrefix(target.Name, "obd+index vs soci") && (target.Measured != "not measured" || target.Met) {
			t.Errorf("%s without obd+index runs: %+v", target.Name, target)
		}
	}
}
