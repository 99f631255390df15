package bddclient

import (
	"context"
	"net"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
)

const goodDigest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// listServer answers List with one device, so that a test sees a real round trip.
type listServer struct {
	bddv1.UnimplementedDaemonServer
}

func (listServer) List(context.Context, *bddv1.ListRequest) (*bddv1.ListResponse, error) {
	return &bddv1.ListResponse{Devices: []*bddv1.Device{{Id: "d1"}}}, nil
}

// TestDialRelativePath: Dial reaches a server on a socket named by a relative path.
func TestDialRelativePath(t *testing.T) {
	dir := t.TempDir()
	l, err := net.Listen("unix", filepath.Join(dir, "bdd.sock"))
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	bddv1.RegisterDaemonServer(srv, listServer{})
	go srv.Serve(l)
	defer srv.Stop()

	t.Chdir(dir)
	client, conn, err := Dial("bdd.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	resp, err := client.List(ctx, &bddv1.ListRequest{})
	if err != nil || len(resp.GetDevices()) != 1 || resp.GetDevices()[0].GetId() != "d1" {
		t.Fatalf("List over the dialled socket = %v, %v", resp, err)
	}
}

func TestParseBlobLayer(t *testing.T) {
	l, err := ParseBlobLayer("127.0.0.1:5000/lib/app@" + goodDigest + ":1234")
	if err != nil {
		t.Fatal(err)
	}
	b := l.GetBlob()
	if b.GetRef() != "127.0.0.1:5000/lib/app" || b.GetDigest() != goodDigest || b.GetSize() != 1234 {
		t.Fatalf("parsed %+v", b)
	}
	if LayerName(l) != "127.0.0.1:5000/lib/app@"+goodDigest {
		t.Errorf("LayerName = %q", LayerName(l))
	}
	l, err = ParseBlobLayer("127.0.0.1:5000/lib/app@" + goodDigest + ":1234#" + goodDigest + "@1000")
	if err != nil || l.GetBlob().GetRangeTable() != goodDigest || l.GetBlob().GetRangeTableOffset() != 1000 || l.GetBlob().GetSize() != 1234 {
		t.Fatalf("parsed %+v (%v)", l.GetBlob(), err)
	}
	for _, bad := range []string{"", "app", "app@" + goodDigest, "app@" + goodDigest + ":x", "@" + goodDigest + ":1",
		"app@sha256:00:5", "app@" + goodDigest + ":0", "a pp@" + goodDigest + ":1",
		"app@" + goodDigest + ":1234#", "app@" + goodDigest + ":1234#" + goodDigest, "app@" + goodDigest + ":1234#" + goodDigest + "@x",
		"app@" + goodDigest + ":1234#" + goodDigest + "@1234", "app@" + goodDigest + ":1234#@5", "app@" + goodDigest + ":1234#sha256:zz@5"} {
		if _, err := ParseBlobLayer(bad); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func TestCheckLayer(t *testing.T) {
	blob := func(ref, dgst string, size int64) *bddv1.Layer {
		return &bddv1.Layer{Source: &bddv1.Layer_Blob{Blob: &bddv1.RemoteBlob{Ref: ref, Digest: dgst, Size: size}}}
	}
	path := func(p string) *bddv1.Layer { return &bddv1.Layer{Source: &bddv1.Layer_Path{Path: p}} }
	tabled := func(table string, off int64) *bddv1.Layer {
		return &bddv1.Layer{Source: &bddv1.Layer_Blob{Blob: &bddv1.RemoteBlob{Ref: "registry.local/app", Digest: goodDigest, Size: 100,
			RangeTable: table, RangeTableOffset: off}}}
	}
	for _, c := range []struct {
		layer *bddv1.Layer
		ok    bool
	}{
		{path("/var/lib/layer.obd"), true},
		{path("layer.obd"), false},
		{&bddv1.Layer{}, false},
		{blob("registry.local/app", goodDigest, 1), true},
		{blob("", goodDigest, 1), false},
		{blob("registry.local/app@"+goodDigest, goodDigest, 1), false},
		{blob("registry.local/app", "sha256:zz", 1), false},
		{blob("registry.local/app", goodDigest, 0), false},
		{blob("registry.local/app", goodDigest, -5), false},
		{tabled(goodDigest, 90), true},
		{tabled("sha256:zz", 90), false},
		{tabled(goodDigest, 0), false},
		{tabled(goodDigest, 100), false},
		{tabled(goodDigest, -1), false},
		{tabled("", 90), false},
		{withURLs(tabled(goodDigest, 90), "ipfs://bafybeiey4h6pdr6wjkphvtrighj6gnxwsl63kaqy5xzx5hpaox3ujxxm4i"), true},
		{withURLs(tabled(goodDigest, 90), "https://example.com/blob"), false},
		{withURLs(tabled(goodDigest, 90), "ipfs://QmNotV1"), false},
		{withURLs(tabled(goodDigest, 90), make([]string, 9)...), false},
	} {
		if err := CheckLayer(c.layer); (err == nil) != c.ok {
			t.Errorf("CheckLayer(%v) = %v, want ok %v", c.layer, err, c.ok)
		}
	}
}

func withURLs(l *bddv1.Layer, urls ...string) *bddv1.Layer {
	l.GetBlob().Urls = urls
	return l
}

func TestTransportNames(t *testing.T) {
	for _, name := range []string{TransportFUSE, TransportNBD} {
		tr, err := ParseTransport(name)
		if err != nil || TransportName(tr) != name {
			t.Errorf("ParseTransport(%q) = %v, %v; back %q", name, tr, err, TransportName(tr))
		}
	}
	if _, err := ParseTransport("loop"); err == nil {
		t.Error("ParseTransport accepted an unknown transport")
	}
	if TransportName(bddv1.Transport_TRANSPORT_UNSPECIFIED) != "" {
		t.Error("TransportName(UNSPECIFIED) is not empty")
	}
}

// FuzzParseBlobLayer: what ParseBlobLayer accepts passes CheckLayer (so the daemon's checks)
// and is written back by LayerName and its size into a form that parses to the same layer.
func FuzzParseBlobLayer(f *testing.F) {
	f.Add("127.0.0.1:5000/app@" + goodDigest + ":42")
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseBlobLayer(s)
		if err != nil {
			return
		}
		if err := CheckLayer(l); err != nil {
			t.Fatalf("ParseBlobLayer(%q) gave a layer CheckLayer refuses: %v", s, err)
		}
		again, err := ParseBlobLayer(LayerName(l) + ":" + strconv.FormatInt(l.GetBlob().GetSize(), 10))
		if err != nil || !proto.Equal(again, l) {
			t.Fatalf("ParseBlobLayer(%q) = %v; its written form parses to %v, %v", s, l, again, err)
		}
	})
}
