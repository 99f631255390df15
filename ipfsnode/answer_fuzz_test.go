package ipfsnode

import (
	"strings"
	"testing"
)

// The node's answers are read with a bound and decoded without trusting their shape.
func FuzzDecodeLast(f *testing.F) {
	f.Add(`{"Name":"blob","Hash":"bafybeiey4h6pdr6wjkphvtrighj6gnxwsl63kaqy5xzx5hpaox3ujxxm4i","Size":"3000609"}`)
	f.Add("{\"Bytes\":262144}\n{\"Hash\":\"bafk\"}\n")
	f.Add(`{"Keys":{"bafk":{"Type":"recursive"}}}`)
	f.Add("[1,2")
	f.Fuzz(func(t *testing.T, s string) {
		var add struct{ Hash string }
		if err := decodeLast("add", []byte(s), &add); err == nil && !strings.Contains(s, "{") && !strings.Contains(s, "null") {
			t.Fatalf("decoded %q into %+v", s, add)
		}
		var pins struct {
			Keys map[string]struct{ Type string }
		}
		_ = decodeLast("pin/ls", []byte(s), &pins)
	})
}
