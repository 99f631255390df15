package snapshotter

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/obdproject/obd/imagelabels"
	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/internal/testregistry"
	"github.com/obdproject/obd/ipfsnode"
	"github.com/obdproject/obd/rangetable"
)

// p2pNode is one node of the peer-to-peer test: in a network namespace, its own kubo and bdd
// (which reads layers through that kubo's gateway); beside them, its own snapshotter and
// containerd, which pull manifests and configs and start containers on bdd's devices.
type p2pNode struct {
	kubo  *testenv.Kubo
	stack *bddStack
}

// TestE2EP2PThreeNodes is the peer-to-peer path with every real part: three nodes, each with
// containerd, the snapshotter, bdd and kubo (bdd and kubo in a network namespace of their
// own, in one private IPFS swarm), and one registry. The image's layer carries its range table
// and its ipfs://<CID> (as obd convert --ipfs-api writes them). Node 1 runs the image from the
// registry and seeds the layer once it holds it whole; nodes 2 and 3 then run it together,
// reading the layer from their peers. The registry's blob egress for the three nodes stays
// below 1.5x one node's.
func TestE2EP2PThreeNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: three nodes of containerd, snapshotter, bdd and kubo")
	}
	requireOverlay(t)
	nw := testenv.StartNet(t, 3)
	reg := testregistry.Start(t, testregistry.Options{Listen: nw.HostIP + ":0"})
	hostsDir := reg.HostsDir(t)

	// The image: busybox and 8 MiB of random data, its overlaybd blob with a range table.
	data := make([]byte, 8<<20)
	rng := rand.New(rand.NewPCG(24, 3))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	sum := md5.Sum(data)
	wantMD5 := hex.EncodeToString(sum[:])
	plain := testenv.BuildBusyboxImage(t, testenv.WithDataFile("blob", data))
	payload := overlaybdBlob(t, plain.RootFS)
	tb, err := rangetable.NewBuilder(rangetable.DefaultChunk)
	if err != nil {
		t.Fatal(err)
	}
	tb.Write(payload)
	table := tb.Table()
	blob := append(payload, table...)
	repo := "obdtest/p2p"
	blobDigest := reg.PushBlob(t, repo, blob)

	nodes := make([]*p2pNode, len(nw.Nodes))
	for i, n := range nw.Nodes {
		k := testenv.StartKubo(t, testenv.KuboOptions{NetNS: n.NS, SwarmIP: n.IP})
		b := testenv.StartBDD(t, testenv.WithNetNS(n.NS),
			testenv.WithConfig(fmt.Sprintf("[ipfs]\ngateway = %q\napi = %q\nwait = \"3s\"\n", k.Gateway, k.API)),
			testenv.WithRegistryConfig(fmt.Sprintf("certs_dir = %q\nread_timeout = \"60s\"\n", hostsDir)))
		nodes[i] = &p2pNode{kubo: k, stack: startBDDStackWith(t, b)}
	}
	nodes[1].kubo.Connect(t, nodes[0].kubo)
	nodes[2].kubo.Connect(t, nodes[0].kubo)
	nodes[2].kubo.Connect(t, nodes[1].kubo)

	path := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(path, blob, 0o600); err != nil {
		t.Fatal(err)
	}
	cid := nodes[0].kubo.Run(t, "add", "-q", "--only-hash", "--cid-version", "1", path) // named, not stored
	img := testenv.BuildBusyboxImage(t, testenv.WithDataFile("blob", data), testenv.WithLayerAnnotations(map[string]string{
		imagelabels.BlobDigest:       blobDigest.String(),
		imagelabels.BlobSize:         strconv.Itoa(len(blob)),
		imagelabels.RangeTable:       digest.FromBytes(table).String(),
		imagelabels.RangeTableOffset: strconv.Itoa(len(payload)),
		imagelabels.IPFSURL:          ipfsnode.Scheme + cid,
	}))
	ref := reg.Host + "/" + repo + ":obd"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, testenv.Bin(t, "skopeo"), "copy", "--preserve-digests", "--dest-tls-verify=false",
		"oci:"+img.Layout+":"+img.Tag, "docker://"+ref).CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy: %v\n%s", err, out)
	}

	// A node runs the image and goes on running it: its device stays attached, so background
	// fill completes the layer, which bdd then adds to the node's IPFS.
	run := func(n *p2pNode) time.Duration {
		begin := time.Now()
		n.stack.nerdctl(t, "pull", "--quiet", ref)
		n.stack.nerdctl(t, "run", "-d", "--name", "app", "--net", "none", ref, "sleep", "600")
		t.Cleanup(func() { n.stack.ctrd.Nerdctl(t, "rm", "-f", "app") })
		out := n.stack.nerdctl(t, "exec", "app", "md5sum", "/data/blob")
		if !strings.HasPrefix(out, wantMD5) {
			t.Errorf("md5sum /data/blob in the container = %q, want %s", out, wantMD5)
		}
		return time.Since(begin)
	}
	seeded := func(n *p2pNode, name string) {
		for deadline := time.Now().Add(3 * time.Minute); !n.kubo.Pinned(cid); time.Sleep(200 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: bdd never added the layer to its IPFS node\n%s", name, n.stack.bdd.Logs())
			}
		}
	}

	first := run(nodes[0])
	seeded(nodes[0], "node 1")
	egress1 := reg.BlobBytes()
	var wg sync.WaitGroup
	took := make([]time.Duration, 2)
	for i, n := range nodes[1:] {
		wg.Go(func() { took[i] = run(n) })
	}
	wg.Wait()
	for i, n := range nodes[1:] {
		seeded(n, fmt.Sprintf("node %d", i+2)) // their background fills are done: nothing more to fetch
	}
	egress := reg.BlobBytes()
	t.Logf("layer %d bytes; registry blob egress: node 1 %d bytes (pull and run %v), nodes 2 and 3 %d bytes (%v, %v); three nodes %.2fx one",
		len(blob), egress1, first.Round(time.Millisecond), egress-egress1, took[0].Round(time.Millisecond),
		took[1].Round(time.Millisecond), float64(egress)/float64(egress1))
	if egress1 < int64(len(blob)) {
		t.Fatalf("node 1 got %d bytes from the registry, less than the %d-byte layer it holds whole", egress1, len(blob))
	}
	if float64(egress) >= 1.5*float64(egress1) {
		t.Fatalf("three nodes took %d bytes from the registry, %.2fx one node's %d; want < 1.5x", egress, float64(egress)/float64(egress1), egress1)
	}
}
