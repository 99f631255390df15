package bdd

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Dial connects to the control API of the bdd listening on the unix socket at path.
// The connection is lazy: errors show up on the first call, which callers bound with
// a context deadline. Close the returned connection when done.
func Dial(path string) (bddv1.DaemonClient, *grpc.ClientConn, error) {
	// gRPC reads a relative "unix://x" as an authority, so make the path absolute.
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, nil, fmt.Errorf("bdd: dial %s: %w", path, err)
	}
	// The socket is local and root-only, so the channel needs no transport security.
	conn, err := grpc.NewClient("unix://"+abs, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, fmt.Errorf("bdd: dial %s: %w", path, err)
	}
	return bddv1.NewDaemonClient(conn), conn, nil
}

// ParseBlobLayer parses the command-line form of a remote layer, REF@DIGEST:SIZE
// (e.g. 127.0.0.1:5000/app@sha256:ab…:12345), into an API layer.
func ParseBlobLayer(s string) (*bddv1.Layer, error) {
	at := strings.LastIndexByte(s, '@')
	colon := strings.LastIndexByte(s, ':')
	if at <= 0 || colon < at {
		return nil, fmt.Errorf("blob %q: want REF@DIGEST:SIZE", s)
	}
	size, err := strconv.ParseInt(s[colon+1:], 10, 64)
	if err != nil {
		return nil, fmt.Errorf("blob %q: size %q is not a number", s, s[colon+1:])
	}
	l := &bddv1.Layer{Source: &bddv1.Layer_Blob{Blob: &bddv1.RemoteBlob{Ref: s[:at], Digest: s[at+1 : colon], Size: size}}}
	if _, err := layerSpecFromAPI(l); err != nil {
		return nil, fmt.Errorf("blob %q: %w", s, err)
	}
	return l, nil
}

// LayerName is how a layer of the API is shown to people: its path or ref@digest.
func LayerName(l *bddv1.Layer) string {
	if p := l.GetPath(); p != "" {
		return p
	}
	return l.GetBlob().GetRef() + "@" + l.GetBlob().GetDigest()
}
