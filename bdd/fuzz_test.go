package bdd

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoadConfig feeds arbitrary bytes as the config file: Load must return a
// configuration that validates, or an error, and never panic.
func FuzzLoadConfig(f *testing.F) {
	f.Add([]byte("state_dir = \"/s\"\n[cache]\nsize = \"1GiB\"\n"))
	path := filepath.Join(f.TempDir(), "bdd.toml")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := DefaultConfig()
		if err := cfg.Load(path, nil); err != nil {
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Load accepted a config that does not validate: %v", err)
		}
	})
}

// FuzzParseBlobLayer checks that the command-line blob syntax either parses into a
// layer the daemon accepts or is refused.
func FuzzParseBlobLayer(f *testing.F) {
	f.Add("127.0.0.1:5000/app@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855:42")
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseBlobLayer(s)
		if err != nil {
			return
		}
		if _, err := layerSpecFromAPI(l); err != nil {
			t.Fatalf("ParseBlobLayer(%q) gave a layer the daemon refuses: %v", s, err)
		}
	})
}
