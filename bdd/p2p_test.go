package bdd_test

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/internal/testregistry"
	"github.com/obdproject/obd/ipfsnode"
)

// p2pNode is one node of the peer-to-peer test: a network namespace with its own IPFS node
// (kubo) and bdd, configured to read layers named ipfs://<CID> through that node's gateway.
type p2pNode struct {
	name string
	kubo *testenv.Kubo
	bdd  *daemon
}

// startP2PNode starts kubo and bdd in the namespace of node; hostsDir tells bdd to reach the
// registry over plain HTTP.
func startP2PNode(t *testing.T, node testenv.NetNode, hostsDir string) *p2pNode {
	t.Helper()
	k := testenv.StartKubo(t, testenv.KuboOptions{NetNS: node.NS, SwarmIP: node.IP})
	cfg := fmt.Sprintf("[ipfs]\ngateway = %q\napi = %q\nwait = \"3s\"\n", k.Gateway, k.API)
	d := &daemon{t: t, BDD: testenv.StartBDD(t, testenv.WithBinary(bddBinary), testenv.WithNetNS(node.NS),
		testenv.WithConfig(cfg), testenv.WithRegistryConfig(fmt.Sprintf("certs_dir = %q\nread_timeout = \"60s\"\n", hostsDir)))}
	return &p2pNode{name: node.NS, kubo: k, bdd: d}
}

// start attaches the image, mounts it and reads every file, checking them; it returns how
// long that took.
func (n *p2pNode) start(t *testing.T, layers []*bddv1.Layer, want map[string]string) time.Duration {
	t.Helper()
	begin := time.Now()
	dev := n.bdd.attach(&bddv1.AttachRequest{Layers: layers, ReadOnly: true, Transport: bddv1.Transport_TRANSPORT_FUSE})
	compareSums(t, want, treeSums(t, mount(t, dev.GetDevicePath(), true)))
	return time.Since(begin)
}

// waitSeeded waits until the node's IPFS holds every blob: bdd holds them whole (background
// fill), checked them against their digests and added them.
func (n *p2pNode) waitSeeded(t *testing.T, cids []string) time.Duration {
	t.Helper()
	begin := time.Now()
	deadline := begin.Add(5 * time.Minute)
	for _, cid := range cids {
		for !n.kubo.Pinned(cid) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: bdd never added blob %s to its IPFS node\n%s", n.name, cid, n.bdd.Logs())
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	return time.Since(begin)
}

// TestP2PThreeNodes runs three nodes in network namespaces, each with its own kubo and bdd, in
// a private IPFS swarm, and one registry. The image's layers are named ipfs://<CID> (the CIDs
// only computed, nowhere stored). The first node reads the image from the registry, then
// holds it whole and adds it to its IPFS; the other two start it together and read it from
// their peers: the registry sends the image about once, not three times.
func TestP2PThreeNodes(t *testing.T) {
	requireBlockFacilities(t)
	if testing.Short() {
		t.Skip("three nodes with kubo and bdd each")
	}
	nw := testenv.StartNet(t, 3)
	reg := testregistry.Start(t, testregistry.Options{Listen: nw.HostIP + ":0"})
	hostsDir := reg.HostsDir(t)

	nodes := make([]*p2pNode, len(nw.Nodes))
	for i, node := range nw.Nodes {
		nodes[i] = startP2PNode(t, node, hostsDir)
	}
	nodes[1].kubo.Connect(t, nodes[0].kubo)
	nodes[2].kubo.Connect(t, nodes[0].kubo)
	nodes[2].kubo.Connect(t, nodes[1].kubo)

	tree, blobs := zoneLayers(t, 24)
	want := treeSums(t, tree)
	ref := reg.Host + "/obd/p2p"
	var layers []*bddv1.Layer
	var cids []string
	var imageBytes int64
	for i, data := range blobs {
		tb := appendTable(t, data)
		d := reg.PushBlob(t, "obd/p2p", tb.blob)
		path := filepath.Join(t.TempDir(), fmt.Sprintf("layer%d", i))
		if err := os.WriteFile(path, tb.blob, 0o600); err != nil {
			t.Fatal(err)
		}
		// The CID the image names the layer by: computed, not stored anywhere.
		cid := nodes[0].kubo.Run(t, "add", "-q", "--only-hash", "--cid-version", "1", path)
		if _, err := ipfsnode.ParseURL(ipfsnode.Scheme + cid); err != nil {
			t.Fatal(err)
		}
		cids = append(cids, cid)
		imageBytes += int64(len(tb.blob))
		layers = append(layers, &bddv1.Layer{Source: &bddv1.Layer_Blob{Blob: &bddv1.RemoteBlob{
			Ref: ref, Digest: d.String(), Size: int64(len(tb.blob)), RangeTable: tb.table.String(),
			RangeTableOffset: tb.offset, Urls: []string{ipfsnode.Scheme + cid}}}})
	}

	first := nodes[0].start(t, layers, want)
	firstSeed := nodes[0].waitSeeded(t, cids)
	egress1 := reg.BlobBytes()

	var wg sync.WaitGroup
	took := make([]time.Duration, 2)
	for i, n := range nodes[1:] {
		wg.Go(func() { took[i] = n.start(t, layers, want) })
	}
	wg.Wait()
	for _, n := range nodes[1:] {
		n.waitSeeded(t, cids) // their background fills are done too: nothing more to fetch
	}
	egress := reg.BlobBytes()
	t.Logf("image %d bytes in %d layers; registry egress: node 1 %d bytes (start %v, whole and added to IPFS %v later), "+
		"nodes 2 and 3 %d bytes (starts %v, %v); all three %.2fx one node's",
		imageBytes, len(layers), egress1, first.Round(time.Millisecond), firstSeed.Round(time.Millisecond),
		egress-egress1, took[0].Round(time.Millisecond), took[1].Round(time.Millisecond), float64(egress)/float64(egress1))
	if egress1 < imageBytes {
		t.Fatalf("node 1 got %d bytes from the registry, less than the %d-byte image it holds whole", egress1, imageBytes)
	}
	if float64(egress) >= 1.5*float64(egress1) {
		t.Fatalf("three nodes took %d bytes from the registry, %.2fx one node's %d; want < 1.5x",
			egress, float64(egress)/float64(egress1), egress1)
	}
}
