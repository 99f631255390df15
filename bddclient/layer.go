package bddclient

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/imagelabels"
	"github.com/obdproject/obd/ipfsnode"
)

// ParseBlobLayer parses the command-line form of a remote layer, REF@DIGEST:SIZE, with
// #TABLE@OFFSET after it for a blob with a range table (e.g.
// 127.0.0.1:5000/app@sha256:ab…:12345#sha256:cd…@12000), into an API layer that CheckLayer
// accepts.
func ParseBlobLayer(s string) (*bddv1.Layer, error) {
	full := s
	s, pin, pinned := strings.Cut(s, "#")
	var table string
	var tableOff int64
	if pinned {
		var off string
		var ok bool
		if table, off, ok = strings.Cut(pin, "@"); !ok {
			return nil, fmt.Errorf("bddclient: blob %q: want REF@DIGEST:SIZE#TABLE@OFFSET", full)
		}
		var err error
		if tableOff, err = strconv.ParseInt(off, 10, 64); err != nil {
			return nil, fmt.Errorf("bddclient: blob %q: range table offset %q is not a number", full, off)
		}
		if table == "" {
			return nil, fmt.Errorf("bddclient: blob %q: no range table digest after #", full)
		}
	}
	at := strings.LastIndexByte(s, '@')
	colon := strings.LastIndexByte(s, ':')
	if at <= 0 || colon < at {
		return nil, fmt.Errorf("bddclient: blob %q: want REF@DIGEST:SIZE", s)
	}
	size, err := strconv.ParseInt(s[colon+1:], 10, 64)
	if err != nil {
		return nil, fmt.Errorf("bddclient: blob %q: size %q is not a number", s, s[colon+1:])
	}
	l := &bddv1.Layer{Source: &bddv1.Layer_Blob{Blob: &bddv1.RemoteBlob{Ref: s[:at], Digest: s[at+1 : colon], Size: size,
		RangeTable: table, RangeTableOffset: tableOff}}}
	if err := CheckLayer(l); err != nil {
		return nil, fmt.Errorf("bddclient: blob %q: %w", full, err)
	}
	return l, nil
}

// CheckLayer checks that l can name a layer bdd opens: an absolute path, or a blob with a
// repository reference (no tag or digest: no '@', no white space), a valid digest, a
// size in (0, imagelabels.MaxBlobSize] and, if it has a range table, the table's digest and
// an offset inside the blob. Whether the layer exists is for the daemon to find
// out. The error says what is wrong, for the caller to put in context.
func CheckLayer(l *bddv1.Layer) error {
	if p := l.GetPath(); p != "" {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("path %q is not absolute", p)
		}
		return nil
	}
	if ix := l.GetIndexed(); ix != nil {
		return checkIndexed(ix)
	}
	b := l.GetBlob()
	if b == nil {
		return errors.New("neither a path nor a blob")
	}
	return checkBlob(b)
}

// checkIndexed checks an indexed layer: four blobs of one repository, the seek index with a
// range table (it is read in pieces), the others without (the seek index checks the layer
// blob's ranges; the map and metadata layer are fetched whole).
func checkIndexed(ix *bddv1.IndexedBlob) error {
	ref := ix.GetBlob().GetRef()
	for _, part := range []struct {
		name string
		b    *bddv1.RemoteBlob
	}{{"blob", ix.GetBlob()}, {"seek index", ix.GetGzIndex()}, {"metadata layer", ix.GetMeta()}, {"map", ix.GetMap()}} {
		if part.b == nil {
			return fmt.Errorf("indexed layer without its %s", part.name)
		}
		if err := checkBlob(part.b); err != nil {
			return fmt.Errorf("indexed layer's %s: %w", part.name, err)
		}
		if part.b.GetRef() != ref {
			return fmt.Errorf("indexed layer's %s is in %q, its blob in %q", part.name, part.b.GetRef(), ref)
		}
		if hasTable := part.b.GetRangeTable() != ""; hasTable != (part.b == ix.GetGzIndex()) {
			return fmt.Errorf("indexed layer's %s: range table %q (only the seek index has one)", part.name, part.b.GetRangeTable())
		}
	}
	return nil
}

// checkBlob checks one remote blob (see CheckLayer).
func checkBlob(b *bddv1.RemoteBlob) error {
	if b.GetRef() == "" || strings.ContainsAny(b.GetRef(), " \t\n@") {
		return fmt.Errorf("blob ref %q is not a repository reference", b.GetRef())
	}
	d, err := digest.Parse(b.GetDigest())
	if err != nil {
		return fmt.Errorf("blob digest %q: %w", b.GetDigest(), err)
	}
	if err := imagelabels.CheckBlobSize(b.GetSize()); err != nil {
		return fmt.Errorf("blob %s: %w", d, err)
	}
	if t := b.GetRangeTable(); t != "" || b.GetRangeTableOffset() != 0 {
		if _, err := digest.Parse(t); err != nil {
			return fmt.Errorf("blob %s: range table digest %q: %w", d, t, err)
		}
		if off := b.GetRangeTableOffset(); off <= 0 || off >= b.GetSize() {
			return fmt.Errorf("blob %s: range table offset %d is not inside the %d-byte blob", d, off, b.GetSize())
		}
	}
	if n := len(b.GetUrls()); n > maxBlobURLs {
		return fmt.Errorf("blob %s: %d URLs, at most %d", d, n, maxBlobURLs)
	}
	for _, u := range b.GetUrls() {
		if _, err := ipfsnode.ParseURL(u); err != nil {
			return fmt.Errorf("blob %s: %w (bdd reads only ipfs:// URLs)", d, err)
		}
	}
	return nil
}

// maxBlobURLs bounds the URLs of one remote blob.
const maxBlobURLs = 8

// LayerName is how a layer of the API is shown to people: its path or ref@digest.
func LayerName(l *bddv1.Layer) string {
	if p := l.GetPath(); p != "" {
		return p
	}
	if ix := l.GetIndexed(); ix != nil {
		return ix.GetBlob().GetRef() + "@" + ix.GetBlob().GetDigest() + " (indexed)"
	}
	return l.GetBlob().GetRef() + "@" + l.GetBlob().GetDigest()
}
