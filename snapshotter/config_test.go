package snapshotter

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadConfig(t *testing.T) {
	path := writeConfig(t, `{"root": "/srv/obd", "bddSocket": "/run/bdd.sock", "rwMode": "dev", "logLevel": "debug"}`)
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig()
	want.Root, want.BDDSocket, want.RWMode, want.LogLevel = "/srv/obd", "/run/bdd.sock", RWModeDev, "debug"
	if cfg.Root != want.Root || cfg.Address != want.Address || cfg.BDDSocket != want.BDDSocket ||
		cfg.RWMode != want.RWMode || cfg.FSType != "ext4" || cfg.LogLevel != "debug" {
		t.Fatalf("LoadConfig = %+v, want %+v", cfg, want)
	}
	if level, err := cfg.Level(); err != nil || level != slog.LevelDebug {
		t.Fatalf("Level = %v, %v", level, err)
	}

	// The options carry the config into a Snapshotter.
	sn, err := NewSnapshotter(t.TempDir(), append(cfg.Options(), WithMountOptions("redirect_dir=on"))...)
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	if sn.cfg.rwMode != RWModeDev || sn.cfg.fsType != "ext4" || !hasOption(sn.options, "redirect_dir") {
		t.Fatalf("snapshotter config = %+v, options %v", sn.cfg, sn.options)
	}
}

func TestLoadConfigRejects(t *testing.T) {
	for body, want := range map[string]string{
		`{"rwMode": "overlay"}`:                               "rwMode",
		`{"root": "relative"}`:                                "absolute",
		`{"address": ""}`:                                     "address",
		`{"bddSocket": "bdd.sock"}`:                           "bddSocket",
		`{"fsType": ""}`:                                      "fsType",
		`{"logLevel": "loud"}`:                                "logLevel",
		`{"rw_mode": "dev"}`:                                  "unknown field",
		`{"root": "/a"`:                                       "unexpected EOF",
		`{"mountOptions": "redirect_dir=on"}`:                 "cannot unmarshal",
		`{"criImageProxy": "cri.sock"}`:                       "absolute",
		`{"criImageProxy": "/run/cri.sock", "bddSocket": ""}`: "needs bddSocket",
	} {
		if _, err := LoadConfig(writeConfig(t, body)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("LoadConfig(%s): err = %v, want it to mention %q", body, err, want)
		}
	}
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "missing.json")); err == nil {
		t.Error("LoadConfig of a missing file succeeded")
	}
	if _, err := NewSnapshotter(t.TempDir(), WithRWMode("bogus")); err == nil {
		t.Error("NewSnapshotter accepted rwMode bogus")
	}
}
