package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Kubo is an IPFS node (kubo's `ipfs daemon`, built by scripts/build-kubo.sh) private to one
// test: its own repo (IPFS_PATH) from kubo's "test" profile, so no public bootstrap peers, no
// mDNS, no AutoConf, and its RPC API and gateway on 127.0.0.1 with random ports. Its swarm
// listens where KuboOptions say; nodes find each other only through Connect: a private swarm.
type Kubo struct {
	Repo    string // IPFS_PATH
	API     string // RPC API, http://127.0.0.1:port
	Gateway string // HTTP gateway, http://127.0.0.1:port
	binary  string
	netns   string
}

// KuboOptions adjust the node StartKubo runs.
type KuboOptions struct {
	// NetNS runs the daemon (and the CLI of Run) in this network namespace (nsenter --net);
	// "" = the test's own. The API and gateway listen on that namespace's 127.0.0.1.
	NetNS string
	// SwarmIP is the address the swarm listens on (TCP, a random port); default 127.0.0.1.
	SwarmIP string
}

// StartKubo initializes a repo in t.TempDir() and runs the daemon until t ends.
func StartKubo(t testing.TB, opts KuboOptions) *Kubo {
	t.Helper()
	k := &Kubo{Repo: filepath.Join(t.TempDir(), "ipfs"), binary: Bin(t, "ipfs"), netns: opts.NetNS}
	if opts.SwarmIP == "" {
		opts.SwarmIP = "127.0.0.1"
	}
	k.Run(t, "init", "--profile", "test")
	k.Run(t, "config", "--json", "Addresses.Swarm", fmt.Sprintf(`["/ip4/%s/tcp/0"]`, opts.SwarmIP))
	// Bitswap sends its want-haves to every connected peer: with no routing between the test's
	// nodes, that broadcast is how one node finds the blocks another holds.
	k.Run(t, "config", "--json", "Internal.Bitswap", `{"BroadcastControl":{"Enable":false}}`)
	binary, args := k.command("daemon")
	StartProcess(t, filepath.Join(k.Repo, "daemon.log"), func() error { return k.readEndpoints() }, binary, args...)
	return k
}

// command is the program and arguments that run `ipfs args...` on this node's repo, inside
// its network namespace.
func (k *Kubo) command(args ...string) (string, []string) {
	full := append([]string{"IPFS_PATH=" + k.Repo, k.binary}, args...)
	if k.netns == "" {
		return "env", full
	}
	return "nsenter", append([]string{"--net=" + NetNSPath(k.netns), "env"}, full...)
}

// readEndpoints reads the API and gateway addresses the daemon writes into its repo once it
// serves them.
func (k *Kubo) readEndpoints() error {
	api, err := os.ReadFile(filepath.Join(k.Repo, "api"))
	if err != nil {
		return err
	}
	gw, err := os.ReadFile(filepath.Join(k.Repo, "gateway"))
	if err != nil {
		return err
	}
	// The api file holds a multiaddr: /ip4/127.0.0.1/tcp/PORT.
	parts := strings.Split(strings.TrimSpace(string(api)), "/")
	if len(parts) != 5 || parts[1] != "ip4" || parts[3] != "tcp" {
		return fmt.Errorf("testenv: kubo api file %q: not /ip4/HOST/tcp/PORT", api)
	}
	if !strings.HasPrefix(string(gw), "http://") {
		return errors.New("testenv: kubo gateway file is not an http:// URL")
	}
	k.API = "http://" + parts[2] + ":" + parts[4]
	k.Gateway = strings.TrimSpace(string(gw))
	return nil
}

// Run runs the ipfs CLI on this node (through its daemon once that runs) and returns its
// output; it fails the test on error.
func (k *Kubo) Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := k.TryRun(args...)
	if err != nil {
		t.Fatalf("testenv: ipfs %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// TryRun is Run that returns the error.
func (k *Kubo) TryRun(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	binary, full := k.command(args...)
	out, err := exec.CommandContext(ctx, binary, full...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// Addrs are the swarm multiaddrs of the node, each ending in /p2p/<peer ID>.
func (k *Kubo) Addrs(t testing.TB) []string {
	t.Helper()
	return strings.Fields(k.Run(t, "id", "-f", "<addrs>\n"))
}

// Connect makes the node a peer of other: the private swarm's only way of finding peers.
func (k *Kubo) Connect(t testing.TB, other *Kubo) {
	t.Helper()
	for _, a := range other.Addrs(t) {
		k.Run(t, "swarm", "connect", a)
	}
}

// Pinned reports whether the node pins cid (as bdd's seeding of a whole blob does).
func (k *Kubo) Pinned(cid string) bool {
	_, err := k.TryRun("pin", "ls", "--type=recursive", cid)
	return err == nil
}
