package fleet

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/blocktrace"
	"github.com/obdproject/obd/fleetsim"
	"github.com/obdproject/obd/internal/faultproxy"
	"github.com/obdproject/obd/internal/testregistry"
	"github.com/obdproject/obd/internal/testzone"
	"github.com/obdproject/obd/mirrorwarm"
	"github.com/obdproject/obd/remotefetch"
)

var (
	runFleet      = flag.Bool("fleet", false, "measure the first node's start per mode (minutes; writes -fleet.out)")
	flagImage     = flag.String("fleet.image", "/opt/obd-deps/images/dedup-set-obd:gcc", "OCI layout DIR:TAG of the overlaybd image (scripts/mkdedupimages.sh, then obd convert --algorithm zstd --block-size 16K)")
	flagTrace     = flag.String("fleet.trace", "/opt/obd-deps/bench/traces/python-registry.json", "block trace of one start of that image (bench/coldstart records them)")
	flagRuns      = flag.Int("fleet.runs", 3, "runs per mode")
	flagRTT       = flag.Duration("fleet.origin-rtt", 50*time.Millisecond, "latency per request on the link to the origin")
	flagBW        = flag.Int64("fleet.origin-bw", 100e6/8, "bytes/s of the link to the origin (0: unshaped)")
	flagMRTT      = flag.Duration("fleet.mirror-rtt", time.Millisecond, "latency per request on the link to the mirror")
	flagOut       = flag.String("fleet.out", "firststart.json", "where the figures go")
	flagModes     = flag.String("fleet.modes", "direct,mirror-cold,mirror+prediction,mirror-warm,p2p", "modes to measure, comma-separated")
	flagSeedDelay = flag.Duration("fleet.seed-delay", 10*time.Second, "p2p: the canary's background fill starts this long after a blob opens (bdd's cache.background_delay)")
	flagSeedRate  = flag.Int64("fleet.seed-rate", 16<<20, "p2p: the canary's background fill rate, bytes/s (bdd's cache.background_rate)")
	flagMerge     = flag.Bool("fleet.merge", false, "keep the modes -fleet.out holds already and replace only those measured")
)

// TestFirstStart measures one node's start against a far origin (-fleet.origin-rtt,
// -fleet.origin-bw) with and without a near zone mirror, cold, warm, and warmed on the
// manifest GET by mirrorwarm, and from IPFS peers after a canary seeded the image (p2p_test.go). A start is the node fetching the manifest and config, then
// reading the trace's ranges in first-read order, one at a time, through obd's fetcher with
// bdd's settings (16 KiB fill units): the reads of a lazy start without a trace replay.
// Every run has a fresh zone (origin link, mirror storage) and a fresh node cache.
func TestFirstStart(t *testing.T) {
	if !*runFleet {
		t.Skip("the first-start measurement runs with -fleet (minutes): go test ./bench/fleet -run TestFirstStart -fleet")
	}
	layers, annotations, trace := loadImage(t)
	origin := testregistry.Start(t, testregistry.Options{Auth: testregistry.AuthBasic})
	probe := testzone.Start(t, testzone.Options{Existing: origin})
	img := probe.PushImage(t, "bench/app", "v1", layers, annotations)
	for i := range trace.Blobs {
		trace.Blobs[i].Ref = probe.Ref("bench/app")
	}
	probe.PushTrace(t, img, trace)

	figs := fleetsim.Figures{OriginRTT: *flagRTT, MirrorRTT: *flagMRTT, OriginBW: *flagBW, Modes: map[fleetsim.Mode][]fleetsim.Sample{}}
	if *flagMerge {
		old, err := fleetsim.Load(*flagOut)
		if err != nil {
			t.Fatal(err)
		}
		if old.OriginRTT != figs.OriginRTT || old.OriginBW != figs.OriginBW || old.MirrorRTT != figs.MirrorRTT {
			t.Fatalf("-fleet.merge: %s was measured on other links (origin %v, %d bytes/s; mirror %v)", *flagOut, old.OriginRTT, old.OriginBW, old.MirrorRTT)
		}
		figs.Modes = old.Modes
	}
	for _, l := range img.Layers {
		figs.ImageBytes += l.Size
	}
	for _, b := range trace.Blobs {
		for _, r := range b.Ranges {
			figs.TraceBytes += r.Len
		}
	}
	figs.Note = fmt.Sprintf("image %s (%d layers, %d bytes), trace %s (%d bytes); origin link %v per request, %d bytes/s; mirror link %v; "+
		"a start fetches manifest and config, then reads the trace's ranges in first-read order one at a time through remotefetch (16 KiB units)",
		*flagImage, len(img.Layers), figs.ImageBytes, *flagTrace, figs.TraceBytes, *flagRTT, *flagBW, *flagMRTT)

	var modes []fleetsim.Mode
	for m := range strings.SplitSeq(*flagModes, ",") {
		mode := fleetsim.Mode(strings.TrimSpace(m))
		if !slices.Contains([]fleetsim.Mode{fleetsim.Direct, fleetsim.MirrorCold, fleetsim.Predicted, fleetsim.MirrorWarm, fleetsim.P2P}, mode) {
			t.Fatalf("-fleet.modes: unknown mode %q", m)
		}
		modes = append(modes, mode)
		delete(figs.Modes, mode)
		if mode == fleetsim.P2P {
			delete(figs.Modes, fleetsim.P2PSeed)
		}
	}
	logSample := func(run int, mode fleetsim.Mode, s fleetsim.Sample) {
		figs.Modes[mode] = append(figs.Modes[mode], s)
		t.Logf("run %d %-18s start %6.2fs  origin %6.1f MiB in %3d GETs  node %5.1f MiB", run, mode, s.Start.Seconds(),
			float64(s.OriginBytes)/(1<<20), s.OriginGets, float64(s.NodeBytes)/(1<<20))
	}
	for run := range *flagRuns {
		for _, mode := range modes {
			if mode == fleetsim.P2P {
				t.Run(fmt.Sprintf("p2p-%d", run), func(t *testing.T) {
					seed, s := measureP2P(t, origin, img, layers, trace)
					logSample(run, fleetsim.P2PSeed, seed)
					logSample(run, mode, s)
				})
				continue
			}
			logSample(run, mode, measure(t, origin, img, trace, mode))
		}
	}
	if err := figs.Save(*flagOut); err != nil {
		t.Fatal(err)
	}
}

// measure runs one start in a fresh zone around origin.
func measure(t *testing.T, origin *testregistry.Registry, img testzone.Image, trace blocktrace.Trace, mode fleetsim.Mode) fleetsim.Sample {
	var warmer atomic.Pointer[mirrorwarm.Warmer]
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if wm := warmer.Load(); wm != nil {
			wm.ServeHTTP(w, r)
			return
		}
		io.Copy(io.Discard, r.Body)
	}))
	defer hook.Close()
	z := testzone.Start(t, testzone.Options{Existing: origin, Notify: []string{hook.URL}})
	if mode == fleetsim.Predicted {
		w, err := mirrorwarm.New(mirrorwarm.Options{Mirror: z.Mirror.Host, DockerConfig: z.MirrorConfig(t), Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		warmer.Store(w)
	}
	if mode == fleetsim.MirrorWarm {
		for _, l := range img.Layers {
			z.Warm(t, img.Repo, l.Digest)
		}
	}
	z.OriginLink.SetShaping(faultproxy.Shaping{Latency: *flagRTT, Bandwidth: *flagBW})
	z.MirrorLink.SetShaping(faultproxy.Shaping{Latency: *flagMRTT})
	hostsDir := z.HostsDir
	if mode == fleetsim.Direct {
		hostsDir = ""
	}
	f, err := remotefetch.New(remotefetch.Options{CacheDir: t.TempDir(), FillUnit: 16 << 10, HostsDir: hostsDir,
		DockerConfig: z.NodeConfig(t, true), BackgroundDelay: -1, ReadTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	originBytes, originGets := origin.BlobBytes(), origin.BlobGets()
	took, nodeBytes := startImage(t, f, z.Ref(img.Repo), img, trace, nil)
	if mode == fleetsim.Predicted {
		// The warming goes on after the start: count its egress too.
		w := warmer.Load()
		for deadline := time.Now().Add(5 * time.Minute); w.Stats().Blobs+w.Stats().Errors < int64(len(img.Layers)) && w.Stats().Errors == 0; {
			if time.Now().After(deadline) {
				t.Fatalf("the warmer did not finish: %+v", w.Stats())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return fleetsim.Sample{Start: took, OriginBytes: origin.BlobBytes() - originBytes, OriginGets: origin.BlobGets() - originGets, NodeBytes: nodeBytes}
}

// startImage runs one start on f: the manifest and config of the image in repository ref,
// then the trace's ranges in first-read order, one at a time, each blob opened with what
// opts gives for it, left open. It returns how long that took and the bytes f fetched for the
// blobs.
func startImage(t *testing.T, f *remotefetch.Fetcher, repo string, img testzone.Image, trace blocktrace.Trace,
	opts func(digest.Digest) []remotefetch.OpenOption) (time.Duration, int64) {
	if opts == nil {
		opts = func(digest.Digest) []remotefetch.OpenOption { return nil }
	}
	start := time.Now()
	ctx := t.Context()
	ref := repo + ":" + img.Tag
	resolver := f.Resolver()
	name, desc, err := resolver.Resolve(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	fetcher, err := resolver.Fetcher(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	var man ocispec.Manifest
	if err := json.Unmarshal(fetchAll(t, fetcher, desc), &man); err != nil {
		t.Fatal(err)
	}
	fetchAll(t, fetcher, man.Config)
	type read struct {
		b *remotefetch.Blob
		r blocktrace.Range
	}
	var reads []read
	for _, tb := range trace.Blobs {
		b, err := f.Open(ctx, ref, tb.Digest, tb.Size, opts(tb.Digest)...)
		if err != nil {
			t.Fatal(err)
		}
		// Open until f closes (or the test ends): background fill, where f has it, goes on.
		t.Cleanup(func() { b.Close() })
		for _, r := range tb.Ranges {
			reads = append(reads, read{b, r})
		}
	}
	slices.SortStableFunc(reads, func(a, b read) int { return blocktrace.CompareFirst(a.r, b.r) })
	var nodeBytes int64
	for _, rd := range reads {
		buf := make([]byte, rd.r.Len)
		if _, err := rd.b.ReadAt(buf, rd.r.Off); err != nil {
			t.Fatalf("read %s %d+%d: %v", rd.b.Digest(), rd.r.Off, rd.r.Len, err)
		}
	}
	took := time.Since(start)
	for _, tb := range trace.Blobs {
		b, err := f.Open(ctx, ref, tb.Digest, tb.Size, opts(tb.Digest)...)
		if err != nil {
			t.Fatal(err)
		}
		nodeBytes += int64(b.Stats().BytesFetched)
		b.Close()
	}
	return took, nodeBytes
}

// loadImage reads the overlaybd image's layers from its OCI layout and the start trace.
func loadImage(t *testing.T) (layers [][]byte, annotations []map[string]string, trace blocktrace.Trace) {
	t.Helper()
	dir, tag, _ := strings.Cut(*flagImage, ":")
	blob := func(d string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, "blobs", strings.Replace(d, ":", "/", 1)))
		if err != nil {
			t.Fatalf("%v (build the image with scripts/mkdedupimages.sh and obd convert)", err)
		}
		return b
	}
	var idx ocispec.Index
	if err := json.Unmarshal(readFile(t, filepath.Join(dir, "index.json")), &idx); err != nil {
		t.Fatal(err)
	}
	var m ocispec.Manifest
	for _, d := range idx.Manifests {
		if d.Annotations[ocispec.AnnotationRefName] == tag {
			if err := json.Unmarshal(blob(d.Digest.String()), &m); err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(m.Layers) == 0 {
		t.Fatalf("%s: no image tagged %q with layers", dir, tag)
	}
	for _, l := range m.Layers {
		layers = append(layers, blob(l.Digest.String()))
		annotations = append(annotations, l.Annotations)
	}
	trace, err := blocktrace.Decode(readFile(t, *flagTrace))
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range trace.Blobs {
		if !slices.ContainsFunc(m.Layers, func(l ocispec.Descriptor) bool { return l.Digest == b.Digest }) {
			t.Fatalf("trace %s names blob %s, not a layer of %s (convert with the options the trace was recorded on)", *flagTrace, b.Digest, *flagImage)
		}
	}
	return layers, annotations, trace
}

// fetchAll reads a manifest or config through a containerd fetcher.
func fetchAll(t *testing.T, f remotes.Fetcher, desc ocispec.Descriptor) []byte {
	t.Helper()
	rc, err := f.Fetch(t.Context(), desc)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
