package crie2e

import (
	"crypto/md5"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/internal/testregistry"
)

// TestE2ETokenExpiry: a container runs from an image in a registry with bearer tokens; while
// it runs every token the node holds expires (the registry refuses them with a plain
// challenge), and the container's next reads of bytes not yet fetched get a new token with
// the credentials of the pull instead of failing with EIO.
func TestE2ETokenExpiry(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: runs bdd, the snapshotter, containerd with CRI and containers")
	}
	// One file per round: a read in a file fetches the rest of it, and sequential reads fetch
	// ahead by several MiB, so the files read (a-file, c-file: files are laid out in name
	// order) are apart by a larger one nobody reads.
	const rounds = 2
	random := func(seed uint64, n int) []byte {
		b := make([]byte, n)
		r := rand.New(rand.NewPCG(seed, 3))
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b
	}
	files := [][]byte{random(1, 1<<20), random(2, 1<<20)}
	names := []string{"a-file", "c-file"}
	opts := []testenv.ImageOpt{testenv.WithDataFile(names[0], files[0]), testenv.WithDataFile("b-pad", random(3, 24<<20)),
		testenv.WithDataFile(names[1], files[1])}
	pauseReg := testregistry.Start(t, testregistry.Options{})
	reg := testregistry.Start(t, testregistry.Options{Auth: testregistry.AuthToken, Password: secret})
	im := pushImages(t, pauseReg, reg, "obdtest/tokens", opts...)
	_, noConfig := noDockerConfig(t)
	n := startNode(t, nodeOptions{pauseRef: im.pauseRef, criImageProxy: true, bdd: []testenv.BDDOption{noConfig}},
		pauseReg.Host, reg.Host)

	n.crictl.Run(t, "pull", "--creds", reg.Username()+":"+secret, im.obdRef)
	_, id := n.runBusybox(t, "tokens", im.obdRef, im.busyboxMD5)

	for round := range rounds {
		reg.ExpireTokens()
		issued := reg.TokensIssued()
		want := fmt.Sprintf("%x", md5.Sum(files[round]))
		out, err := n.crictl.Try("exec", "-s", id, "md5sum", "/data/"+names[round])
		if err != nil || !strings.HasPrefix(out, want) {
			t.Fatalf("round %d: read after the tokens expired: %q, %v; want md5 %s", round, out, err, want)
		}
		if reg.TokensIssued() == issued {
			t.Fatalf("round %d: no new token issued after expiry: the read did not reach the registry", round)
		}
	}
	checkNoSecret(t, secret, "", n.bdd.Dir, n.dir)
}
