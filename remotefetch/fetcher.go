// Package remotefetch is the remotefetch.Blob box, at the bottom of the read path in
// docs/DESIGN.md: it opens a layer blob in an OCI registry as an io.ReaderAt (Blob) that fetches
// byte ranges on demand, so the tar, zfile and lsmt readers can sit directly on top of it.
//
// Layers inside: Blob, the read front (reads under a per-read deadline from the cache or
// through the filler, sequential readahead, trace recording; blob.go, readahead.go); its
// filler, behind the small source interface (fill-unit claims with one fetch per unit, merged
// adjacent misses, retries with backoff, digest verification: filler.go, retry.go; streaming,
// where readers copy response bytes from memory as they arrive while batches are stored
// behind them: stream.go; exact range fills for trace replay: rangefetch.go; background fill:
// background.go); remote (range GETs: hosts.toml mirrors and TLS via containerd's
// remotes/docker config, basic/bearer auth via its authorizer, redirects, strict response
// checks; before them, for a blob named ipfs://<CID>, the node's IPFS gateway: ipfs.go); cache (persistent sparse file and fill bitmap per digest, filled through commit or
// abort Writers, package remotefetch/cache); and trace/prefetch.
package remotefetch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/obdproject/obd/credentials"
	"github.com/obdproject/obd/ipfsnode"
	"github.com/obdproject/obd/remotefetch/cache"
)

// Options configure a Fetcher. Zero values take the documented defaults.
type Options struct {
	CacheDir  string // required: where cached blobs live (see package cache)
	CacheSize int64  // bytes; 0 = unlimited. Whole unheld blobs are evicted, LRU first.
	FillUnit  int64  // cache fill granularity; default 256 KiB, a multiple of 4 KiB
	// HostsDir is a containerd certs.d directory (<dir>/<host>/hosts.toml: mirrors, TLS,
	// plain HTTP, headers); "" = default hosts only.
	HostsDir string
	// DockerConfig is the path of Docker's config.json for credentials; "" = $DOCKER_CONFIG
	// or ~/.docker/config.json. The file is read again when it changes. Unused when
	// Credentials is set.
	DockerConfig string
	// Credentials answers credential lookups per registry host and repository; nil = the
	// Docker config at DockerConfig. A registry that refuses a read's credentials makes the
	// next attempt ask again, with a fresh authorizer (tokens fetched anew).
	Credentials credentials.Source
	// ReadTimeout bounds every ReadAt, retries included; default 30 s.
	ReadTimeout time.Duration
	// MaxRequestSize bounds one merged range request and the sequential readahead; default
	// 8 MiB, at least FillUnit.
	MaxRequestSize int64
	// StallTimeout aborts and retries a request when no bytes arrive for this long; default
	// ReadTimeout/3, at most 10 s.
	StallTimeout time.Duration
	// BackgroundDelay is how long after Open the rest of the blob starts downloading in the
	// background; 0 = 10 s, < 0 disables background fill.
	BackgroundDelay time.Duration
	// BackgroundRate limits background fill, in bytes/s; 0 = 16 MiB/s.
	BackgroundRate int64
	// RedirectReuse is how long a redirect target (e.g. a presigned storage URL) is used
	// directly; default 5 minutes.
	RedirectReuse time.Duration
	// MaxConnsPerHost bounds the connections open to one registry host (mirror or
	// redirect target); more requests wait for one. 0 = unlimited.
	MaxConnsPerHost int
	// PlainHTTP uses http:// for registries without a hosts.toml; hosts.toml can also say so
	// per host. Loopback registries with a port use HTTP anyway.
	PlainHTTP bool
	// RequireVerified refuses to open a blob without a range table (WithRangeTable): one
	// whose bytes can be checked only once all of them are in.
	RequireVerified bool
	// MaxRangeTable bounds the size of a blob's range table; default DefaultMaxRangeTable.
	MaxRangeTable int64
	// IPFS reads blobs named by an ipfs://<CID> URL (WithIPFS) through the node's IPFS
	// gateway first, and adds the blobs the node holds whole to its IPFS (ipfs.go).
	IPFS IPFSOptions
	// RangeTableMemory bounds the bytes of range tables in memory over all open blobs; a
	// blob whose table would pass it fails its reads. Default DefaultRangeTableMemory.
	RangeTableMemory int64
	Registerer       prometheus.Registerer // nil = metrics are not exported
	Logger           *slog.Logger          // nil = no logging
}

// blobKey is what an open Blob is shared by: its cache entry (verify.go) and the repository it
// fetches from. Opens of one entry from two repositories share the entry's checked bytes but
// not a Blob: each fetches from its own registry, so a registry that serves wrong bytes fails
// only its own images' reads.
type blobKey struct {
	key  cache.Key
	repo string // registry host and repository
}

// Fetcher opens blobs; it holds the cache, registry connections and token caches. It is safe
// for concurrent use.
type Fetcher struct {
	opts    Options
	log     *slog.Logger
	cache   *cache.Cache
	creds   credentials.Source
	metrics *metrics
	hosts   docker.RegistryHosts
	ipfs    *ipfsNode // nil: no IPFS reads

	mu         sync.Mutex
	hostsCache map[string][]docker.RegistryHost // by registry domain, so connections are shared
	repoHosts  map[string][]docker.RegistryHost // by domain/repository: hostsCache with the repository's authorizer
	health     hostHealth                       // mirrors passed over for a while (mirror.go)

	trMu       sync.Mutex
	transports []*http.Transport // to drop idle connections on Close
	blobs      map[blobKey]*Blob // open blobs, shared by every Open of one key
	closed     bool

	tracer tracer

	batches sync.Pool // *[]byte of batchBytes, the buffers responses stream through

	tables tableBudget // range tables in memory
}

// New creates a Fetcher.
func New(opts Options) (*Fetcher, error) {
	if opts.CacheDir == "" {
		return nil, errors.New("remotefetch: Options.CacheDir is required")
	}
	if opts.FillUnit == 0 {
		opts.FillUnit = cache.DefaultFillUnit
	}
	if opts.ReadTimeout <= 0 {
		opts.ReadTimeout = 30 * time.Second
	}
	if opts.MaxRequestSize == 0 {
		opts.MaxRequestSize = 8 << 20
	}
	opts.MaxRequestSize = max(opts.FillUnit, opts.MaxRequestSize/opts.FillUnit*opts.FillUnit)
	if opts.StallTimeout <= 0 {
		opts.StallTimeout = min(opts.ReadTimeout/3, 10*time.Second)
	}
	if opts.BackgroundDelay == 0 {
		opts.BackgroundDelay = 10 * time.Second
	}
	if opts.BackgroundRate <= 0 {
		opts.BackgroundRate = 16 << 20
	}
	if opts.RedirectReuse <= 0 {
		opts.RedirectReuse = 5 * time.Minute
	}
	if opts.MaxRangeTable <= 0 {
		opts.MaxRangeTable = DefaultMaxRangeTable
	}
	if opts.RangeTableMemory <= 0 {
		opts.RangeTableMemory = DefaultRangeTableMemory
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	creds := opts.Credentials
	if creds == nil {
		file, err := credentials.NewFile(opts.DockerConfig)
		if err != nil {
			return nil, fmt.Errorf("remotefetch: %w", err)
		}
		creds = file
	}
	node, err := newIPFSNode(opts.IPFS, opts.MaxConnsPerHost)
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	if node != nil {
		node.metrics = m
	}
	c, err := cache.Open(cache.Options{Dir: opts.CacheDir, FillUnit: opts.FillUnit, Capacity: opts.CacheSize, Logger: opts.Logger})
	if err != nil {
		return nil, fmt.Errorf("remotefetch: %w", err)
	}
	f := &Fetcher{opts: opts, log: opts.Logger, cache: c, creds: creds, metrics: m,
		hostsCache: map[string][]docker.RegistryHost{}, repoHosts: map[string][]docker.RegistryHost{},
		blobs: map[blobKey]*Blob{}, ipfs: node}
	f.tables.limit = opts.RangeTableMemory
	batchBytes := max(1, streamBatch/opts.FillUnit) * opts.FillUnit
	f.batches.New = func() any { buf := make([]byte, batchBytes); return &buf }
	hostOpts := config.HostOptions{
		// Lookups without a repository (the Resolver's); blob reads use their repository's.
		Credentials: func(host string) (string, string, error) {
			return lookupCredentials(creds, host, "")
		},
		UpdateClient: func(c *http.Client) error {
			if tr, ok := c.Transport.(*http.Transport); ok {
				// Many concurrent range reads go to one host: keep their connections.
				tr.MaxIdleConns = 64
				tr.MaxIdleConnsPerHost = 32
				tr.MaxConnsPerHost = opts.MaxConnsPerHost
				// containerd may wrap the transport in an HTTP fallback that hides
				// CloseIdleConnections, so remember it here.
				f.trMu.Lock()
				f.transports = append(f.transports, tr)
				f.trMu.Unlock()
			}
			return nil
		},
	}
	if opts.HostsDir != "" {
		hostOpts.HostDir = config.HostDirFromRoot(opts.HostsDir)
	}
	if opts.PlainHTTP {
		hostOpts.DefaultScheme = "http"
	}
	f.hosts = config.ConfigureHosts(context.Background(), hostOpts)
	return f, nil
}

// registryHosts returns the pull hosts for a registry domain, mirrors first.
func (f *Fetcher) registryHosts(domain string) ([]docker.RegistryHost, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if hs, ok := f.hostsCache[domain]; ok {
		return hs, nil
	}
	all, err := f.hosts(domain)
	if err != nil {
		return nil, fmt.Errorf("remotefetch: hosts for %s: %w", domain, err)
	}
	var hs []docker.RegistryHost
	for _, h := range all {
		if h.Capabilities.Has(docker.HostCapabilityPull) {
			hs = append(hs, h)
		}
	}
	if len(hs) == 0 {
		return nil, fmt.Errorf("remotefetch: no pull host configured for %s", domain)
	}
	f.hostsCache[domain] = hs
	return hs, nil
}

// credentialsTimeout bounds one credential lookup (a helper or provider plugin run).
const credentialsTimeout = 15 * time.Second

func lookupCredentials(src credentials.Source, host, repo string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), credentialsTimeout)
	defer cancel()
	return src.Credentials(ctx, host, repo)
}

// repositoryHosts returns the pull hosts of domain with an authorizer of their own for repo,
// whose credential lookups name the repository (CRI's credentials are per image).
func (f *Fetcher) repositoryHosts(domain, repo string) ([]docker.RegistryHost, error) {
	shared, err := f.registryHosts(domain)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	key := domain + "/" + repo
	if hs, ok := f.repoHosts[key]; ok {
		return hs, nil
	}
	hs := make([]docker.RegistryHost, len(shared))
	for i, h := range shared {
		h.Authorizer = newRepoAuthorizer(h.Client, h.Header, func(host string) (string, string, error) {
			return lookupCredentials(f.creds, host, repo)
		})
		hs[i] = h
	}
	f.repoHosts[key] = hs
	return hs, nil
}

// Open returns the blob dgst of size bytes in the repository of image reference ref (e.g.
// "registry.example.com/team/app:v1"; tag or digest are ignored). It does no network I/O
// but to start loading the range table (WithRangeTable); reads fetch what they need. A blob
// that is already open in the same scope (verify.go: the same range table, or for a blob
// without one, the same repository) is shared (same *Blob, so misses on one unit cause one
// fetch however many users read it); each Open needs its own Close.
func (f *Fetcher) Open(ctx context.Context, ref string, dgst digest.Digest, size int64, opts ...OpenOption) (*Blob, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return nil, fmt.Errorf("remotefetch: reference %q: %w", ref, err)
	}
	if err := dgst.Validate(); err != nil {
		return nil, fmt.Errorf("remotefetch: digest %q: %w", dgst, err)
	}
	if size < 0 {
		return nil, fmt.Errorf("remotefetch: blob %s: negative size %d", dgst, size)
	}
	var o openOptions
	for _, opt := range opts {
		opt(&o)
	}
	if o.ipfs != "" {
		if err := ipfsnode.CheckCID(o.ipfs); err != nil {
			return nil, fmt.Errorf("remotefetch: blob %s: IPFS CID %q: %w", dgst, o.ipfs, err)
		}
	}
	if o.table != "" {
		if err := checkTablePin(dgst, size, o, f.opts.MaxRangeTable); err != nil {
			return nil, err
		}
	} else if f.opts.RequireVerified && !o.checked && !o.replay {
		return nil, fmt.Errorf("remotefetch: blob %s of %s: %w", dgst, ref, ErrUnverified)
	}
	domain, repo := reference.Domain(named), reference.Path(named)
	key := scopeKey(dgst, o, domain, repo)
	if f.cache.Verified(dgst) {
		key = cache.Key{Digest: dgst} // checked whole against its digest: for everyone
	}
	hosts, err := f.repositoryHosts(domain, repo)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, ErrClosed
	}
	bkey := blobKey{key: key, repo: domain + "/" + repo}
	// A replay may fill a blob without a table under RequireVerified only while a caller that
	// checks every range it reads has it open: its bytes reach no one else (every other open
	// of it is refused or checks too).
	if o.replay && o.table == "" && f.opts.RequireVerified {
		if b := f.blobs[bkey]; b == nil || !b.checked {
			return nil, fmt.Errorf("remotefetch: blob %s of %s: %w", dgst, ref, ErrUnverified)
		}
	}
	if b := f.blobs[bkey]; b != nil {
		if b.size != size {
			return nil, fmt.Errorf("remotefetch: blob %s opened with size %d, already open with size %d", dgst, size, b.size)
		}
		b.refs++
		return b, nil
	}
	entry, err := f.cache.AcquireKey(key, size)
	if err != nil {
		return nil, fmt.Errorf("remotefetch: %w", err)
	}
	rem := &remote{hosts: hosts, refHost: domain, repo: repo, dgst: dgst, size: size, reuse: f.opts.RedirectReuse,
		health: &f.health, mirrorWait: mirrorWait(f.opts.StallTimeout), log: f.log}
	if o.ipfs != "" && o.table != "" && f.ipfs != nil {
		rem.ipfs = &ipfsBlob{node: f.ipfs, cid: o.ipfs}
	}
	var table *tableLoader
	if o.table != "" {
		table = &tableLoader{table: o.table, offset: o.tableOffset, size: size, budget: &f.tables}
	}
	b := newBlob(f, named.String(), bkey, size, entry, rem, table)
	b.checked = o.checked
	f.blobs[bkey] = b
	return b, nil
}

// release drops one reference to b and reports whether it was the last.
func (f *Fetcher) release(b *Blob) (last bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if b.refs <= 0 {
		return false, fmt.Errorf("remotefetch: blob %s: %w", b.dgst, ErrClosed)
	}
	b.refs--
	if b.refs > 0 {
		return false, nil
	}
	delete(f.blobs, b.bkey)
	return true, nil
}

// Close closes every open Blob, makes the cache durable and drops idle connections.
func (f *Fetcher) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	blobs := make([]*Blob, 0, len(f.blobs))
	for _, b := range f.blobs {
		b.refs = 0
		blobs = append(blobs, b)
	}
	clear(f.blobs)
	f.mu.Unlock()
	var errs []error
	for _, b := range blobs {
		errs = append(errs, b.shutdown())
	}
	errs = append(errs, f.cache.Close())
	f.trMu.Lock()
	for _, tr := range f.transports {
		tr.CloseIdleConnections()
	}
	f.trMu.Unlock()
	if f.ipfs != nil {
		f.ipfs.client.CloseIdleConnections()
	}
	return errors.Join(errs...)
}

// CacheUsage is the number of bytes the cache holds.
func (f *Fetcher) CacheUsage() int64 { return f.cache.Usage() }

// Resolver returns a resolver for manifests and other non-layer content of the fetcher's
// registries, with the same hosts.toml (mirrors, TLS) and credentials as its blob reads.
func (f *Fetcher) Resolver() remotes.Resolver {
	return docker.NewResolver(docker.ResolverOptions{Hosts: f.hosts})
}
