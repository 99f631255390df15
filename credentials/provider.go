package credentials

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"sigs.k8s.io/yaml"
)

// ErrBadProviderConfig reports a kubelet credential provider config that cannot be used.
var ErrBadProviderConfig = errors.New("credentials: bad credential provider config")

// The versions of kubelet's credential provider exec protocol (CredentialProviderRequest and
// CredentialProviderResponse) a provider may speak.
var providerAPIVersions = map[string]bool{
	"credentialprovider.kubelet.k8s.io/v1":       true,
	"credentialprovider.kubelet.k8s.io/v1beta1":  true,
	"credentialprovider.kubelet.k8s.io/v1alpha1": true,
}

// providerTimeout bounds one run of a credential provider plugin.
const providerTimeout = 30 * time.Second

// providerOutputLimit bounds what a plugin may print.
const providerOutputLimit = 1 << 20

// ProviderConfig is kubelet's CredentialProviderConfig (kubelet.config.k8s.io/v1), the file
// given to kubelet as --image-credential-provider-config.
type ProviderConfig struct {
	APIVersion string                `json:"apiVersion"`
	Kind       string                `json:"kind"`
	Providers  []ProviderConfigEntry `json:"providers"`
}

// ProviderConfigEntry is one exec plugin of a ProviderConfig.
type ProviderConfigEntry struct {
	Name                 string        `json:"name"`
	MatchImages          []string      `json:"matchImages"`
	DefaultCacheDuration string        `json:"defaultCacheDuration"`
	APIVersion           string        `json:"apiVersion"`
	Args                 []string      `json:"args,omitempty"`
	Env                  []ProviderEnv `json:"env,omitempty"`
}

// ProviderEnv is one environment variable a plugin is run with.
type ProviderEnv struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Providers runs kubelet credential provider plugins (the exec protocol of
// credentialprovider.kubelet.k8s.io) for the images their matchImages patterns match, and
// caches their answers in memory for as long as they say.
type Providers struct {
	binDir    string
	providers []provider

	mu    sync.Mutex
	cache map[string]cachedResponse // provider name + cache key -> response
}

type provider struct {
	ProviderConfigEntry
	cacheDuration time.Duration
}

type cachedResponse struct {
	auth    map[string]providerAuth
	expires time.Time
}

type providerAuth struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

type providerRequest struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Image      string `json:"image"`
}

type providerResponse struct {
	APIVersion    string                  `json:"apiVersion"`
	Kind          string                  `json:"kind"`
	CacheKeyType  string                  `json:"cacheKeyType"`
	CacheDuration string                  `json:"cacheDuration"`
	Auth          map[string]providerAuth `json:"auth"`
}

// LoadProviders reads kubelet's credential provider config (YAML or JSON) at configPath; the
// plugins are the executables of those names in binDir, as kubelet's
// --image-credential-provider-bin-dir.
func LoadProviders(configPath, binDir string) (*Providers, error) {
	data, err := os.ReadFile(configPath)
	if err != nil {
		return nil, fmt.Errorf("credentials: %w", err)
	}
	p, err := ParseProviders(data, binDir)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", configPath, err)
	}
	return p, nil
}

// ParseProviders parses and validates a credential provider config.
func ParseProviders(data []byte, binDir string) (*Providers, error) {
	var cfg ProviderConfig
	if err := yaml.UnmarshalStrict(data, &cfg); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadProviderConfig, err)
	}
	if cfg.Kind != "CredentialProviderConfig" {
		return nil, fmt.Errorf("%w: kind %q, want CredentialProviderConfig", ErrBadProviderConfig, cfg.Kind)
	}
	if binDir == "" {
		return nil, fmt.Errorf("%w: no plugin directory", ErrBadProviderConfig)
	}
	p := &Providers{binDir: binDir, cache: map[string]cachedResponse{}}
	seen := map[string]bool{}
	for i, e := range cfg.Providers {
		if e.Name == "" || strings.ContainsAny(e.Name, `/\`) || e.Name == "." || e.Name == ".." || seen[e.Name] {
			return nil, fmt.Errorf("%w: provider %d: name %q is empty, a path or repeated", ErrBadProviderConfig, i, e.Name)
		}
		seen[e.Name] = true
		if !providerAPIVersions[e.APIVersion] {
			return nil, fmt.Errorf("%w: provider %s: apiVersion %q is not a credential provider API", ErrBadProviderConfig, e.Name, e.APIVersion)
		}
		if len(e.MatchImages) == 0 {
			return nil, fmt.Errorf("%w: provider %s: no matchImages", ErrBadProviderConfig, e.Name)
		}
		for _, m := range e.MatchImages {
			if _, err := parseSchemeless(m); err != nil {
				return nil, fmt.Errorf("%w: provider %s: matchImages %q: %v", ErrBadProviderConfig, e.Name, m, err)
			}
		}
		d, err := time.ParseDuration(e.DefaultCacheDuration)
		if err != nil || d < 0 {
			return nil, fmt.Errorf("%w: provider %s: defaultCacheDuration %q is not a duration", ErrBadProviderConfig, e.Name, e.DefaultCacheDuration)
		}
		p.providers = append(p.providers, provider{ProviderConfigEntry: e, cacheDuration: d})
	}
	return p, nil
}

// Credentials implements Source: the first matching provider's credentials for the image
// host/repo.
func (p *Providers) Credentials(ctx context.Context, host, repo string) (string, string, error) {
	image := host // a lookup for the registry as a whole (no repository) names only the host
	if repo != "" {
		image += "/" + repo
	}
	target, err := parseSchemeless(image)
	if err != nil {
		return "", "", nil // no pattern can match it
	}
	var errs []error
	for _, pr := range p.providers {
		if !matchesAny(pr.MatchImages, target) {
			continue
		}
		auth, err := p.lookup(ctx, pr, image, host)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if a, ok := bestAuth(auth, target); ok {
			return a.Username, a.Password, nil
		}
	}
	return "", "", errors.Join(errs...)
}

// lookup returns the provider's auth map for image, from the cache or by running it.
func (p *Providers) lookup(ctx context.Context, pr provider, image, host string) (map[string]providerAuth, error) {
	now := time.Now()
	p.mu.Lock()
	for _, key := range []string{pr.Name + "\x00image\x00" + image, pr.Name + "\x00registry\x00" + host, pr.Name + "\x00global"} {
		if c, ok := p.cache[key]; ok && now.Before(c.expires) {
			p.mu.Unlock()
			return c.auth, nil
		}
	}
	p.mu.Unlock()

	resp, err := p.run(ctx, pr, image)
	if err != nil {
		return nil, err
	}
	ttl := pr.cacheDuration
	if resp.CacheDuration != "" {
		if ttl, err = time.ParseDuration(resp.CacheDuration); err != nil || ttl < 0 {
			return nil, fmt.Errorf("credentials: provider %s: cacheDuration %q is not a duration", pr.Name, resp.CacheDuration)
		}
	}
	var key string
	switch resp.CacheKeyType {
	case "Image":
		key = pr.Name + "\x00image\x00" + image
	case "Registry":
		key = pr.Name + "\x00registry\x00" + host
	case "Global":
		key = pr.Name + "\x00global"
	default:
		return nil, fmt.Errorf("credentials: provider %s: cacheKeyType %q, want Image, Registry or Global", pr.Name, resp.CacheKeyType)
	}
	if ttl > 0 {
		p.mu.Lock()
		p.cache[key] = cachedResponse{auth: resp.Auth, expires: now.Add(ttl)}
		p.mu.Unlock()
	}
	return resp.Auth, nil
}

// run executes the plugin with a CredentialProviderRequest for image on its standard input.
// Its output may hold secrets: errors report only its exit status or what was malformed.
func (p *Providers) run(ctx context.Context, pr provider, image string) (*providerResponse, error) {
	req, err := json.Marshal(providerRequest{APIVersion: pr.APIVersion, Kind: "CredentialProviderRequest", Image: image})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, providerTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(p.binDir, pr.Name), pr.Args...)
	cmd.Stdin = bytes.NewReader(req)
	cmd.Env = os.Environ()
	for _, e := range pr.Env {
		cmd.Env = append(cmd.Env, e.Name+"="+e.Value)
	}
	var stdout limitedBuffer
	stdout.limit = providerOutputLimit
	cmd.Stdout, cmd.Stderr = &stdout, io.Discard
	if err := cmd.Run(); err != nil {
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			err = fmt.Errorf("exit status %d", exitErr.ExitCode())
		}
		return nil, fmt.Errorf("credentials: provider %s for %s: %w", pr.Name, image, err)
	}
	if stdout.over {
		return nil, fmt.Errorf("credentials: provider %s for %s: more than %d bytes of output", pr.Name, image, providerOutputLimit)
	}
	var resp providerResponse
	if err := json.Unmarshal(stdout.Bytes(), &resp); err != nil {
		return nil, fmt.Errorf("credentials: provider %s for %s: unparsable response", pr.Name, image)
	}
	if resp.Kind != "CredentialProviderResponse" || resp.APIVersion != pr.APIVersion {
		return nil, fmt.Errorf("credentials: provider %s for %s: response is %q %q, want CredentialProviderResponse %q",
			pr.Name, image, resp.Kind, resp.APIVersion, pr.APIVersion)
	}
	return &resp, nil
}

// limitedBuffer keeps up to limit bytes and notes whether more were written.
type limitedBuffer struct {
	bytes.Buffer
	limit int
	over  bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.limit - b.Len(); len(p) > room {
		b.over = true
		p = p[:max(room, 0)]
	}
	b.Buffer.Write(p)
	return len(p), nil
}

// bestAuth picks the auth entry whose pattern matches target most specifically (the longest
// pattern), as kubelet's keyring does.
func bestAuth(auth map[string]providerAuth, target *url.URL) (providerAuth, bool) {
	best, found := "", false
	for pattern := range auth {
		glob, err := parseSchemeless(pattern)
		if err != nil || !urlMatches(glob, target) {
			continue
		}
		if !found || len(pattern) > len(best) || (len(pattern) == len(best) && pattern < best) {
			best, found = pattern, true
		}
	}
	return auth[best], found
}

func matchesAny(patterns []string, target *url.URL) bool {
	for _, p := range patterns {
		if glob, err := parseSchemeless(p); err == nil && urlMatches(glob, target) {
			return true
		}
	}
	return false
}

// parseSchemeless parses an image or pattern such as "*.registry.io:5000/team" as a URL.
func parseSchemeless(s string) (*url.URL, error) {
	if s == "" {
		return nil, errors.New("empty")
	}
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	return url.Parse(s)
}

// urlMatches is kubelet's matchImages rule: the same number of host labels, each matching
// its glob; the same port; the pattern's path a prefix of the image's.
func urlMatches(glob, target *url.URL) bool {
	gHost, gPort := splitHostPort(glob.Host)
	tHost, tPort := splitHostPort(target.Host)
	gParts, tParts := strings.Split(gHost, "."), strings.Split(tHost, ".")
	if len(gParts) != len(tParts) || gPort != tPort {
		return false
	}
	for i := range gParts {
		if ok, err := filepath.Match(gParts[i], tParts[i]); err != nil || !ok {
			return false
		}
	}
	return strings.HasPrefix(target.Path, glob.Path)
}

func splitHostPort(hostport string) (host, port string) {
	if h, p, err := net.SplitHostPort(hostport); err == nil {
		return h, p
	}
	return hostport, ""
}
