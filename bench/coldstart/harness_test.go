package coldstart

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/bddclient"
	"github.com/obdproject/obd/internal/faultproxy"
	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/pagetrace"
	"github.com/obdproject/obd/tracestore"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var (
	runBench      = flag.Bool("coldstart", false, "run the cold-start benchmark (tens of minutes; `make bench-coldstart`)")
	flagRuns      = flag.Int("coldstart.runs", 5, "cold runs per cell")
	flagModes     = flag.String("coldstart.modes", "overlayfs,obd,obd+trace,obd+registry-trace,stargz,estargz-opt", "modes to measure")
	flagNetworks  = flag.String("coldstart.networks", "loopback,shaped", "networks to measure")
	flagWorkloads = flag.String("coldstart.workloads", "python,gcc,busybox", "workloads to measure")
	flagOut       = flag.String("coldstart.out", "..", "directory for RESULTS.md, coldstart.png and results.json")
	flagBin       = flag.String("coldstart.bin", "../../bin", "directory holding obd, bdd and overlaybd-snapshotter (`make build`)")
	flagSeed      = flag.Uint64("coldstart.seed", 0, "seed of the shuffled schedule; 0 takes the clock")
	flagRender    = flag.String("coldstart.render", "", "re-render RESULTS.md and coldstart.png in -coldstart.out from this results.json, without measuring")
	flagKeepLogs  = flag.String("coldstart.keep-logs", "", "copy each trial's daemon logs into this directory")
	flagBDDConfig = flag.String("coldstart.bdd-config", "", "bdd.toml contents for the obd modes, e.g. 'log_level = \"debug\"' (logs each fetch)")
	flagPages     = flag.Bool("coldstart.page-traces", true, "obd+trace: give the snapshotter the recorded start's page trace, so it reads the start's file ranges in when the device is mounted")
	flagReplay    = flag.String("coldstart.replay-from", replayFromHarness, "who starts the obd+trace replay: harness (bdd's Prefetch with the pull, as obd trace replay or a platform that knows the next function does) or snapshotter (from its trace directory when the pull records the top layer, what nerdctl run gets after ctr-obd record-trace)")
	// zstd in 16 KiB blocks: 30% fewer bytes per range than lz4 in 4 KiB blocks (what a
	// lazy start on a slow link pays for), and as fast on loopback (bench/FINDINGS.md).
	flagAlgorithm    = flag.String("coldstart.algorithm", "zstd", "ZFile compression of the obd image: lz4 or zstd (obd convert --algorithm)")
	flagBlockSize    = flag.String("coldstart.block-size", "16K", "ZFile block size of the obd image (obd convert --block-size; empty: its default)")
	flagRangeChunk   = flag.String("coldstart.range-chunk", "", "chunk size of the obd image's range tables (obd convert --range-chunk; 0: no tables, reads checked only per whole blob; empty: its default)")
	flagIndexSpacing = flag.String("coldstart.index-spacing", "", "checkpoint spacing of the obd+index mode's seek index (obd index --spacing; empty: its default)")
	flagSOCISpan     = flag.Int64("coldstart.soci-span-size", 4<<20, "uncompressed bytes between the checkpoints of the soci mode's zTOCs (soci-index -span-size; SOCI's default 4 MiB)")
	flagRTT          = flag.Duration("coldstart.rtt", 20*time.Millisecond, "latency the shaped network adds before each request")
)

// The shaped link of issue #8: 100 Mbit/s and a 20 ms round trip per request
// (-coldstart.rtt changes the latter, to tell round trips from bandwidth in a profile).
const (
	shapedBandwidth = 100e6 / 8
	readyLine       = "ready"
	trialTimeout    = 10 * time.Minute
)

// gccHello is a hello world that needs no C library headers: the image's gcc comes without
// libc6-dev (apt --no-install-recommends), so the program makes its system calls itself. gcc
// still runs its whole pipeline (cc1, as, collect2/ld) from the image.
const gccHello = `cat > /tmp/hello.c <<'SRC'
static const char msg[] = "ready\n";
void _start(void) {
	long r;
	__asm__ volatile ("syscall" : "=a"(r) : "a"(1), "D"(1), "S"(msg), "d"(sizeof msg - 1) : "rcx", "r11", "memory");
	__asm__ volatile ("syscall" : : "a"(60), "D"(0));
	for (;;) {}
}
SRC
gcc -O2 -static -nostdlib -o /tmp/hello /tmp/hello.c && /tmp/hello`

type workload struct {
	name  string
	image string // benchImage name
	args  []string
}

var workloads = []workload{
	{"python", "debian", []string{"python3", "-c", "import json, sqlite3; print('ready')"}},
	{"gcc", "debian", []string{"sh", "-c", gccHello}},
	{"busybox", "busybox", []string{"busybox", "echo", "ready"}},
}

// Who starts the replay of mode obd+trace (-coldstart.replay-from).
const (
	replayFromHarness     = "harness"
	replayFromSnapshotter = "snapshotter"
)

// imageTag is the tag of a cell's variant of its image in the benchmark registry. An
// optimized eStargz image holds the prioritized files of one workload, so each workload has
// its own.
func imageTag(c Cell) string {
	switch c.Mode {
	case ModeOBD, ModeOBDTrace, ModeOBDRegistryTrace:
		return "obd-" + *flagAlgorithm
	case ModeStargz:
		return "estargz"
	case ModeEstargzOpt:
		return "estargz-opt-" + c.Workload
	case ModeSOCI:
		return "soci"
	}
	return "gzip"
}

// imageRepo is the repository of a cell's image in the registry. Mode obd+registry-trace
// has one per workload, as estargz-opt has an image per workload: a node replays the newest
// start trace of an image, so workloads that share one image would replay each other's.
func imageRepo(c Cell) string {
	w := workloadNamed(c.Workload)
	if c.Mode == ModeOBDRegistryTrace {
		return "bench/" + w.image + "-" + w.name
	}
	return "bench/" + w.image
}

type harness struct {
	bin      string
	benchDir string // OBD_DEPS/bench: cached images, the registry's storage
	registry string // host:port of the registry
	relays   map[Network]*Relay
	front    *BlobFront         // counts the requests of every network
	traces   map[Cell]recording // recorded traces, keyed by workload and network (Mode = ModeOBDTrace)
}

// TestColdStart is the cold-start benchmark of issue #8. It runs only with -coldstart.
func TestColdStart(t *testing.T) {
	if !*runBench {
		t.Skip("the cold-start benchmark takes tens of minutes: run `make bench-coldstart` (go test -run TestColdStart -coldstart)")
	}
	testenv.RequireRoot(t)
	cells, err := selectCells()
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{relays: map[Network]*Relay{}, traces: map[Cell]recording{}}
	h.bin, err = filepath.Abs(*flagBin)
	if err != nil {
		t.Fatal(err)
	}
	binaries := []string{"bdd", "overlaybd-snapshotter", "obd"}
	if slices.ContainsFunc(cells, func(c Cell) bool { return c.Mode == ModeOBDRegistryTrace }) {
		binaries = append(binaries, "ctr-obd")
	}
	for _, b := range binaries {
		if _, err := os.Stat(filepath.Join(h.bin, b)); err != nil {
			t.Fatalf("%s: %v (run `make build` or pass -coldstart.bin)", b, err)
		}
	}
	h.benchDir = filepath.Join(testenv.DepsDir(), "bench")
	h.startRegistry(t)
	h.prepareImages(t, cells)
	h.startNetworks(t)
	h.recordTraces(t, cells)
	h.pushTraces(t, cells)

	seed := *flagSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	report := &Report{Date: time.Now(), Machine: DescribeMachine(), LoadStart: LoadAverage(), Runs: *flagRuns, Notes: methodNotes(seed)}
	for _, w := range workloads {
		if slices.ContainsFunc(cells, func(c Cell) bool { return c.Workload == w.name }) {
			report.Workloads = append(report.Workloads, w.name)
		}
	}
	trials := Schedule(cells, *flagRuns, seed)
	for i, tr := range trials {
		m := Measurement{Trial: tr, Err: "the trial's setup failed (see the test log)"}
		name := fmt.Sprintf("%s/%s/%s/%d", tr.Workload, tr.Network, strings.ReplaceAll(string(tr.Mode), "+", "-"), tr.Round)
		t.Run(name, func(t *testing.T) { m, _ = h.trial(t, tr, false) })
		t.Logf("%d/%d %s: total %.2fs pull %.2fs create %.2fs run %.2fs warm %.2fs fetched %s in %d requests, daemons' CPU %.2fs %s", i+1, len(trials), name,
			m.Total.Seconds(), m.Pull.Seconds(), m.Create.Seconds(), m.Run.Seconds(), m.Warm.Seconds(), mib(m.BytesFetched), m.Requests, m.DaemonCPU.Seconds(), oneLine(m.Err))
		report.Measurements = append(report.Measurements, m)
		report.LoadEnd = LoadAverage()
		if err := writeResults(report, *flagOut); err != nil { // after every trial, so a cut-off run keeps its data
			t.Fatal(err)
		}
	}
}

// TestRenderResults rewrites the report and chart from a results.json, e.g. after a change of
// their layout. It runs only with -coldstart.render.
func TestRenderResults(t *testing.T) {
	if *flagRender == "" {
		t.Skip("re-renders a results.json only when asked: -coldstart.render FILE")
	}
	data, err := os.ReadFile(*flagRender)
	if err != nil {
		t.Fatal(err)
	}
	var r Report
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatalf("%s: %v", *flagRender, err)
	}
	if err := writeResults(&r, *flagOut); err != nil {
		t.Fatal(err)
	}
}

func selectCells() ([]Cell, error) {
	pick := func(list string, known []string, what string) ([]string, error) {
		var out []string
		for _, s := range strings.Split(list, ",") {
			if s = strings.TrimSpace(s); s == "" {
				continue
			}
			if !slices.Contains(known, s) {
				return nil, fmt.Errorf("unknown %s %q (known: %s)", what, s, strings.Join(known, ", "))
			}
			out = append(out, s)
		}
		return out, nil
	}
	var knownModes, knownNets, knownWorkloads []string
	for _, m := range Modes {
		knownModes = append(knownModes, string(m))
	}
	for _, n := range Networks {
		knownNets = append(knownNets, string(n))
	}
	for _, w := range workloads {
		knownWorkloads = append(knownWorkloads, w.name)
	}
	modes, err := pick(*flagModes, knownModes, "mode")
	if err != nil {
		return nil, err
	}
	if *flagReplay != replayFromHarness && *flagReplay != replayFromSnapshotter {
		return nil, fmt.Errorf("unknown -coldstart.replay-from %q (known: %s, %s)", *flagReplay, replayFromHarness, replayFromSnapshotter)
	}
	nets, err := pick(*flagNetworks, knownNets, "network")
	if err != nil {
		return nil, err
	}
	wls, err := pick(*flagWorkloads, knownWorkloads, "workload")
	if err != nil {
		return nil, err
	}
	var cells []Cell
	for _, w := range wls {
		for _, n := range nets {
			for _, m := range modes {
				cells = append(cells, Cell{Workload: w, Mode: Mode(m), Network: Network(n)})
			}
		}
	}
	return cells, nil
}

func methodNotes(seed uint64) []string {
	return []string{
		fmt.Sprintf("Images: busybox (one layer, built offline with umoci) and Debian bookworm in 3 layers (debootstrap minbase; + python3; + gcc; apt caches cleaned), built by convert/bench/mkimage.sh. Variants pushed to a local `docker-registry`: gzip OCI (overlayfs), `obd convert %s` (obd modes), `nerdctl image convert --estargz --oci` (stargz), and per workload eStargz optimized for it (estargz-opt: bench/stargz/optimize, stargz-snapshotter v0.18.1's analyzer and converter as ctr-remote's `image optimize` uses them, the workload's command run once, its opened files prioritized; gzip level 9 and default chunks as nerdctl's).", convertFlags()),
		"Workloads: `python3 -c \"import json, sqlite3; print('ready')\"`; gcc compiling and running a hello world (freestanding: the image has no libc6-dev, since apt ran with --no-install-recommends); `busybox echo ready`.",
		"Modes: overlayfs = containerd v2.4.2's overlayfs snapshotter, full pull and unpack; obd = overlaybd-snapshotter + bdd (FUSE + loop transport), metadata-only pull; obd+trace = obd, with a trace recorded once before the measurements (bdd StartTrace/StopTrace around a cold obd start of the same workload) replayed by bdd's Prefetch at the start of each run (with -coldstart.replay-from snapshotter: stored in the snapshotter's trace directory, which replays it when the pull records the image's top layer), and the page trace recorded after that start given to the snapshotter, which reads it in when the device is mounted (-coldstart.page-traces); obd+registry-trace = obd on a node that never ran the image (empty bdd cache and state, empty trace directory): `ctr-obd record-trace --push` recorded a cold start of the workload once before the measurements and pushed the trace as an OCI artifact referring to the image's manifest, in a repository of the workload's own (a node replays an image's newest trace; estargz-opt likewise has an image per workload); the snapshotter (remoteTraces on, off in the other obd modes) finds it through bdd's FetchTrace and replays it, no replay is started by the harness, and a trial whose logs do not show the registry trace found and replayed fails; stargz = stargz-snapshotter v0.18.1 library (bench/stargz) with its default background fetch; estargz-opt = the same snapshotter on the optimized eStargz image (its prioritized files are prefetched at mount).",
		fmt.Sprintf("soci = the SOCI snapshotter, soci-snapshotter v0.16.1's library packages (bench/soci, default background fetch, zTOC spans of %s), on the gzip image's layers: bench/soci/index built the SOCI index (SOCI index manifest v2: a zTOC per layer, the image's manifest annotated with its digest, both in an OCI index tagged soci) before the measurements; min layer size 0 in the index and the snapshotter, so every layer is read lazily as in the obd modes (SOCI's default, 10 MiB, pulls smaller layers whole), and a trial fails unless the snapshotter logged all the image's layers prepared lazily and fetched fewer bytes than the layers hold.", mib(*flagSOCISpan)),
		"Registry: docker-registry for manifests, with blob GETs served from its storage by a static file server (bench/coldstart/blobfront.go), as CDN-backed registries serve them; docker-registry itself spends ~3.5 ms of CPU per range request, which here would come out of the 2 cores under test.",
		fmt.Sprintf("Networks: loopback = a TCP relay to the registry on 127.0.0.1; shaped = the same relay in front of internal/faultproxy adding %v before each request and limiting all response bodies together to %.0f Mbit/s.", *flagRTT, shapedBandwidth*8/1e6),
		"Each run is cold: a new containerd (empty content store and snapshots), new snapshotter and bdd state and cache, page cache dropped. Pull = `nerdctl pull`, create = `nerdctl create`, run = `nerdctl start -a` until the ready line; total = from the pull command to the ready line. Warm = a second `nerdctl run --rm` of the image right after, everything cached. MiB fetched = bytes the registry sent (TCP, headers included) from the pull to the ready line, median.",
		fmt.Sprintf("Runs interleaved: each round runs every cell once in a freshly shuffled order (seed %d).", seed),
	}
}

func writeResults(r *Report, dir string) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), data, 0o644); err != nil {
		return err
	}
	var md bytes.Buffer
	if err := r.WriteMarkdown(&md, "coldstart.png"); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "RESULTS.md"), md.Bytes(), 0o644); err != nil {
		return err
	}
	var png bytes.Buffer
	if err := r.WriteChart(&png); err != nil {
		return nil // nothing succeeded yet: no chart
	}
	return os.WriteFile(filepath.Join(dir, "coldstart.png"), png.Bytes(), 0o644)
}

// startRegistry runs Debian's docker-registry on a free port with its storage under
// OBD_DEPS/bench/registry, so that converted images survive between benchmark runs.
func (h *harness) startRegistry(t *testing.T) {
	binary := testenv.Bin(t, "docker-registry")
	dir := t.TempDir()
	h.registry = testenv.FreeAddr(t)
	storage := filepath.Join(h.benchDir, "registry")
	config := fmt.Sprintf("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n", storage, h.registry)
	path := filepath.Join(dir, "registry.yml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.StartProcess(t, filepath.Join(dir, "registry.log"), testenv.TCPReady(h.registry), binary, "serve", path)
}

// startNetworks puts a counting relay in front of the registry (behind its BlobFront) for
// each network; the shaped one goes through faultproxy's shaping.
func (h *harness) startNetworks(t *testing.T) {
	front, err := StartBlobFront(h.registry, filepath.Join(h.benchDir, "registry"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { front.Close() })
	h.front = front
	loop, err := StartRelay(front.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { loop.Close() })
	h.relays[NetLoopback] = loop

	proxy, err := faultproxy.New("http://" + front.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	proxy.SetFilter(func(*http.Request) bool { return true })
	proxy.SetShaping(faultproxy.Shaping{Latency: *flagRTT, Bandwidth: shapedBandwidth})
	shaped, err := StartRelay(proxy.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shaped.Close() })
	h.relays[NetShaped] = shaped
}

// prepareImages pushes every image variant the cells need to the registry: gzip from the OCI
// layouts, obd by `obd convert` (each run, so it is the current converter's output; its layer
// cache makes repeats quick), estargz by nerdctl and estargz-opt by bench/stargz/optimize (once:
// kept in the registry's storage).
func (h *harness) prepareImages(t *testing.T, cells []Cell) {
	need := map[string]map[string]bool{} // image -> tags
	optimize := map[string][]workload{}  // image -> workloads of estargz-opt cells
	ownRepo := map[string][]Cell{}       // image -> cells with a repository of their own
	for _, c := range cells {
		w := workloadNamed(c.Workload)
		if need[w.image] == nil {
			need[w.image] = map[string]bool{}
		}
		tag := imageTag(c)
		if c.Mode == ModeEstargzOpt && !need[w.image][tag] {
			optimize[w.image] = append(optimize[w.image], w)
		}
		if r := imageRepo(c); r != "bench/"+w.image && !slices.ContainsFunc(ownRepo[w.image], func(o Cell) bool { return imageRepo(o) == r }) {
			ownRepo[w.image] = append(ownRepo[w.image], c)
		}
		need[w.image][tag] = true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	for image, tags := range need {
		layout := h.imageLayout(t, ctx, image)
		repo := h.registry + "/bench/" + image
		h.command(t, ctx, "skopeo", "copy", "--dest-tls-verify=false", "oci:"+layout, "docker://"+repo+":gzip")
		if obdTag := imageTag(Cell{Mode: ModeOBD}); tags[obdTag] {
			args := []string{"convert", "--algorithm", *flagAlgorithm, "--work-dir", filepath.Join(h.benchDir, "convert-work")}
			if *flagBlockSize != "" {
				args = append(args, "--block-size", *flagBlockSize)
			}
			if *flagRangeChunk != "" {
				args = append(args, "--range-chunk", *flagRangeChunk)
			}
			start := time.Now()
			h.command(t, ctx, filepath.Join(h.bin, "obd"), append(args, repo+":gzip", repo+":"+obdTag)...)
			t.Logf("obd convert %s:gzip took %s (converted layers are cached across runs)", repo, time.Since(start).Round(time.Millisecond))
		}
		if slices.ContainsFunc(cells, func(c Cell) bool { return c.Mode == ModeOBDIndex && workloadNamed(c.Workload).image == image }) {
			// The index artifact refers to the gzip image's manifest, which stays as it is.
			start := time.Now()
			args := []string{"index", "--work-dir", filepath.Join(h.benchDir, "index-work")}
			if *flagIndexSpacing != "" {
				args = append(args, "--spacing", *flagIndexSpacing)
			}
			out := h.command(t, ctx, filepath.Join(h.bin, "obd"), append(args, repo+":gzip")...)
			t.Logf("obd index %s:gzip took %s: %s", repo, time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))
		}
		if tags[imageTag(Cell{Mode: ModeSOCI})] {
			h.buildSOCIIndex(t, ctx, repo)
		}
		for _, c := range ownRepo[image] {
			tag := imageTag(c)
			h.command(t, ctx, "skopeo", "copy", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false",
				"docker://"+repo+":"+tag, "docker://"+h.registry+"/"+imageRepo(c)+":"+tag)
		}
		if tags["estargz"] && !h.manifestExists(t, ctx, "bench/"+image, "estargz") {
			h.convertEstargz(t, ctx, repo)
		}
		for _, w := range optimize[image] {
			if tag := imageTag(Cell{Workload: w.name, Mode: ModeEstargzOpt}); !h.manifestExists(t, ctx, "bench/"+image, tag) {
				h.optimizeEstargz(t, ctx, repo, tag, w)
			}
		}
	}
}

// convertFlags are the obd convert options of the obd image, as the report names them.
func convertFlags() string {
	s := "--algorithm " + *flagAlgorithm
	if *flagBlockSize != "" {
		s += " --block-size " + *flagBlockSize
	}
	if *flagRangeChunk != "" {
		s += " --range-chunk " + *flagRangeChunk
	}
	return s
}

func workloadNamed(name string) workload {
	for _, w := range workloads {
		if w.name == name {
			return w
		}
	}
	panic("coldstart: unknown workload " + name) // selectCells validated the names
}

// imageLayout returns "DIR:TAG" of an image's OCI layout, building it if needed.
func (h *harness) imageLayout(t *testing.T, ctx context.Context, image string) string {
	switch image {
	case "debian":
		script, err := filepath.Abs("../../convert/bench/mkimage.sh")
		if err != nil {
			t.Fatal(err)
		}
		out := h.command(t, ctx, "bash", script)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		return lines[len(lines)-1] + ":bench"
	case "busybox":
		img := testenv.BuildBusyboxImage(t)
		return img.Layout + ":" + img.Tag
	}
	t.Fatalf("unknown image %q", image)
	return ""
}

func (h *harness) convertEstargz(t *testing.T, ctx context.Context, repo string) {
	ctrd := testenv.StartContainerd(t, testenv.ContainerdOptions{})
	n := newNerdctl(t, ctrd, "overlayfs")
	for _, args := range [][]string{
		{"pull", "--quiet", repo + ":gzip"},
		{"image", "convert", "--estargz", "--oci", repo + ":gzip", repo + ":estargz"},
		{"push", repo + ":estargz"},
	} {
		if _, err := n.run(ctx, args...); err != nil {
			t.Fatal(err)
		}
	}
}

// optimizeEstargz converts repo's gzip image to eStargz optimized for workload w, as
// ctr-remote's `image optimize` does (bench/stargz/optimize: stargz's analyzer runs the
// workload once and records the files it opens, its converter puts them first in each layer),
// and pushes it as repo:tag. The prioritized files are kept under OBD_DEPS/bench/traces.
func (h *harness) optimizeEstargz(t *testing.T, ctx context.Context, repo, tag string, w workload) {
	ctrd := testenv.StartContainerd(t, testenv.ContainerdOptions{})
	n := newNerdctl(t, ctrd, "overlayfs")
	if _, err := n.run(ctx, "pull", "--quiet", repo+":gzip"); err != nil {
		t.Fatal(err)
	}
	record := filepath.Join(h.benchDir, "traces", "estargz-opt-"+w.name+".json")
	if err := os.MkdirAll(filepath.Dir(record), 0o755); err != nil {
		t.Fatal(err)
	}
	out := h.command(t, ctx, filepath.Join(h.benchDir, "bin", "estargz-optimize"), append([]string{
		"-address", ctrd.Address, "-namespace", ctrd.Namespace, "-record-out", record,
		repo + ":gzip", repo + ":" + tag, "--"}, w.args...)...)
	t.Logf("estargz-opt of %s: %s(prioritized files in %s)", w.name, out, record)
	if _, err := n.run(ctx, "push", repo+":"+tag); err != nil {
		t.Fatal(err)
	}
}

// recording is what a recorded start leaves for the next ones: bdd's trace of the start's
// blob reads and the page trace of the files it read, as the snapshotter records it when the
// device goes.
type recording struct {
	trace []byte
	pages pagetrace.Trace
}

// storeTrace puts trace in the snapshotter's trace directory under the chain of the image
// ref (through a relay) names, as `ctr-obd record-trace` does.
func (h *harness) storeTrace(t *testing.T, dir, ref string, trace []byte) {
	if err := (tracestore.Store{Dir: dir}).Save(h.chainOf(t, ref), trace); err != nil {
		t.Fatal(err)
	}
}

// storePages puts a page trace in the snapshotter's trace directory under the chain of ref,
// where the snapshotter would have recorded it when an earlier start's device went.
func (h *harness) storePages(t *testing.T, dir, ref string, pages pagetrace.Trace) {
	if err := (tracestore.Store{Dir: dir}).SavePages(h.chainOf(t, ref), pages); err != nil {
		t.Fatal(err)
	}
}

// chainOf returns the chain ID of the layers of the image ref (through a relay) names.
func (h *harness) chainOf(t *testing.T, ref string) digest.Digest {
	_, repoTag, _ := strings.Cut(ref, "/")
	repo, tag, _ := strings.Cut(repoTag, ":")
	var layers []digest.Digest
	for _, l := range h.imageLayers(t, repo, tag) {
		layers = append(layers, l.Digest)
	}
	chain, err := tracestore.ChainID(layers)
	if err != nil {
		t.Fatal(err)
	}
	return chain
}

// layer is a layer descriptor of an image manifest.
type layer struct {
	Digest digest.Digest `json:"digest"`
	Size   int64         `json:"size"`
}

// imageLayers returns the layers of the image repo:tag names in the registry (of an index, its
// first manifest's: the image's, not a SOCI index's, which comes after it).
func (h *harness) imageLayers(t *testing.T, repo, tag string) []layer {
	var m struct {
		Manifests []struct{ Digest string } `json:"manifests"`
		Layers    []layer                   `json:"layers"`
	}
	for name := tag; ; {
		resp := h.manifest(t, context.Background(), http.MethodGet, repo, name)
		err := json.NewDecoder(resp.Body).Decode(&m)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("manifest %s:%s: status %d, %v", repo, name, resp.StatusCode, err)
		}
		if len(m.Manifests) == 0 {
			break
		}
		name, m.Manifests = m.Manifests[0].Digest, nil // an index: its first platform
	}
	return m.Layers
}

func (h *harness) manifestExists(t *testing.T, ctx context.Context, repo, tag string) bool {
	resp := h.manifest(t, ctx, http.MethodHead, repo, tag)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// manifest asks the registry for the OCI manifest or index ref (a tag or digest) of repo.
// The caller closes the body.
func (h *harness) manifest(t *testing.T, ctx context.Context, method, repo, ref string) *http.Response {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+h.registry+"/v2/"+repo+"/manifests/"+ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func (h *harness) command(t *testing.T, ctx context.Context, name string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

// recordTraces records, once per workload and network measured in mode obd+trace, the trace
// of a cold obd start of the workload.
func (h *harness) recordTraces(t *testing.T, cells []Cell) {
	for _, c := range cells {
		if c.Mode != ModeOBDTrace {
			continue
		}
		m := Measurement{Err: "the recording's setup failed (see the test log)"}
		var rec recording
		t.Run("record-trace/"+c.Workload+"/"+string(c.Network), func(t *testing.T) {
			m, rec = h.trial(t, Trial{Cell: Cell{Workload: c.Workload, Mode: ModeOBD, Network: c.Network}}, true)
		})
		if m.Err != "" || len(rec.trace) == 0 {
			t.Fatalf("recording the trace of %s on %s failed: %s", c.Workload, c.Network, m.Err)
		}
		// Kept for inspection: which ranges of which layers the start read.
		path := filepath.Join(h.benchDir, "traces", c.Workload+"-"+string(c.Network)+".json")
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, rec.trace, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("trace of %s on %s: %s, recorded in a run of %.2fs fetching %s; page trace of %d ranges", c.Workload, c.Network, path, m.Total.Seconds(), mib(m.BytesFetched), len(rec.pages))
		h.traces[c] = rec
	}
}

// node is a fresh node of one trial: a new containerd with the mode's snapshotter (for the obd
// modes a new bdd and overlaybd-snapshotter, for the stargz modes a new stargz snapshotter), all
// with empty state, caches and trace directories, stopped and removed in t.Cleanup.
type node struct {
	dir    string // the daemons' logs, sockets and state
	ctrd   *testenv.Containerd
	n      *nerdctl
	daemon bddv1.DaemonClient // obd modes only
	// obd modes only: bdd's control socket, the snapshotter's root and trace directory.
	bddSocket, snRoot, traceDir string
}

// startNode starts a node for mode. For the obd modes, settings are added to the
// snapshotter's configuration (besides its trace directory), and stage (if not nil) runs
// before the snapshotter starts, to put files into its trace directory.
func (h *harness) startNode(t *testing.T, mode Mode, settings map[string]any, stage func(traceDir string)) *node {
	// Unix sockets live here: the path must stay short.
	dir, err := os.MkdirTemp("", "obd-cs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := testenv.UnmountAll(dir); err != nil {
			t.Error(err)
		}
		if *flagKeepLogs != "" {
			if out, err := exec.Command("cp", "-r", dir, *flagKeepLogs).CombinedOutput(); err != nil {
				t.Errorf("keeping the logs: %v: %s", err, out)
			}
		}
		os.RemoveAll(dir)
	})
	nd := &node{dir: dir}
	snapshotter := "overlayfs"
	var plugins []testenv.ProxyPlugin
	switch mode {
	case ModeOBD, ModeOBDTrace, ModeOBDRegistryTrace, ModeOBDIndex:
		// Config files of the trial's own keep host-wide ones (/etc/obd,
		// /etc/overlaybd-snapshotter, /var/lib/obd/traces) out.
		nd.traceDir = filepath.Join(dir, "traces")
		if stage != nil {
			stage(nd.traceDir)
		}
		config := map[string]any{"traceDir": nd.traceDir}
		maps.Copy(config, settings)
		snapshotterConfig, err := json.Marshal(config)
		if err != nil {
			t.Fatal(err)
		}
		for name, content := range map[string]string{"bdd.toml": *flagBDDConfig, "snapshotter.json": string(snapshotterConfig)} {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		nd.bddSocket = filepath.Join(dir, "bdd.sock")
		runDir := filepath.Join(dir, "bdd-run")
		t.Cleanup(func() { testenv.KillBDDKeeper(runDir) }) // after bdd has stopped
		testenv.StartProcess(t, filepath.Join(dir, "bdd.log"), testenv.SocketReady(nd.bddSocket), filepath.Join(h.bin, "bdd"),
			"--config", filepath.Join(dir, "bdd.toml"), "--socket", nd.bddSocket, "--state-dir", filepath.Join(dir, "bdd-state"),
			"--run-dir", runDir, "--cache-dir", filepath.Join(dir, "bdd-cache"))
		client, conn, err := bddclient.Dial(nd.bddSocket)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		nd.daemon = client
		snSocket := filepath.Join(dir, "sn.sock")
		nd.snRoot = filepath.Join(dir, "sn")
		// After the snapshotter has stopped and before bdd stops: unmount the devices'
		// file systems and detach the devices, so no loop device outlives the run.
		t.Cleanup(func() { detachAll(t, client, nd.snRoot) })
		testenv.StartProcess(t, filepath.Join(dir, "snapshotter.log"), testenv.SocketReady(snSocket), filepath.Join(h.bin, "overlaybd-snapshotter"),
			"--config", filepath.Join(dir, "snapshotter.json"), "--root", nd.snRoot, "--address", snSocket, "--bdd-socket", nd.bddSocket)
		snapshotter = "overlaybd"
		plugins = append(plugins, testenv.ProxyPlugin{Name: snapshotter, Type: "snapshot", Address: snSocket})
	case ModeStargz, ModeEstargzOpt:
		snapshotter = "stargz"
		plugins = append(plugins, h.startPeer(t, dir, snapshotter, "stargz-snapshotter"))
	case ModeSOCI:
		// Every layer lazily, as obd's modes read them: SOCI pulls layers below its
		// min_layer_size whole (the index builder skips them too, see buildSOCIIndex).
		snapshotter = "soci"
		plugins = append(plugins, h.startPeer(t, dir, snapshotter, "soci-snapshotter", "--min-layer-size", "0"))
	}
	nd.ctrd = testenv.StartContainerd(t, testenv.ContainerdOptions{ProxyPlugins: plugins})
	nd.n = newNerdctl(t, nd.ctrd, snapshotter)
	return nd
}

// startPeer starts a peer's snapshotter (bench/stargz, bench/soci: binary under
// OBD_DEPS/bench/bin) for a node in dir, its root, socket and log named after it, and returns
// the proxy plugin that containerd reaches it by.
func (h *harness) startPeer(t *testing.T, dir, name, binary string, args ...string) testenv.ProxyPlugin {
	socket := filepath.Join(dir, name+".sock")
	testenv.StartProcess(t, filepath.Join(dir, name+".log"), testenv.SocketReady(socket), filepath.Join(h.benchDir, "bin", binary),
		append([]string{"--root", filepath.Join(dir, name), "--address", socket}, args...)...)
	return testenv.ProxyPlugin{Name: name, Type: "snapshot", Address: socket}
}

// pushTraces records, once per workload measured in mode obd+registry-trace, a cold obd start
// of the workload with `ctr-obd record-trace --push`, which leaves the trace in the registry as
// an artifact referring to the image, where the trials' snapshotters find it.
func (h *harness) pushTraces(t *testing.T, cells []Cell) {
	done := map[string]bool{}
	for _, c := range cells {
		if c.Mode != ModeOBDRegistryTrace || done[c.Workload] {
			continue
		}
		done[c.Workload] = true
		if !t.Run("push-trace/"+c.Workload, func(t *testing.T) { h.pushTrace(t, workloadNamed(c.Workload)) }) {
			t.Fatalf("recording and pushing the trace of %s failed", c.Workload)
		}
	}
}

func (h *harness) pushTrace(t *testing.T, w workload) {
	// Straight to the registry, not through a relay: the recording is not measured. The
	// recording node looks for no registry trace, which an earlier push would offer.
	nd := h.startNode(t, ModeOBDRegistryTrace, map[string]any{"remoteTraces": false}, nil)
	c := Cell{Workload: w.name, Mode: ModeOBDRegistryTrace}
	ref := h.registry + "/" + imageRepo(c) + ":" + imageTag(c)
	ctx, cancel := context.WithTimeout(context.Background(), trialTimeout)
	defer cancel()
	if _, err := nd.n.run(ctx, "pull", "--quiet", ref); err != nil {
		t.Fatal(err)
	}
	if err := dropCaches(); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(h.benchDir, "traces", w.name+"-registry.json")
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		t.Fatal(err)
	}
	out := h.command(t, ctx, filepath.Join(h.bin, "ctr-obd"), append([]string{
		"--address", nd.ctrd.Address, "--namespace", nd.ctrd.Namespace,
		"record-trace", "--snapshotter", "overlaybd", "--bdd-socket", nd.bddSocket, "--trace-dir", nd.traceDir,
		"--plain-http", "--push", ref, file, "--"}, w.args...)...)
	if !strings.Contains(out, "pushed start trace") {
		t.Fatalf("ctr-obd record-trace --push did not push:\n%s", out)
	}
	t.Logf("registry trace of %s:\n%s", w.name, out)
}

// trial measures one cold start. With record it also records bdd's trace of the start and
// the page trace of the files it read.
func (h *harness) trial(t *testing.T, tr Trial, record bool) (Measurement, recording) {
	m := Measurement{Trial: tr}
	w := workloadNamed(tr.Workload)
	relay := h.relays[tr.Network]
	ref := relay.Addr + "/" + imageRepo(tr.Cell) + ":" + imageTag(tr.Cell)
	local := h.traces[Cell{Workload: tr.Workload, Mode: ModeOBDTrace, Network: tr.Network}]

	var stage func(traceDir string)
	if tr.Mode == ModeOBDTrace {
		stage = func(traceDir string) {
			if *flagReplay == replayFromSnapshotter {
				h.storeTrace(t, traceDir, ref, local.trace)
			}
			if *flagPages && len(local.pages) > 0 {
				h.storePages(t, traceDir, ref, local.pages)
			}
		}
	}
	// The trace artifact refers to the image's manifest, which every obd mode pulls (and the
	// registry's storage outlives a run): only mode obd+registry-trace's snapshotter may look
	// for it.
	settings := map[string]any{"remoteTraces": tr.Mode == ModeOBDRegistryTrace, "remoteIndexes": tr.Mode == ModeOBDIndex}
	nd := h.startNode(t, tr.Mode, settings, stage)
	n, daemon := nd.n, nd.daemon
	ctx, cancel := context.WithTimeout(context.Background(), trialTimeout)
	defer cancel()

	if err := dropCaches(); err != nil {
		t.Fatal(err)
	}
	if record {
		if _, err := daemon.StartTrace(ctx, &bddv1.StartTraceRequest{}); err != nil {
			t.Fatalf("StartTrace: %v", err)
		}
	}
	fetched0, requests0 := relay.BytesDown(), h.front.Requests()
	start := time.Now()
	var prefetch sync.WaitGroup
	var prefetchErr error
	if tr.Mode == ModeOBDTrace && *flagReplay == replayFromHarness {
		prefetch.Go(func() {
			_, prefetchErr = daemon.Prefetch(ctx, &bddv1.PrefetchRequest{Trace: local.trace})
		})
	}
	fail := func(err error) (Measurement, recording) {
		m.Err = err.Error()
		prefetch.Wait()
		return m, recording{}
	}
	var err error
	if m.Pull, err = n.run(ctx, "pull", "--quiet", ref); err != nil {
		return fail(err)
	}
	args := append([]string{"create", "--net", "none", "--name", "cold", ref}, w.args...)
	if m.Create, err = n.run(ctx, args...); err != nil {
		return fail(err)
	}
	runStart := time.Now()
	readyAt, err := n.untilLine(ctx, readyLine, "start", "--attach", "cold")
	if err != nil {
		return fail(err)
	}
	m.Run, m.Total = readyAt.Sub(runStart), readyAt.Sub(start)
	m.BytesFetched, m.Requests = relay.BytesDown()-fetched0, h.front.Requests()-requests0
	m.DaemonCPU = daemonCPU(nd.dir)
	if err := writePhases(nd.dir, start, start.Add(m.Pull), runStart, readyAt); err != nil {
		return fail(err)
	}
	prefetch.Wait()
	if prefetchErr != nil {
		return fail(fmt.Errorf("prefetch: %w", prefetchErr))
	}
	if err := checkTraceSource(tr.Mode, nd.dir); err != nil {
		return fail(err)
	}
	if tr.Mode == ModeSOCI {
		if err := h.checkSOCILazy(t, nd.dir, tr.Cell, m.BytesFetched); err != nil {
			return fail(err)
		}
	}
	var rec recording
	if record {
		resp, err := daemon.StopTrace(ctx, &bddv1.StopTraceRequest{})
		if err != nil {
			return fail(fmt.Errorf("StopTrace: %w", err))
		}
		rec.trace = resp.GetTrace()
		if rec.pages, err = recordPages(ctx, nd.snRoot); err != nil {
			return fail(err)
		}
	}

	warmStart := time.Now()
	args = append([]string{"run", "--rm", "--net", "none", ref}, w.args...)
	warmAt, err := n.untilLine(ctx, readyLine, args...)
	if err != nil {
		return fail(fmt.Errorf("warm start: %w", err))
	}
	m.Warm = warmAt.Sub(warmStart)
	if _, err := n.run(ctx, "rm", "-f", "cold"); err != nil {
		return fail(err)
	}
	return m, rec
}

// daemonCPU returns the CPU time (user and system) the processes started for a node have used
// so far: bdd and overlaybd-snapshotter, or the stargz snapshotter, whose command lines name
// the node's directory. Since they started with the node, it is their cost of the start.
func daemonCPU(dir string) time.Duration {
	procs, _ := filepath.Glob("/proc/[0-9]*")
	var ticks int64
	for _, p := range procs {
		cmdline, err := os.ReadFile(filepath.Join(p, "cmdline"))
		if err != nil || !bytes.Contains(cmdline, []byte(dir+"/")) {
			continue
		}
		stat, err := os.ReadFile(filepath.Join(p, "stat"))
		if err != nil {
			continue
		}
		// Fields after the command's name (in parentheses, which may hold spaces): utime and
		// stime are the 14th and 15th fields of the line, the 12th and 13th after it.
		_, after, ok := bytes.Cut(stat, []byte(") "))
		fields := strings.Fields(string(after))
		if !ok || len(fields) < 13 {
			continue
		}
		utime, _ := strconv.ParseInt(fields[11], 10, 64)
		stime, _ := strconv.ParseInt(fields[12], 10, 64)
		ticks += utime + stime
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ, 100 on Linux
}

// writePhases records when a trial's steps started and the ready line came, for reading its
// kept daemon logs (-coldstart.keep-logs) against them.
func writePhases(dir string, start, pulled, runStart, ready time.Time) error {
	data, err := json.Marshal(map[string]time.Time{"start": start, "pulled": pulled, "runStart": runStart, "ready": ready})
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "phases.json"), data, 0o644)
}

// checkTraceSource checks in a finished trial's daemon logs (in dir) that a trial of mode
// obd+registry-trace replayed the trace the registry holds, and that no other obd trial did:
// bdd logs "registry trace found" when the snapshotter's FetchTrace finds the artifact, the
// snapshotter "trace prefetched" with source=registry when its replay has ended, which may be
// a moment after the container's output: it is waited for up to traceLogWait.
func checkTraceSource(mode Mode, dir string) error {
	if mode != ModeOBD && mode != ModeOBDTrace && mode != ModeOBDRegistryTrace {
		return nil
	}
	deadline := time.Now().Add(traceLogWait)
	for {
		found, replayed, err := registryTraceLogged(dir)
		switch {
		case err != nil:
			return err
		case mode != ModeOBDRegistryTrace && (found || replayed):
			return fmt.Errorf("mode %s picked up the registry's trace (remoteTraces must be off)", mode)
		case mode != ModeOBDRegistryTrace || (found && replayed):
			return nil
		case time.Now().After(deadline) && !found:
			return fmt.Errorf("no registry trace: bdd did not log \"registry trace found\" (%s)", filepath.Join(dir, "bdd.log"))
		case time.Now().After(deadline):
			return fmt.Errorf("the registry trace was not replayed: the snapshotter did not log \"trace prefetched\" with source=registry (%s)", filepath.Join(dir, "snapshotter.log"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// traceLogWait is how long checkTraceSource waits for a registry trace's replay to end.
const traceLogWait = 15 * time.Second

// registryTraceLogged reads a node's logs: whether bdd found a trace in the registry, and
// whether the snapshotter finished replaying one.
func registryTraceLogged(dir string) (found, replayed bool, err error) {
	bddLog, err := os.ReadFile(filepath.Join(dir, "bdd.log"))
	if err != nil {
		return false, false, err
	}
	snLog, err := os.ReadFile(filepath.Join(dir, "snapshotter.log"))
	if err != nil {
		return false, false, err
	}
	found = bytes.Contains(bddLog, []byte("registry trace found"))
	replayed = slices.ContainsFunc(bytes.Split(snLog, []byte("\n")), func(line []byte) bool {
		return bytes.Contains(line, []byte("trace prefetched")) &&
			(bytes.Contains(line, []byte("source=registry")) || bytes.Contains(line, []byte(`"source":"registry"`)))
	})
	return found, replayed, nil
}

// recordPages records the page trace of the image device mounted under the snapshotter's
// root, what the snapshotter records when it releases the device (the trial ends before).
func recordPages(ctx context.Context, snRoot string) (pagetrace.Trace, error) {
	mnts, err := filepath.Glob(filepath.Join(snRoot, "snapshots", "*", "block", "mnt"))
	if err != nil {
		return nil, err
	}
	for _, mnt := range mnts {
		var st, parent unix.Stat_t
		if unix.Stat(mnt, &st) != nil || unix.Stat(filepath.Dir(mnt), &parent) != nil || st.Dev == parent.Dev {
			continue // not a mount point
		}
		return pagetrace.Record(ctx, mnt)
	}
	return nil, fmt.Errorf("no device mounted under %s to record a page trace of", snRoot)
}

// detachAll unmounts everything under the snapshotter's root and detaches every device of bdd.
func detachAll(t *testing.T, client bddv1.DaemonClient, snRoot string) {
	if err := testenv.UnmountAll(snRoot); err != nil {
		t.Error(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list, err := client.List(ctx, &bddv1.ListRequest{})
	if err != nil {
		t.Errorf("bdd List: %v", err)
		return
	}
	for _, dev := range list.GetDevices() {
		// Lazily unmounted file systems (containerd's, the snapshotter's) let go of the
		// device a moment later: retry while bdd says it is busy.
		for {
			_, err := client.Detach(ctx, &bddv1.DetachRequest{Id: dev.GetId()})
			if status.Code(err) == codes.FailedPrecondition && ctx.Err() == nil {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			if err != nil {
				t.Errorf("bdd Detach %s: %v", dev.GetId(), err)
			}
			break
		}
	}
}

// dropCaches writes back dirty pages and drops the page cache, dentries and inodes, so a run
// reads the local disk cold too.
func dropCaches() error {
	if err := exec.Command("sync").Run(); err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200); err != nil {
		return fmt.Errorf("drop page cache: %w", err)
	}
	return nil
}
