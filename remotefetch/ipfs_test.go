package remotefetch

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/internal/testregistry"
	"github.com/obdproject/obd/ipfsnode"
	"github.com/obdproject/obd/rangetable"
)

// testCID is a well-formed CID no gateway of these tests holds.
const testCID = "bafybeiey4h6pdr6wjkphvtrighj6gnxwsl63kaqy5xzx5hpaox3ujxxm4i"

// fakeGateway is an IPFS gateway that answers every range request with what serve says.
func fakeGateway(t *testing.T, serve func(w http.ResponseWriter, r *http.Request)) (url string, requests *atomic.Int64) {
	t.Helper()
	requests = new(atomic.Int64)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		serve(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, requests
}

// A peer is untrusted: whatever the gateway does (serves other bytes, hangs, fails), reads
// return the blob's bytes, from the registry, within the read deadline.
func TestIPFSGatewayIsUntrusted(t *testing.T) {
	payload := randomBytes(21, 6*testUnit+777)
	blob, table, offset := withTable(t, payload, rangetable.DefaultChunk)
	bad := evil(blob)
	for _, c := range []struct {
		name  string
		serve func(w http.ResponseWriter, r *http.Request)
	}{
		{"other bytes", func(w http.ResponseWriter, r *http.Request) {
			http.ServeContent(w, r, "blob", time.Time{}, bytes.NewReader(bad))
		}},
		{"no answer", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }},
		{"gateway timeout", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no providers", http.StatusGatewayTimeout) }},
		{"whole blob of another size", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(bad[:100]) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			reg := testregistry.Start(t, testregistry.Options{})
			dgst := reg.PushBlob(t, "obd/p2p", blob)
			gw, requests := fakeGateway(t, c.serve)
			f := newFetcher(t, Options{ReadTimeout: 20 * time.Second, IPFS: IPFSOptions{Gateway: gw, Wait: 200 * time.Millisecond}})
			b, err := f.Open(t.Context(), reg.Host+"/obd/p2p:v1", dgst, int64(len(blob)), WithRangeTable(table, offset), WithIPFS(testCID))
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			for off := int64(0); off < int64(len(blob)); off += 2 * testUnit {
				if err := checkRead(t, b, blob, off, min(2*testUnit, int64(len(blob))-off)); err != nil {
					t.Fatal(err)
				}
			}
			if requests.Load() == 0 {
				t.Fatal("the gateway was never asked: the test proves nothing")
			}
			if reg.BlobBytes() == 0 {
				t.Fatal("no bytes came from the registry")
			}
		})
	}
}

// A blob without a range table is not read through IPFS: its bytes could be checked only once
// whole.
func TestIPFSNeedsRangeTable(t *testing.T) {
	e := newEnv(t, testregistry.Options{}, 3*testUnit, false)
	gw, requests := fakeGateway(t, func(w http.ResponseWriter, r *http.Request) { http.Error(w, "", http.StatusNotFound) })
	f := newFetcher(t, Options{IPFS: IPFSOptions{Gateway: gw}})
	b, err := f.Open(t.Context(), e.ref, e.dgst, int64(len(e.data)), WithIPFS(testCID))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := checkRead(t, b, e.data, 0, int64(len(e.data))); err != nil {
		t.Fatal(err)
	}
	if n := requests.Load(); n != 0 {
		t.Fatalf("the gateway was asked %d times for a blob without a range table", n)
	}
}

func TestIPFSOptionsAreChecked(t *testing.T) {
	for _, o := range []IPFSOptions{
		{Gateway: "ftp://127.0.0.1:1"},
		{Gateway: "http://127.0.0.1:1/ipfs"},
		{API: "http://127.0.0.1:5001"},
		{Gateway: "http://127.0.0.1:8080", API: "127.0.0.1:5001"},
	} {
		if _, err := New(Options{CacheDir: t.TempDir(), IPFS: o}); err == nil {
			t.Errorf("New accepted IPFS options %+v", o)
		}
	}
	e := newEnv(t, testregistry.Options{}, testUnit, false)
	f := newFetcher(t, Options{})
	if _, err := f.Open(t.Context(), e.ref, e.dgst, int64(len(e.data)), WithIPFS("QmNotAV1CID")); err == nil {
		t.Fatal("Open accepted a malformed CID")
	}
}

// Two IPFS nodes (real kubo daemons in a private swarm) and a registry: the first node reads
// the blob from the registry, holds it whole and adds it to its IPFS; the second reads it
// through its own gateway, which gets the blocks from the first node, not from the registry.
func TestIPFSPeerServesSecondNode(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two IPFS daemons")
	}
	k1 := testenv.StartKubo(t, testenv.KuboOptions{})
	k2 := testenv.StartKubo(t, testenv.KuboOptions{})
	k2.Connect(t, k1)

	payload := randomBytes(22, 3<<20+12345)
	blob, table, offset := withTable(t, payload, rangetable.DefaultChunk)
	reg := testregistry.Start(t, testregistry.Options{})
	dgst := reg.PushBlob(t, "obd/p2p", blob)
	client, err := ipfsnode.NewClient(k1.API)
	if err != nil {
		t.Fatal(err)
	}
	cid, err := client.Add(t.Context(), bytes.NewReader(blob), false) // what the image names
	if err != nil {
		t.Fatal(err)
	}
	if k1.Pinned(cid) {
		t.Fatal("naming the blob stored it: the first node would not need the registry")
	}
	ref := reg.Host + "/obd/p2p:v1"
	metrics := map[*testenv.Kubo]*prometheus.Registry{k1: prometheus.NewRegistry(), k2: prometheus.NewRegistry()}
	node := func(k *testenv.Kubo) *Blob {
		f := newFetcher(t, Options{ReadTimeout: 30 * time.Second, Registerer: metrics[k],
			IPFS: IPFSOptions{Gateway: k.Gateway, API: k.API, Wait: 5 * time.Second}})
		b, err := f.Open(t.Context(), ref, dgst, int64(len(blob)), WithRangeTable(table, offset), WithIPFS(cid))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		if err := checkRead(t, b, blob, 0, int64(len(blob))); err != nil {
			t.Fatal(err)
		}
		return b
	}
	waitPinned := func(k *testenv.Kubo, name string) {
		deadline := time.Now().Add(time.Minute)
		for !k.Pinned(cid) {
			if time.Now().After(deadline) {
				t.Fatalf("%s never added the blob it holds whole to its IPFS", name)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	node(k1)
	first := reg.BlobBytes()
	if first < int64(len(blob)) {
		t.Fatalf("the first node got %d bytes from the registry, less than the %d-byte blob", first, len(blob))
	}
	waitPinned(k1, "the first node")
	node(k2)
	second := reg.BlobBytes() - first
	t.Logf("registry egress: first node %d bytes, second node %d bytes (blob %d)", first, second, len(blob))
	if second != 0 {
		t.Fatalf("the second node got %d bytes from the registry; want all from its peer", second)
	}
	waitPinned(k2, "the second node")
	for _, c := range []struct {
		k          *testenv.Kubo
		name       string
		served     func(float64) bool
		passed     func(float64) bool
		seededWant float64
	}{
		{k1, "first node", func(v float64) bool { return v == 0 }, func(v float64) bool { return v > 0 }, 1},
		{k2, "second node", func(v float64) bool { return v > 0 }, func(v float64) bool { return v == 0 }, 1},
	} {
		served, passed, seeded := counter(t, metrics[c.k], "obd_remotefetch_ipfs_served_total"),
			counter(t, metrics[c.k], "obd_remotefetch_ipfs_passed_total"), counter(t, metrics[c.k], "obd_remotefetch_ipfs_seeded_total")
		if !c.served(served) || !c.passed(passed) || seeded != c.seededWant {
			t.Errorf("%s: IPFS served %v, passed %v, seeded %v", c.name, served, passed, seeded)
		}
	}
}

// counter is the value of the counter name in reg.
func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range families {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// Misses in a row pass the gateway over for longer each time, up to a bound; an answer starts
// over.
func TestIPFSMissesBackOff(t *testing.T) {
	b := &ipfsBlob{}
	var got []time.Duration
	for range 6 {
		got = append(got, b.missed())
	}
	want := []time.Duration{10 * time.Second, 20 * time.Second, 40 * time.Second, 80 * time.Second, 160 * time.Second, 160 * time.Second}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("pass-over times %v, want %v", got, want)
		}
	}
	if !b.skipped() {
		t.Fatal("a blob that missed does not pass the gateway over")
	}
	b.answered()
	if d := b.missed(); d != ipfsMissAvoid {
		t.Fatalf("after an answer a miss passes the gateway over for %v, want %v", d, ipfsMissAvoid)
	}
}

// A gateway that answers with headers and then sends nothing (the peer it was fetching from
// went away) is passed over like one that does not answer: the retry reads from the registry.
func TestIPFSGatewayStallingBodyFallsBack(t *testing.T) {
	payload := randomBytes(23, 4*testUnit)
	blob, table, offset := withTable(t, payload, rangetable.DefaultChunk)
	reg := testregistry.Start(t, testregistry.Options{})
	dgst := reg.PushBlob(t, "obd/p2p", blob)
	gw, requests := fakeGateway(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-%d/%d", len(blob)-1, len(blob)))
		w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
		w.WriteHeader(http.StatusPartialContent)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	f := newFetcher(t, Options{ReadTimeout: 20 * time.Second, StallTimeout: 300 * time.Millisecond,
		IPFS: IPFSOptions{Gateway: gw, Wait: 5 * time.Second}})
	b, err := f.Open(t.Context(), reg.Host+"/obd/p2p:v1", dgst, int64(len(blob)), WithRangeTable(table, offset), WithIPFS(testCID))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := checkRead(t, b, blob, 0, int64(len(blob))); err != nil {
		t.Fatal(err)
	}
	// The table's request and the first read's go out together; after their stalls, no more.
	if n := requests.Load(); n > 2 {
		t.Fatalf("the stalling gateway was asked %d times, want at most twice", n)
	}
}
