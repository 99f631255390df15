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
