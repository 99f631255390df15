package ipfsnode_test

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/ipfsnode"
)

const goodCID = "bafybeiey4h6pdr6wjkphvtrighj6gnxwsl63kaqy5xzx5hpaox3ujxxm4i"

func TestParseURL(t *testing.T) {
	if cid, err := ipfsnode.ParseURL("ipfs://" + goodCID); err != nil || cid != goodCID {
		t.Fatalf("ParseURL = %q, %v", cid, err)
	}
	for _, bad := range []string{
		"", "ipfs://", "https://" + goodCID, "ipfs://QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG",
		"ipfs://" + strings.ToUpper(goodCID), "ipfs://" + goodCID + "/path", "ipfs://b" + strings.Repeat("a", 200),
		"ipfs://bafy", "ipns://" + goodCID,
	} {
		if _, err := ipfsnode.ParseURL(bad); !errors.Is(err, ipfsnode.ErrBadURL) {
			t.Errorf("ParseURL(%q) = %v, want ErrBadURL", bad, err)
		}
	}
}

func TestFromURLs(t *testing.T) {
	cid, err := ipfsnode.FromURLs([]string{"https://example.com/blob", "ipfs://" + goodCID})
	if err != nil || cid != goodCID {
		t.Fatalf("FromURLs = %q, %v", cid, err)
	}
	if cid, err := ipfsnode.FromURLs([]string{"https://example.com/blob"}); err != nil || cid != "" {
		t.Fatalf("FromURLs without ipfs:// = %q, %v", cid, err)
	}
	if _, err := ipfsnode.FromURLs([]string{"ipfs://nope"}); err == nil {
		t.Fatal("FromURLs accepted a malformed ipfs:// URL")
	}
}

func TestCheckEndpoint(t *testing.T) {
	for _, ok := range []string{"http://127.0.0.1:8080", "https://gw.example:443/"} {
		if _, err := ipfsnode.CheckEndpoint(ok); err != nil {
			t.Errorf("CheckEndpoint(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "127.0.0.1:8080", "http://", "http://h/ipfs", "http://h?x=1", "http://u:p@h", "unix:///run/x"} {
		if _, err := ipfsnode.CheckEndpoint(bad); err == nil {
			t.Errorf("CheckEndpoint(%q) accepted", bad)
		}
	}
}

// Add computes the CID the convention names a blob by: the one `ipfs add --cid-version 1`
// (nerdctl's and stargz's parameters) gives, stored only with pin.
func TestAddMatchesKuboCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an IPFS daemon")
	}
	k := testenv.StartKubo(t, testenv.KuboOptions{})
	data := make([]byte, 1<<20+4321) // several 256 KiB chunks: a DAG, not one block
	r := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	path := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	want := k.Run(t, "add", "-q", "--only-hash", "--cid-version", "1", path)
	c, err := ipfsnode.NewClient(k.API)
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Add(t.Context(), bytes.NewReader(data), false)
	if err != nil || got != want {
		t.Fatalf("Add = %q, %v; the CLI says %q", got, err, want)
	}
	if pinned, err := c.Pinned(t.Context(), got); err != nil || pinned {
		t.Fatalf("after Add without pin: Pinned = %v, %v; want false", pinned, err)
	}
	if got, err = c.Add(t.Context(), bytes.NewReader(data), true); err != nil || got != want {
		t.Fatalf("Add with pin = %q, %v; want %q", got, err, want)
	}
	if pinned, err := c.Pinned(t.Context(), got); err != nil || !pinned {
		t.Fatalf("after Add with pin: Pinned = %v, %v; want true", pinned, err)
	}
	if _, err := c.Pinned(t.Context(), "not a cid"); err == nil {
		t.Fatal("Pinned accepted a malformed CID")
	}
}

func FuzzParseURL(f *testing.F) {
	f.Add("ipfs://" + goodCID)
	f.Add("ipfs://bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy")
	f.Add("ipfs://Qm")
	f.Fuzz(func(t *testing.T, s string) {
		cid, err := ipfsnode.ParseURL(s)
		if err != nil {
			return
		}
		if "ipfs://"+cid != s || ipfsnode.CheckCID(cid) != nil {
			t.Fatalf("ParseURL(%q) = %q", s, cid)
		}
	})
}
