package bdd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "bdd.toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigFileThenFlags(t *testing.T) {
	path := writeConfig(t, `
state_dir = "/srv/state"
log_level = "debug"
[cache]
dir = "/srv/cache"
size = "2GiB"
[registry]
read_timeout = "5s"
docker_config = "/root/.docker/config.json"
require_verified = true
`)
	cfg := DefaultConfig()
	fs := pflag.NewFlagSet("bdd", pflag.ContinueOnError)
	cfg.RegisterFlags(fs)
	if err := fs.Parse([]string{"--cache-size", "512MiB", "--socket", "/tmp/x.sock"}); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Load(path, fs); err != nil {
		t.Fatal(err)
	}
	if cfg.StateDir != "/srv/state" || cfg.Cache.Dir != "/srv/cache" || cfg.LogLevel != "debug" {
		t.Errorf("file values not applied: %+v", cfg)
	}
	if cfg.Cache.Size != 512<<20 || cfg.Socket != "/tmp/x.sock" {
		t.Errorf("flags must override the file: size %v socket %q", cfg.Cache.Size, cfg.Socket)
	}
	if time.Duration(cfg.Registry.ReadTimeout) != 5*time.Second || !cfg.Registry.RequireVerified {
		t.Errorf("read timeout %v, require verified %v", cfg.Registry.ReadTimeout, cfg.Registry.RequireVerified)
	}
	if cfg.Registry.CertsDir != "/etc/containerd/certs.d" {
		t.Errorf("unset value lost its default: %q", cfg.Registry.CertsDir)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct{ name, text, want string }{
		{"unknown key", "stat_dir = \"/x\"\n", "stat_dir"},
		{"syntax", "state_dir = \n", "line 1"},
		{"bad size", "[cache]\nsize = \"ten gigs\"\n", "invalid size"},
		{"bad duration", "[registry]\nread_timeout = \"soon\"\n", "invalid duration"},
		{"bad level", "log_level = \"loud\"\n", "log_level"},
		{"bad transport", "transport = \"carrier pigeon\"\n", "unknown transport"},
		{"empty state", "state_dir = \"\"\n", "state_dir must not be empty"},
		{"provider config without bin dir", "[registry]\ncredential_provider_config = \"/etc/kubernetes/cp.yaml\"\n", "go together"},
		{"zero cache", "[cache]\nsize = \"0\"\n", "cache.size"},
		{"odd fill unit", "[cache]\nfill_unit = \"6000\"\n", "cache.fill_unit"},
		{"zero devices", "[limits]\nmax_devices = 0\n", "limits.max_devices"},
		{"negative api connections", "[limits]\nmax_api_connections = -1\n", "limits.max_api_connections"},
		{"zero export connections", "[limits]\nmax_export_connections = 0\n", "limits.max_export_connections"},
		{"zero registry connections", "[limits]\nmax_registry_connections = 0\n", "limits.max_registry_connections"},
		{"ipfs gateway not a URL", "[ipfs]\ngateway = \"127.0.0.1:8080\"\n", "ipfs.gateway"},
		{"ipfs gateway with a path", "[ipfs]\ngateway = \"http://127.0.0.1:8080/ipfs\"\n", "ipfs.gateway"},
		{"ipfs api without gateway", "[ipfs]\napi = \"http://127.0.0.1:5001\"\n", "needs ipfs.gateway"},
		{"zero background delay", "[cache]\nbackground_delay = \"0s\"\n", "cache.background_delay"},
		{"zero background rate", "[cache]\nbackground_rate = \"0\"\n", "cache.background_rate"},
		{"ipfs zero wait", "[ipfs]\ngateway = \"http://127.0.0.1:8080\"\nwait = \"0s\"\n", "ipfs.wait"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			err := cfg.Load(writeConfig(t, tc.text), nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

func TestConfigMissingFile(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Load(filepath.Join(t.TempDir(), "none.toml"), nil); err == nil {
		t.Fatal("an explicitly named missing config file must be an error")
	}
}
