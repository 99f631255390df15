package bdd_test

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/internal/faultproxy"
	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/internal/testzone"
	"github.com/obdproject/obd/zfile"
)

// zoneNode is a bdd on a node of a zone: hosts.toml lists the mirror first, the Docker config
// holds the zone's and the origin's credentials.
func zoneNode(t *testing.T, z *testzone.Zone, readTimeout string) *daemon {
	t.Helper()
	return &daemon{t: t, BDD: testenv.StartBDD(t, testenv.WithBinary(bddBinary),
		testenv.WithDockerConfig(z.NodeConfig(t, true)),
		testenv.WithRegistryConfig(fmt.Sprintf("certs_dir = %q\nread_timeout = %q\n", z.HostsDir, readTimeout)))}
}

// zoneLayers makes the three lz4 layer blobs of an ext4 image of a random tree.
func zoneLayers(t *testing.T, seed uint64) (tree string, blobs [][]byte) {
	t.Helper()
	tree, img := ext4Image(t, seed, 120, 64<<20)
	for _, p := range splitImage(t, img, 3, &zfile.Options{Algorithm: zfile.LZ4}, true) {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		blobs = append(blobs, data)
	}
	return tree, blobs
}

// pushZoneImage pushes layer blobs to the zone's origin, as repo.
func pushZoneImage(t *testing.T, z *testzone.Zone, repo string, blobs [][]byte) (layers []*bddv1.Layer, digests []digest.Digest) {
	t.Helper()
	for _, data := range blobs {
		d := z.Origin.PushBlob(t, repo, data)
		digests = append(digests, d)
		layers = append(layers, &bddv1.Layer{Source: &bddv1.Layer_Blob{Blob: &bddv1.RemoteBlob{
			Ref: z.Ref(repo), Digest: d.String(), Size: int64(len(data))}}})
	}
	return layers, digests
}

// TestZoneMirror runs bdd on zone nodes: the first node's reads miss the mirror and come from
// the origin in ranges; once the mirror holds the image, a second node reads it from the
// mirror alone, and goes on doing so after the origin has gone away.
func TestZoneMirror(t *testing.T) {
	requireBlockFacilities(t)
	z := testzone.Start(t, testzone.Options{})
	tree, blobs := zoneLayers(t, 11)
	layers, digests := pushZoneImage(t, z, "obd/app", blobs)
	want := treeSums(t, tree)

	node1 := zoneNode(t, z, "20s")
	dev := node1.attach(&bddv1.AttachRequest{Layers: layers, ReadOnly: true, Transport: bddv1.Transport_TRANSPORT_FUSE})
	compareSums(t, want, treeSums(t, mount(t, dev.GetDevicePath(), true)))
	if z.Origin.PartialBlobGets() == 0 || z.MirrorLink.Requests() == 0 {
		t.Fatalf("cold mirror: origin range GETs %d, mirror requests %d; want both", z.Origin.PartialBlobGets(), z.MirrorLink.Requests())
	}

	for _, d := range digests {
		z.Warm(t, "obd/app", d)
	}
	originGets, mirrorRanges := z.Origin.BlobGets(), z.Mirror.PartialBlobGets()
	node2 := zoneNode(t, z, "20s")
	dev2 := node2.attach(&bddv1.AttachRequest{Layers: layers, ReadOnly: true, Transport: bddv1.Transport_TRANSPORT_FUSE})
	mnt2 := mount(t, dev2.GetDevicePath(), true)
	files := sortedFiles(want)
	half := files[:len(files)/2]
	for _, f := range half {
		if _, err := os.ReadFile(filepath.Join(mnt2, f)); err != nil {
			t.Fatal(err)
		}
	}
	z.OriginLink.Close() // the origin goes away mid-start
	compareSums(t, want, treeSums(t, mnt2))
	if got := z.Origin.BlobGets() - originGets; got != 0 {
		t.Errorf("a node read %d blob ranges from the origin although the mirror holds the image", got)
	}
	if z.Mirror.PartialBlobGets() == mirrorRanges {
		t.Errorf("the mirror served no range of the image it holds")
	}
}

// TestZoneOriginGoneMidStart: the origin goes away (refuses connections, or hangs) after a
// node attached an image the mirror does not hold: every read of a file not yet fetched fails
// within the read deadline instead of hanging, and bdd goes on serving.
func TestZoneOriginGoneMidStart(t *testing.T) {
	requireBlockFacilities(t)
	// Long enough for the attach, before the cut, on a loaded host: the cold mirror answers
	// only once it has asked the origin.
	const readTimeout = 3 * time.Second
	tree, blobs := zoneLayers(t, 12)
	files := sortedFiles(treeSums(t, tree))
	for _, tc := range []struct {
		name string
		cut  func(*testzone.Zone)
	}{
		{"refused", func(z *testzone.Zone) { z.OriginLink.Close() }},
		{"hung", func(z *testzone.Zone) { z.OriginLink.SetShaping(faultproxy.Shaping{Latency: time.Hour}) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			z := testzone.Start(t, testzone.Options{})
			layers, _ := pushZoneImage(t, z, "obd/app", blobs)
			node := zoneNode(t, z, readTimeout.String())
			// Three tries: what the test checks comes after the attach.
			dev := node.attachTries(&bddv1.AttachRequest{Layers: layers, ReadOnly: true, Transport: bddv1.Transport_TRANSPORT_FUSE}, 3)
			mnt := mount(t, dev.GetDevicePath(), true)
			tc.cut(z)
			failed := 0
			for _, f := range files[len(files)-1:] {
				start := time.Now()
				err := readWithin(filepath.Join(mnt, f), 4*readTimeout+10*time.Second)
				took := time.Since(start)
				if errors.Is(err, errHung) {
					t.Fatalf("read of %s with the origin gone: no answer after %v\n%s", f, took, node.Logs())
				}
				if err != nil {
					failed++
				}
				t.Logf("read %s: %v after %v", f, err, took.Round(time.Millisecond))
			}
			if failed == 0 {
				t.Errorf("every read succeeded with the origin gone and a cold mirror")
			}
			if _, err := node.Client.List(node.ctx(), &bddv1.ListRequest{}); err != nil {
				t.Fatalf("bdd stopped answering: %v", err)
			}
		})
	}
}

var errHung = errors.New("read hung")

// readWithin reads a file whole, giving up (errHung) after d.
func readWithin(path string, d time.Duration) error {
	done := make(chan error, 1)
	go func() {
		f, err := os.Open(path)
		if err == nil {
			_, err = io.Copy(io.Discard, f)
			f.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		return errHung
	}
}

// sortedFiles lists the regular files of a treeSums result, largest names last.
func sortedFiles(sums map[string]string) []string {
	var files []string
	for f := range sums {
		files = append(files, f)
	}
	sort.Strings(files)
	return files
}
