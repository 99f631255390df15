package bdd

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/obdproject/obd/bddclient"
	"github.com/obdproject/obd/ipfsnode"
	"github.com/obdproject/obd/quantity"
	"github.com/pelletier/go-toml/v2"
	"github.com/spf13/pflag"
)

// DefaultConfigPath is where bdd looks for its configuration file.
const DefaultConfigPath = "/etc/obd/bdd.toml"

// Config is bdd's configuration: a TOML file whose values command-line flags override.
type Config struct {
	// StateDir holds one JSON file per attached device, so devices survive restarts.
	StateDir string `toml:"state_dir"`
	// Socket is the unix socket of the control API.
	Socket string `toml:"socket"`
	// LogLevel is one of debug, info, warn, error.
	LogLevel string `toml:"log_level"`
	// MetricsAddr is the host:port of the Prometheus listener; empty disables it.
	MetricsAddr string `toml:"metrics_addr"`
	// Transport is used when an Attach request leaves it unspecified: fuse or nbd.
	Transport string `toml:"transport"`
	// MemoryLimit is a soft limit on the daemon's Go memory (see LimitMemory): the
	// collector works harder near it and returns memory to the system sooner. It is
	// raised automatically to stay 10% above the live heap (about 2 MiB per busy
	// device plus the layer indexes). 0 turns the limit off.
	MemoryLimit quantity.Size `toml:"memory_limit"`
	// RunDir holds runtime files: the FUSE mounts (fuse/) and NBD sockets (nbd/) of
	// the devices.
	RunDir string `toml:"run_dir"`

	Cache    CacheConfig    `toml:"cache"`
	Registry RegistryConfig `toml:"registry"`
	IPFS     IPFSConfig     `toml:"ipfs"`
	Limits   LimitsConfig   `toml:"limits"`
}

// LimitsConfig bounds what clients, images and registries can make bdd hold. Each must be
// positive. Sizes and counts inside images are bounded apart from these (README, "Security
// model").
type LimitsConfig struct {
	// MaxDevices is how many devices may be attached (or being attached) at once; an
	// Attach past it fails with ResourceExhausted.
	MaxDevices int `toml:"max_devices"`
	// MaxAPIConnections is how many connections the control socket serves at once; more
	// wait to be accepted.
	MaxAPIConnections int `toml:"max_api_connections"`
	// MaxExportConnections is how many clients one device's NBD export serves at once;
	// more are closed at once.
	MaxExportConnections int `toml:"max_export_connections"`
	// MaxRegistryConnections is how many connections to one registry host are open at
	// once; more requests wait for one.
	MaxRegistryConnections int `toml:"max_registry_connections"`
}

// CacheConfig configures the persistent cache of remote blobs.
type CacheConfig struct {
	Dir  string        `toml:"dir"`
	Size quantity.Size `toml:"size"`
	// FillUnit is how much of a blob one cache miss fetches at least (sequential reads
	// fetch more through readahead). Small units suit lazy starts on slow links: a
	// container start reads ~100 scattered ranges, and each unit costs transfer time.
	FillUnit quantity.Size `toml:"fill_unit"`
	// PrefetchMetadata walks the ext4 metadata (inode tables, directories, extent trees)
	// of every new device with remote layers in the background, so that path lookups
	// find it fetched: a few concurrent rounds of reads instead of a round trip per
	// inode table and directory block touched.
	PrefetchMetadata bool `toml:"prefetch_metadata"`
	// PrefetchFileMax: when a read of a regular file's data misses the cache, the rest of
	// the file is fetched in the background if it is at most this large (0: never). A
	// program goes on reading a binary, library or module it has started, and one request
	// for the file costs less than a round trip per page fault. Needs PrefetchMetadata,
	// whose walk learns where files lie.
	PrefetchFileMax quantity.Size `toml:"prefetch_file_max"`
	// BackgroundDelay is how long after a remote blob opens the rest of it starts
	// downloading in the background; BackgroundRate bounds that download, in bytes per
	// second. A node holds a blob whole, and serves it to IPFS peers, once it is done.
	BackgroundDelay quantity.Duration `toml:"background_delay"`
	BackgroundRate  quantity.Size     `toml:"background_rate"`
}

// RegistryConfig configures how remote blobs are fetched.
type RegistryConfig struct {
	// CertsDir is a containerd-style hosts directory (certs.d).
	CertsDir string `toml:"certs_dir"`
	// DockerConfig is a docker config.json holding registry credentials, read again when
	// it changes.
	DockerConfig string `toml:"docker_config"`
	// CredentialProviderConfig is kubelet's credential provider config
	// (--image-credential-provider-config); its exec plugins are asked for the images they
	// match, after the credentials CRI pulls brought and before DockerConfig. Empty: none.
	CredentialProviderConfig string `toml:"credential_provider_config"`
	// CredentialProviderBinDir holds the plugins (--image-credential-provider-bin-dir).
	CredentialProviderBinDir string `toml:"credential_provider_bin_dir"`
	// ReadTimeout bounds one read of a remote blob, retries included.
	ReadTimeout quantity.Duration `toml:"read_timeout"`
	// RequireVerified refuses remote layers without a range table (images made by upstream
	// overlaybd or an older obd), whose bytes can be checked only once a whole blob is in.
	RequireVerified bool `toml:"require_verified"`
}

// IPFSConfig configures peer-to-peer reads through the node's IPFS (kubo) node: layers whose
// descriptor names them ipfs://<CID> are read through its gateway before the registry, and
// the blobs the node holds whole are added to it for its peers.
type IPFSConfig struct {
	// Gateway is the node's HTTP gateway, e.g. http://127.0.0.1:8080; empty: no IPFS reads.
	Gateway string `toml:"gateway"`
	// API is the node's RPC API, e.g. http://127.0.0.1:5001; empty: the node reads from its
	// peers but does not add what it holds.
	API string `toml:"api"`
	// Wait bounds the gateway's time to answer a request (no answer: no peer has the blob);
	// the read then goes to the registry.
	Wait quantity.Duration `toml:"wait"`
}

// DefaultConfig returns the configuration used when neither file nor flag says otherwise.
func DefaultConfig() Config {
	return Config{
		StateDir:  "/var/lib/obd/bdd",
		Socket:    bddclient.DefaultSocket,
		LogLevel:  "info",
		Transport: bddclient.TransportFUSE,
		RunDir:    "/run/obd/bdd",
		// Keeps a daemon serving ten devices within 64 MiB of resident memory.
		MemoryLimit: 48 << 20,
		// 16 KiB units: a start on a slow link is latency-bound and reads ~100 scattered
		// ranges, so each miss should move little beyond what was asked; readahead still
		// merges sequential ones, and a replayed trace fetches close to its own bytes
		// (bench/FINDINGS.md: 1.3-1.4x faster than 64 KiB units for a python start over
		// 100 Mbit/s + 20 ms, with 30% fewer bytes).
		Cache: CacheConfig{Dir: "/var/cache/obd", Size: 10 << 30, FillUnit: 16 << 10,
			PrefetchMetadata: true, PrefetchFileMax: 64 << 20,
			BackgroundDelay: quantity.Duration(10 * time.Second), BackgroundRate: 16 << 20},
		Registry: RegistryConfig{
			CertsDir:    "/etc/containerd/certs.d",
			ReadTimeout: quantity.Duration(30 * time.Second),
		},
		IPFS:   IPFSConfig{Wait: quantity.Duration(2 * time.Second)},
		Limits: LimitsConfig{MaxDevices: 512, MaxAPIConnections: 64, MaxExportConnections: 8, MaxRegistryConnections: 64},
	}
}

// RegisterFlags adds one flag per setting to fs, writing into c.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.StateDir, "state-dir", c.StateDir, "directory holding the state of attached devices")
	fs.StringVar(&c.Socket, "socket", c.Socket, "unix socket of the control API")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "log level: debug, info, warn or error")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", c.MetricsAddr, "host:port of the Prometheus metrics listener (empty: off)")
	fs.StringVar(&c.Transport, "transport", c.Transport, "default transport: fuse or nbd")
	fs.Var(&c.MemoryLimit, "memory-limit", "soft limit on the daemon's Go memory, raised to stay 10% above the live heap (0: none)")
	fs.StringVar(&c.RunDir, "run-dir", c.RunDir, "directory for the devices' FUSE mounts and NBD sockets")
	fs.StringVar(&c.Cache.Dir, "cache-dir", c.Cache.Dir, "directory of the remote blob cache")
	fs.Var(&c.Cache.Size, "cache-size", "size limit of the blob cache (e.g. 10GiB)")
	fs.Var(&c.Cache.FillUnit, "cache-fill-unit", "least bytes one cache miss fetches, a multiple of 4KiB")
	fs.Var(&c.Cache.PrefetchFileMax, "prefetch-file-max", "fetch the rest of a file of at most this size when a read of it misses the cache (0: off)")
	fs.BoolVar(&c.Cache.PrefetchMetadata, "prefetch-metadata", c.Cache.PrefetchMetadata, "fetch the ext4 metadata of new devices with remote layers in the background")
	fs.Var(&c.Cache.BackgroundDelay, "background-delay", "time after a remote blob opens before the rest of it downloads in the background")
	fs.Var(&c.Cache.BackgroundRate, "background-rate", "bytes per second of background downloads (e.g. 16MiB)")
	fs.StringVar(&c.Registry.CertsDir, "certs-dir", c.Registry.CertsDir, "containerd-style hosts directory (certs.d)")
	fs.StringVar(&c.Registry.DockerConfig, "docker-config", c.Registry.DockerConfig, "docker config.json with registry credentials")
	fs.StringVar(&c.Registry.CredentialProviderConfig, "credential-provider-config", c.Registry.CredentialProviderConfig, "kubelet credential provider config (empty: none)")
	fs.StringVar(&c.Registry.CredentialProviderBinDir, "credential-provider-bin-dir", c.Registry.CredentialProviderBinDir, "directory of kubelet credential provider plugins")
	fs.Var(&c.Registry.ReadTimeout, "read-timeout", "time limit of one remote read, retries included")
	fs.BoolVar(&c.Registry.RequireVerified, "require-verified", c.Registry.RequireVerified, "refuse remote layers without a range table")
	fs.StringVar(&c.IPFS.Gateway, "ipfs-gateway", c.IPFS.Gateway, "IPFS gateway of the node, for layers named ipfs://<CID> (empty: off)")
	fs.StringVar(&c.IPFS.API, "ipfs-api", c.IPFS.API, "IPFS RPC API of the node, to add the blobs it holds for its peers (empty: off)")
	fs.Var(&c.IPFS.Wait, "ipfs-wait", "time the IPFS gateway has to answer before a read goes to the registry")
	fs.IntVar(&c.Limits.MaxDevices, "max-devices", c.Limits.MaxDevices, "devices attached at once")
	fs.IntVar(&c.Limits.MaxAPIConnections, "max-api-connections", c.Limits.MaxAPIConnections, "control socket connections served at once")
	fs.IntVar(&c.Limits.MaxExportConnections, "max-export-connections", c.Limits.MaxExportConnections, "NBD export clients per device at once")
	fs.IntVar(&c.Limits.MaxRegistryConnections, "max-registry-connections", c.Limits.MaxRegistryConnections, "connections per registry host")
}

// Load builds the configuration: c's current values (DefaultConfig), then the TOML
// file at path, then the flags that were set on the command line (flags must have
// been filled by RegisterFlags on c and parsed; nil means none). A missing file is an error unless path is
// DefaultConfigPath.
func (c *Config) Load(path string, flags *pflag.FlagSet) error {
	set := map[string]string{}
	if flags != nil {
		flags.Visit(func(f *pflag.Flag) { set[f.Name] = f.Value.String() })
	}
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist) && path == DefaultConfigPath:
	case err != nil:
		return fmt.Errorf("bdd: config: %w", err)
	default:
		dec := toml.NewDecoder(strings.NewReader(string(data)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(c); err != nil {
			return fmt.Errorf("bdd: config %s: %w", path, describeTOMLError(err))
		}
	}
	for name, value := range set {
		if err := flags.Set(name, value); err != nil {
			return fmt.Errorf("bdd: flag --%s: %w", name, err)
		}
	}
	return c.Validate()
}

// describeTOMLError adds the position or unknown key names go-toml knows about.
func describeTOMLError(err error) error {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		var keys []string
		for _, e := range strict.Errors {
			keys = append(keys, strings.Join(e.Key(), "."))
		}
		return fmt.Errorf("unknown setting(s) %s", strings.Join(keys, ", "))
	}
	var decErr *toml.DecodeError
	if errors.As(err, &decErr) {
		row, col := decErr.Position()
		return fmt.Errorf("line %d column %d: %w", row, col, err)
	}
	return err
}

// Validate reports the first setting that cannot work.
func (c *Config) Validate() error {
	for _, d := range []struct{ name, value string }{
		{"state_dir", c.StateDir}, {"socket", c.Socket}, {"run_dir", c.RunDir}, {"cache.dir", c.Cache.Dir},
	} {
		if d.value == "" {
			return fmt.Errorf("bdd: config: %s must not be empty", d.name)
		}
	}
	if _, err := c.SlogLevel(); err != nil {
		return err
	}
	if _, err := bddclient.ParseTransport(c.Transport); err != nil {
		return fmt.Errorf("bdd: config: %w", err)
	}
	if c.Cache.FillUnit < 4096 || c.Cache.FillUnit%4096 != 0 {
		return fmt.Errorf("bdd: config: cache.fill_unit must be a positive multiple of 4KiB, got %d", c.Cache.FillUnit)
	}
	if c.Cache.Size <= 0 {
		return fmt.Errorf("bdd: config: cache.size must be positive, got %d", c.Cache.Size)
	}
	if c.Cache.BackgroundDelay <= 0 || c.Cache.BackgroundRate <= 0 {
		return fmt.Errorf("bdd: config: cache.background_delay and cache.background_rate must be positive, got %s and %d",
			c.Cache.BackgroundDelay, c.Cache.BackgroundRate)
	}
	if c.Registry.ReadTimeout <= 0 {
		return fmt.Errorf("bdd: config: registry.read_timeout must be positive, got %s", c.Registry.ReadTimeout)
	}
	if err := c.IPFS.validate(); err != nil {
		return err
	}
	if (c.Registry.CredentialProviderConfig == "") != (c.Registry.CredentialProviderBinDir == "") {
		return errors.New("bdd: config: registry.credential_provider_config and registry.credential_provider_bin_dir go together")
	}
	for _, l := range []struct {
		name  string
		value int
	}{
		{"max_devices", c.Limits.MaxDevices}, {"max_api_connections", c.Limits.MaxAPIConnections},
		{"max_export_connections", c.Limits.MaxExportConnections}, {"max_registry_connections", c.Limits.MaxRegistryConnections},
	} {
		if l.value <= 0 {
			return fmt.Errorf("bdd: config: limits.%s must be positive, got %d", l.name, l.value)
		}
	}
	return nil
}

func (c IPFSConfig) validate() error {
	for _, e := range []struct{ name, value string }{{"gateway", c.Gateway}, {"api", c.API}} {
		if e.value == "" {
			continue
		}
		if _, err := ipfsnode.CheckEndpoint(e.value); err != nil {
			return fmt.Errorf("bdd: config: ipfs.%s: %w", e.name, err)
		}
	}
	if c.API != "" && c.Gateway == "" {
		return errors.New("bdd: config: ipfs.api needs ipfs.gateway")
	}
	if c.Wait <= 0 {
		return fmt.Errorf("bdd: config: ipfs.wait must be positive, got %s", c.Wait)
	}
	return nil
}

// SlogLevel returns LogLevel as a slog.Level.
func (c *Config) SlogLevel() (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return 0, fmt.Errorf("bdd: config: log_level %q: want debug, info, warn or error", c.LogLevel)
	}
	return l, nil
}
