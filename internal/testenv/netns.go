package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os/exec"
	"strings"
	"testing"
)

// Net is a small network of namespaces on this machine, private to one test: a bridge in the
// test's own namespace (the "host", where registries listen) and one network namespace per
// node, each with a veth on the bridge and an address of one /24. Nodes reach each other and
// the host; nothing is routed beyond the /24.
type Net struct {
	HostIP string // the bridge's address, e.g. 10.213.7.254
	Nodes  []NetNode
}

// NetNode is one namespace of a Net.
type NetNode struct {
	NS string // name under /run/netns (ip netns)
	IP string
}

// NetNSPath is the file of the network namespace name, for nsenter --net.
func NetNSPath(name string) string { return "/run/netns/" + name }

// StartNet makes a Net of n nodes (at most 200), removed when t ends. It needs root and
// iproute2, and ends the test as a missing facility without them.
func StartNet(t testing.TB, n int) *Net {
	t.Helper()
	RequireRoot(t)
	Bin(t, "ip")
	Bin(t, "nsenter")
	var id [3]byte
	if _, err := rand.Read(id[:]); err != nil {
		t.Fatal(err)
	}
	tag := hex.EncodeToString(id[:2]) // names stay within IFNAMSIZ: "obdbr" + 4 + "v" + 3
	subnet := fmt.Sprintf("10.%d.%d", 200+int(id[0])%50, id[2])
	bridge := "obdbr" + tag
	net := &Net{HostIP: subnet + ".254"}
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("testenv: ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	t.Cleanup(func() {
		for _, node := range net.Nodes {
			_ = exec.Command("ip", "netns", "del", node.NS).Run() // takes its veth pair along
		}
		_ = exec.Command("ip", "link", "del", bridge).Run()
	})
	ip("link", "add", bridge, "type", "bridge")
	ip("addr", "add", net.HostIP+"/24", "dev", bridge)
	ip("link", "set", bridge, "up")
	for i := range n {
		node := NetNode{NS: fmt.Sprintf("obdn%s-%d", tag, i+1), IP: fmt.Sprintf("%s.%d", subnet, i+1)}
		ip("netns", "add", node.NS)
		net.Nodes = append(net.Nodes, node)
		veth := fmt.Sprintf("obdv%s%d", tag, i+1)
		ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", node.NS)
		ip("link", "set", veth, "master", bridge, "up")
		ip("-n", node.NS, "addr", "add", node.IP+"/24", "dev", "eth0")
		ip("-n", node.NS, "link", "set", "eth0", "up")
		ip("-n", node.NS, "link", "set", "lo", "up")
	}
	return net
}
