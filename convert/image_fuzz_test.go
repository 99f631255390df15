package convert

import (
	"testing"

	"github.com/opencontainers/go-digest"
)

// FuzzParseConfig feeds arbitrary image configs: parsing may fail but must not
// panic, and a parsed config rewritten with new diff_ids must parse again to
// exactly those diff_ids.
func FuzzParseConfig(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := parseConfig(b)
		if err != nil {
			return
		}
		ids := []digest.Digest{digest.FromString("a"), digest.FromString("b")}
		out, err := c.withDiffIDs(ids)
		if err != nil {
			t.Fatal(err)
		}
		again, err := parseConfig(out)
		if err != nil {
			t.Fatalf("rewritten config does not parse: %v\n%s", err, out)
		}
		if len(again.diffIDs) != 2 || again.diffIDs[0] != ids[0] || again.diffIDs[1] != ids[1] {
			t.Fatalf("diff_ids after rewrite: %v", again.diffIDs)
		}
	})
}
