package ociartifact

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	_ "crypto/sha512" // ReferrersTag of a sha512 digest

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestParseIndex(t *testing.T) {
	entry := `{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + digest.FromString("blocks").String() + `","size":6}`
	if idx, err := parseIndex([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` + entry + `]}`)); err != nil || len(idx.Manifests) != 1 {
		t.Fatalf("parseIndex = %+v, %v", idx, err)
	}
	many := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` + strings.Repeat(entry+",", MaxReferrers) + entry + `]}`
	for name, tc := range map[string]struct {
		data string
		want error
	}{
		"garbage":         {"{{{", ErrBadIndex},
		"manifest":        {`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","manifests":[]}`, ErrBadIndex},
		"schema version":  {`{"schemaVersion":1,"mediaType":"application/vnd.oci.image.index.v1+json"}`, ErrBadIndex},
		"bad digest":      {`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"digest":"sha256:x","size":1}]}`, ErrBadIndex},
		"too many":        {many, ErrTooManyReferrers},
		"oversized":       {`{"x":"` + strings.Repeat("a", MaxIndexBytes) + `"}`, ErrTooLarge},
		"manifests kinds": {`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":{}}`, ErrBadIndex},
	} {
		if _, err := parseIndex([]byte(tc.data)); !errors.Is(err, tc.want) {
			t.Errorf("%s: error = %v, want %v", name, err, tc.want)
		}
	}
}

func TestReferrersTag(t *testing.T) {
	d := digest.FromString("x")
	if got, want := ReferrersTag(d), "sha256-"+d.Encoded(); got != want {
		t.Errorf("ReferrersTag = %q, want %q", got, want)
	}
	long := digest.SHA512.FromString("x")
	if got := ReferrersTag(long); got != "sha512-"+long.Encoded()[:64] {
		t.Errorf("ReferrersTag(sha512) = %q, want the encoded digest cut to 64", got)
	}
}

// FuzzParseIndex: no input panics, and an accepted index is within MaxReferrers.
func FuzzParseIndex(f *testing.F) {
	f.Add([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`))
	f.Add([]byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"%s","digest":"%s","size":2}]}`,
		ocispec.MediaTypeImageManifest, digest.FromString("blocks"))))
	f.Fuzz(func(t *testing.T, data []byte) {
		idx, err := parseIndex(data)
		if err != nil {
			if !errors.Is(err, ErrBadIndex) && !errors.Is(err, ErrTooLarge) && !errors.Is(err, ErrTooManyReferrers) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if len(idx.Manifests) > MaxReferrers {
			t.Fatalf("accepted %d referrers", len(idx.Manifests))
		}
	})
}
