package snapshotter

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/obdproject/obd/bddclient"
	"github.com/obdproject/obd/quantity"
	"github.com/obdproject/obd/tracestore"
)

// DefaultConfigPath is where overlaybd-snapshotter looks for its config file.
const DefaultConfigPath = "/etc/overlaybd-snapshotter/config.json"

// Config is the config file of the overlaybd-snapshotter process (JSON).
type Config struct {
	// Root holds the metadata database and the snapshots.
	Root string `json:"root"`
	// Address is the unix socket the snapshots API is served on; containerd's
	// [proxy_plugins.overlaybd] address must name it.
	Address string `json:"address"`
	// BDDSocket is the control socket of bdd. Empty disables lazy overlaybd images.
	BDDSocket string `json:"bddSocket"`
	// TraceDir holds start traces recorded by `ctr-obd record-trace`; a device attached for
	// a chain with a trace prefetches it. It also holds page traces (WithPageTraces),
	// recorded when a chain's device is released and read in when it is mounted again.
	// Empty disables both.
	TraceDir string `json:"traceDir"`
	// RemoteTraces (default true) looks up, for a chain without a local start trace, the one
	// the registry holds as an artifact referring to the image's manifest (pushed by
	// `ctr-obd record-trace --push` or `obd convert --record-trace`), through bdd, once per
	// image, and replays it and its page trace as a local one. Needs bddSocket.
	RemoteTraces bool `json:"remoteTraces"`
	// RemoteIndexes (default true) looks up, for an ordinary OCI image being pulled, the
	// lazy-start index `obd index` stores beside it in the registry, through bdd, once per
	// image; an image with one is read lazily instead of unpacked. Needs bddSocket.
	RemoteIndexes bool `json:"remoteIndexes"`
	// RWMode is "overlayfs" (default) or "dev"; see RWModeOverlayFS and RWModeDev.
	RWMode RWMode `json:"rwMode"`
	// FSType is the filesystem on lazy chains' devices (default "ext4").
	FSType string `json:"fsType"`
	// LogLevel is debug, info (default), warn or error.
	LogLevel string `json:"logLevel"`
	// MountOptions are added to every overlay mount (for example "redirect_dir=on").
	MountOptions []string `json:"mountOptions,omitempty"`
	// DeviceLinger is how long a lazy image's device stays attached after its last
	// container or view is removed (a Go duration, default "10s"; "0s" detaches at once):
	// `nerdctl run` reads the image through a view just before it creates the container.
	DeviceLinger quantity.Duration `json:"deviceLinger"`
	// CRIImageProxy is a unix socket on which the process serves a CRI image service for
	// kubelet (its imageServiceEndpoint): every call goes on to containerd's CRI plugin at
	// ContainerdAddress, and the credentials of each pull are handed to bdd first (package
	// criproxy). Empty: not served. Needs BDDSocket.
	CRIImageProxy string `json:"criImageProxy,omitempty"`
	// ContainerdAddress is containerd's socket, for CRIImageProxy.
	ContainerdAddress string `json:"containerdAddress,omitempty"`
}

// DefaultConfig returns the configuration used for fields a config file leaves out.
func DefaultConfig() Config {
	return Config{
		Root:          "/var/lib/overlaybd-snapshotter",
		Address:       "/run/overlaybd-snapshotter/grpc.sock",
		BDDSocket:     bddclient.DefaultSocket,
		TraceDir:      tracestore.DefaultDir,
		RemoteTraces:  true,
		RemoteIndexes: true,
		RWMode:        RWModeOverlayFS,
		FSType:        "ext4",
		LogLevel:      "info",
		// Covers the view `nerdctl run` mounts just before the container.
		DeviceLinger:      quantity.Duration(10 * time.Second),
		ContainerdAddress: "/run/containerd/containerd.sock",
	}
}

// LoadConfig reads a config file over DefaultConfig. Unknown fields are errors, so that a typo
// does not silently fall back to a default.
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	cfg := DefaultConfig()
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// Validate reports the first unusable field.
func (c Config) Validate() error {
	if !filepath.IsAbs(c.Root) {
		return fmt.Errorf("root %q must be an absolute path", c.Root)
	}
	if !filepath.IsAbs(c.Address) {
		return fmt.Errorf("address %q must be an absolute socket path", c.Address)
	}
	if c.BDDSocket != "" && !filepath.IsAbs(c.BDDSocket) {
		return fmt.Errorf("bddSocket %q must be an absolute socket path", c.BDDSocket)
	}
	if c.RWMode != RWModeOverlayFS && c.RWMode != RWModeDev {
		return fmt.Errorf("rwMode %q: want %q or %q", c.RWMode, RWModeOverlayFS, RWModeDev)
	}
	if c.FSType == "" {
		return errors.New("fsType is empty")
	}
	if c.CRIImageProxy != "" {
		if !filepath.IsAbs(c.CRIImageProxy) || !filepath.IsAbs(c.ContainerdAddress) {
			return fmt.Errorf("criImageProxy %q and containerdAddress %q must be absolute socket paths", c.CRIImageProxy, c.ContainerdAddress)
		}
		if c.BDDSocket == "" {
			return errors.New("criImageProxy needs bddSocket: it hands pull credentials to bdd")
		}
	}
	_, err := c.Level()
	return err
}

// Level returns LogLevel as a slog level.
func (c Config) Level() (slog.Level, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return 0, fmt.Errorf("logLevel %q: want debug, info, warn or error", c.LogLevel)
	}
	return level, nil
}

// Options returns the Snapshotter options the config sets (all but the device manager).
func (c Config) Options() []Opt {
	opts := []Opt{WithRWMode(c.RWMode), WithFSType(c.FSType), WithMountOptions(c.MountOptions...),
		WithDeviceLinger(time.Duration(c.DeviceLinger))}
	if c.TraceDir != "" {
		opts = append(opts, WithPageTraces(c.TraceDir))
	}
	return opts
}
