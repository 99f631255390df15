package main

import (
	"path/filepath"
	"reflect"
	"testing"

	"github.com/obdproject/obd/snapshotter"
)

func TestExampleConfigLoads(t *testing.T) {
	cfg, err := loadConfig("config.example.json", true)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.BDDSocket == "" || cfg.RWMode != snapshotter.RWModeOverlayFS {
		t.Fatalf("example config = %+v", cfg)
	}
}

func TestConfigDefaultsAndOverrides(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "config.json")
	cfg, err := loadConfig(missing, false)
	if err != nil || !reflect.DeepEqual(cfg, snapshotter.DefaultConfig()) {
		t.Fatalf("absent default config = %+v, %v; want the defaults", cfg, err)
	}
	if _, err := loadConfig(missing, true); err == nil {
		t.Fatal("an explicitly named config file that is missing must be an error")
	}
	if err := override(&cfg, "/r", "/a.sock", "/b.sock"); err != nil || cfg.Root != "/r" || cfg.Address != "/a.sock" || cfg.BDDSocket != "/b.sock" {
		t.Fatalf("override = %+v, %v", cfg, err)
	}
	if err := override(&cfg, "relative", "", ""); err == nil {
		t.Fatal("override accepted a relative root")
	}
}
