package remotefetch

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/obdproject/obd/internal/faultproxy"
	"github.com/obdproject/obd/internal/testzone"
)

// zone is a testzone with one random blob of repo obd/test on its origin.
type zone struct {
	*testzone.Zone
	data []byte
	dgst digest.Digest
	ref  string
}

func newZone(t *testing.T, size int) *zone {
	t.Helper()
	z := &zone{Zone: testzone.Start(t, testzone.Options{}), data: randomBytes(uint64(size), size)}
	z.dgst = z.Origin.PushBlob(t, "obd/test", z.data)
	z.ref = z.Ref("obd/test:latest")
	return z
}

// randomReads reads count random 4 KiB ranges of the blob and checks them.
func (z *zone) randomReads(t *testing.T, b *Blob, seed uint64, count int) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 1))
	for range count {
		off := r.Int64N(int64(len(z.data)) - 4096)
		if err := checkRead(t, b, z.data, off, 4096); err != nil {
			t.Fatal(err)
		}
	}
}

// TestZoneMirrorMissGoesToOrigin: ranges of a blob the mirror lacks are read from the origin
// in ranges (the mirror would only stream the whole blob); once the mirror holds the blob, a
// new node reads every range from it and the origin sees no blob request.
func TestZoneMirrorMissGoesToOrigin(t *testing.T) {
	const size = 8 << 20
	z := newZone(t, size)
	f := newFetcher(t, Options{HostsDir: z.HostsDir, DockerConfig: z.NodeConfig(t, true), ReadTimeout: 10 * time.Second})
	b, err := f.Open(t.Context(), z.ref, z.dgst, size)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	z.randomReads(t, b, 1, 20)
	// Each miss asked the mirror would make it stream the whole blob from the origin (and
	// drop it when the node hangs up): after the first, this blob passes the mirror over.
	if got := z.Origin.PartialBlobGets(); got < 10 {
		t.Errorf("%d range GETs reached the origin for 20 random reads the mirror could not serve", got)
	}
	if got := z.MirrorLink.Requests(); got >= 10 {
		t.Errorf("the mirror was asked %d times for 20 random reads of a blob it lacks", got)
	}

	z.Warm(t, "obd/test", z.dgst)
	before, beforeMirror := z.Origin.BlobGets(), z.Mirror.PartialBlobGets()
	node2 := newFetcher(t, Options{HostsDir: z.HostsDir, DockerConfig: z.NodeConfig(t, true), ReadTimeout: 10 * time.Second})
	b2, err := node2.Open(t.Context(), z.ref, z.dgst, size)
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	z.randomReads(t, b2, 2, 20)
	if got := z.Origin.BlobGets() - before; got != 0 {
		t.Errorf("reads of a blob the mirror holds sent %d blob GETs to the origin", got)
	}
	if got := z.Mirror.PartialBlobGets() - beforeMirror; got == 0 {
		t.Errorf("the mirror served no range of the blob it holds")
	}
}

// TestZoneMirrorOnlyCredentials: a node with credentials for the mirror only still reads a
// blob the mirror lacks, through the mirror's whole-blob answer, since the origin refuses it.
func TestZoneMirrorOnlyCredentials(t *testing.T) {
	const size = 1 << 20
	z := newZone(t, size)
	f := newFetcher(t, Options{HostsDir: z.HostsDir, DockerConfig: z.NodeConfig(t, false), ReadTimeout: 10 * time.Second})
	b, err := f.Open(t.Context(), z.ref, z.dgst, size)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	z.randomReads(t, b, 3, 5)
}

// TestZoneMirrorDownOrHung: a mirror that refuses connections or never answers is passed over
// and reads come from the origin within the read deadline; a hung mirror costs its wait once,
// not once per read.
func TestZoneMirrorDownOrHung(t *testing.T) {
	const size = 2 << 20
	for _, tc := range []struct {
		name   string
		break_ func(z *zone)
	}{
		{"hung", func(z *zone) { z.MirrorLink.SetShaping(faultproxy.Shaping{Latency: time.Hour}) }},
		{"down", func(z *zone) { z.MirrorLink.Close() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			z := newZone(t, size)
			z.Warm(t, "obd/test", z.dgst)
			tc.break_(z)
			f := newFetcher(t, Options{HostsDir: z.HostsDir, DockerConfig: z.NodeConfig(t, true), ReadTimeout: 8 * time.Second})
			b, err := f.Open(t.Context(), z.ref, z.dgst, size)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			z.randomReads(t, b, 4, 10)
			if z.Origin.PartialBlobGets() == 0 {
				t.Fatal("no read reached the origin")
			}
			if n := z.MirrorLink.Requests(); n > 1 {
				t.Errorf("the broken mirror was asked %d times, want once before it is passed over", n)
			}
		})
	}
}
