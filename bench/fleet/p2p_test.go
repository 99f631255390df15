package fleet

import (
	"bytes"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/obdproject/obd/blocktrace"
	"github.com/obdproject/obd/fleetsim"
	"github.com/obdproject/obd/imagelabels"
	"github.com/obdproject/obd/internal/faultproxy"
	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/internal/testregistry"
	"github.com/obdproject/obd/internal/testzone"
	"github.com/obdproject/obd/ipfsnode"
	"github.com/obdproject/obd/remotefetch"
)

// measureP2P measures peer-to-peer starts through IPFS (kubo) against the far origin: a
// canary node starts the image from the origin with bdd's background fill (by default after
// 10 s, at 16 MiB/s: -fleet.seed-delay, -fleet.seed-rate) until it holds every layer whole and has added it to its IPFS node (seed: from
// its start to then, and the origin's egress for all of it); then a second node, whose IPFS
// node is a peer of the canary's, starts the image through its own gateway (the sample).
// Both nodes' IPFS nodes are near each other, unshaped: peers in one zone.
func measureP2P(t *testing.T, origin *testregistry.Registry, img testzone.Image, layers [][]byte, trace blocktrace.Trace) (seed, node fleetsim.Sample) {
	z := testzone.Start(t, testzone.Options{Existing: origin})
	z.OriginLink.SetShaping(faultproxy.Shaping{Latency: *flagRTT, Bandwidth: *flagBW})
	canaryIPFS := testenv.StartKubo(t, testenv.KuboOptions{})
	nodeIPFS := testenv.StartKubo(t, testenv.KuboOptions{})
	nodeIPFS.Connect(t, canaryIPFS)

	client, err := ipfsnode.NewClient(canaryIPFS.API)
	if err != nil {
		t.Fatal(err)
	}
	type pin struct {
		cid   string
		table digest.Digest
		off   int64
	}
	pins := map[digest.Digest]pin{}
	for i, l := range img.Layers {
		table, off, err := imagelabels.ParseRangeTable(l.Annotations[imagelabels.RangeTable], l.Annotations[imagelabels.RangeTableOffset], l.Size)
		if err != nil || table == "" {
			t.Fatalf("layer %s: no range table (%v): only verified layers are read through IPFS", l.Digest, err)
		}
		cid, err := client.Add(t.Context(), bytes.NewReader(layers[i]), false) // named, not stored
		if err != nil {
			t.Fatal(err)
		}
		pins[l.Digest] = pin{cid, table, off}
	}
	opts := func(d digest.Digest) []remotefetch.OpenOption {
		p := pins[d]
		return []remotefetch.OpenOption{remotefetch.WithRangeTable(p.table, p.off), remotefetch.WithIPFS(p.cid)}
	}
	fetcher := func(k *testenv.Kubo, background time.Duration) *remotefetch.Fetcher {
		f, err := remotefetch.New(remotefetch.Options{CacheDir: t.TempDir(), FillUnit: 16 << 10,
			DockerConfig: z.NodeConfig(t, true), BackgroundDelay: background, BackgroundRate: *flagSeedRate, ReadTimeout: time.Minute,
			IPFS: remotefetch.IPFSOptions{Gateway: k.Gateway, API: k.API}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}

	// The canary: the blobs stay open (as on a node running the image) so background fill
	// completes them.
	before, beforeGets := origin.BlobBytes(), origin.BlobGets()
	canary := fetcher(canaryIPFS, *flagSeedDelay)
	begin := time.Now()
	started, canaryBytes := startImage(t, canary, z.Ref(img.Repo), img, trace, opts)
	for deadline := time.Now().Add(10 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		all := true
		for _, p := range pins {
			all = all && canaryIPFS.Pinned(p.cid)
		}
		if all {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the canary never added the whole image to its IPFS node")
		}
	}
	seed = fleetsim.Sample{Start: time.Since(begin), OriginBytes: origin.BlobBytes() - before,
		OriginGets: origin.BlobGets() - beforeGets, NodeBytes: canaryBytes}
	t.Logf("canary: start %.2fs, whole and in IPFS after %.2fs", started.Seconds(), seed.Start.Seconds())

	before, beforeGets = origin.BlobBytes(), origin.BlobGets()
	took, nodeBytes := startImage(t, fetcher(nodeIPFS, -1), z.Ref(img.Repo), img, trace, opts)
	return seed, fleetsim.Sample{Start: took, OriginBytes: origin.BlobBytes() - before,
		OriginGets: origin.BlobGets() - beforeGets, NodeBytes: nodeBytes}
}
