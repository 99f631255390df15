package bdd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"reflect"
	"slices"
	"sync"
	"time"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/bddclient"
	"github.com/obdproject/obd/blockdev"
	"github.com/obdproject/obd/blockdev/fdkeeper"
	"github.com/obdproject/obd/blocktrace"
	"github.com/obdproject/obd/credentials"
	"github.com/obdproject/obd/lsmt"
	"github.com/obdproject/obd/remotefetch"
	"github.com/obdproject/obd/tarblob"
	"github.com/obdproject/obd/zfile"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrNotFound is returned for a device id bdd does not know.
var ErrNotFound = errors.New("no such device")

// ErrLimit is returned for a request a configured limit refuses.
var ErrLimit = errors.New("limit reached")

// ErrKeyInUse is returned for an Attach whose idempotency key names a device that stacks
// something else.
var ErrKeyInUse = errors.New("idempotency key in use")

// ErrKeyBusy is returned for an Attach whose idempotency key names a device being attached
// or awaiting its restore: the call may be tried again.
var ErrKeyBusy = errors.New("idempotency key busy")

// Server implements the control API. It owns the devices, the remote fetcher and
// the state store. Create it with NewServer, bring persisted devices back with
// Restore, and serve it with Serve.
type Server struct {
	bddv1.UnimplementedDaemonServer

	cfg     Config
	log     *slog.Logger
	store   *StateStore
	fetcher *remotefetch.Fetcher
	// pulled holds the credentials PutCredentials was given (CRI pulls), in memory only.
	pulled  *credentials.Memory
	layers  *layerPool
	metrics *metrics
	replays *replays

	// keeperCommand starts the fd keeper; keeperClient is connected on first use.
	keeperCommand []string
	keeperMu      sync.Mutex
	keeperClient  *fdkeeper.Client

	// retries are the background retries of failed restores.
	retries sync.WaitGroup

	mu      sync.Mutex
	devices map[string]*device
	// busy holds ids being attached or detached, so concurrent calls on one id
	// do not race.
	busy map[string]bool
	// uppers maps each upper dir in use (attached or being attached) to its device:
	// two devices writing one upper would corrupt it.
	uppers map[string]string
	// keys maps each idempotency key to its device (attached, being attached, or kept
	// for restore).
	keys map[string]string
}

// Option configures a Server.
type Option func(*Server)

// WithKeeperCommand names the command that runs the fd keeper (RunKeeper), e.g.
// bdd's own executable with its keeper subcommand. Without it FUSE devices do not
// survive a crash of bdd.
func WithKeeperCommand(argv ...string) Option {
	return func(s *Server) { s.keeperCommand = argv }
}

// NewServer opens the state store and the remote fetcher described by cfg and
// registers bdd's metrics (and the fetcher's) with reg.
func NewServer(cfg Config, log *slog.Logger, reg prometheus.Registerer, opts ...Option) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := privateDir(cfg.RunDir); err != nil {
		return nil, fmt.Errorf("bdd: run_dir: %w", err)
	}
	store, err := OpenStateStore(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	pulled := &credentials.Memory{}
	creds, err := credentialSources(cfg.Registry, pulled)
	if err != nil {
		return nil, err
	}
	fetcher, err := remotefetch.New(remotefetch.Options{
		CacheDir:        cfg.Cache.Dir,
		CacheSize:       int64(cfg.Cache.Size),
		FillUnit:        int64(cfg.Cache.FillUnit),
		HostsDir:        cfg.Registry.CertsDir,
		Credentials:     creds,
		ReadTimeout:     time.Duration(cfg.Registry.ReadTimeout),
		RequireVerified: cfg.Registry.RequireVerified,
		BackgroundDelay: time.Duration(cfg.Cache.BackgroundDelay),
		BackgroundRate:  int64(cfg.Cache.BackgroundRate),
		IPFS:            remotefetch.IPFSOptions{Gateway: cfg.IPFS.Gateway, API: cfg.IPFS.API, Wait: time.Duration(cfg.IPFS.Wait)},
		MaxConnsPerHost: cfg.Limits.MaxRegistryConnections,
		Registerer:      reg,
		Logger:          log,
	})
	if err != nil {
		return nil, fmt.Errorf("bdd: remote fetcher: %w", err)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:     cfg,
		log:     log,
		store:   store,
		fetcher: fetcher,
		pulled:  pulled,
		layers:  newLayerPool(fetcher),
		metrics: m,
		replays: newReplays(),
		devices: map[string]*device{},
		busy:    map[string]bool{},
		uppers:  map[string]string{},
		keys:    map[string]string{},
	}
	for _, o := range opts {
		o(s)
	}
	return s, nil
}

// privateDir makes dir a directory only its owner can enter, whatever mode it had: it holds
// the devices' FUSE files and NBD sockets, through which the devices can be read and
// written. A symbolic link there is refused rather than followed.
func privateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory (%v)", dir, st.Mode().Type())
	}
	return os.Chmod(dir, 0o700)
}

// newID returns a short random id not in use.
func (s *Server) newID() string {
	for {
		var b [4]byte
		rand.Read(b[:])
		id := hex.EncodeToString(b[:])
		if s.devices[id] == nil && !s.busy[id] {
			return id
		}
	}
}

// Attach opens the requested stack, exposes it and persists its spec before
// returning, so that the device survives a restart of bdd.
func (s *Server) Attach(ctx context.Context, req *bddv1.AttachRequest) (*bddv1.AttachResponse, error) {
	spec, err := specFromRequest("", req, s.cfg.Transport)
	if err != nil {
		s.metrics.attachErrors.Inc()
		return nil, grpcError(err)
	}
	s.mu.Lock()
	if existing, err := s.keyedLocked(spec); existing != nil || err != nil {
		var resp *bddv1.AttachResponse
		if existing != nil {
			resp = &bddv1.AttachResponse{Device: existing.toAPI()}
		}
		s.mu.Unlock()
		if err != nil {
			s.metrics.attachErrors.Inc()
			return nil, grpcError(err)
		}
		s.log.Info("attach: the device with this key", "device", existing.spec.ID, "key", spec.Key)
		return resp, nil
	}
	if n := len(s.devices) + len(s.busy); n >= s.cfg.Limits.MaxDevices {
		s.mu.Unlock()
		s.metrics.attachErrors.Inc()
		return nil, grpcError(fmt.Errorf("%w: %d devices attached or in progress, limits.max_devices is %d", ErrLimit, n, s.cfg.Limits.MaxDevices))
	}
	id := s.newID()
	spec.ID = id
	s.busy[id] = true
	if spec.Key != "" {
		s.keys[spec.Key] = id
	}
	s.mu.Unlock()
	defer s.release(id)

	err = s.authorizeCached(ctx, spec)
	if err == nil {
		err = s.reserveUpper(spec)
	}
	if err != nil {
		s.releaseKey(id)
		s.metrics.attachErrors.Inc()
		return nil, grpcError(err)
	}
	d, err := s.attach(ctx, spec, false)
	if err == nil {
		if err = s.store.Save(spec); err != nil {
			err = errors.Join(err, s.closeDevice(d))
		}
	}
	if err != nil {
		s.releaseUpper(spec)
		s.releaseKey(id)
		s.metrics.attachErrors.Inc()
		s.log.Error("attach failed", "device", id, "err", err)
		return nil, grpcError(err)
	}
	s.add(d)
	s.log.Info("attached", "device", id, "path", d.path, "nbd", d.nbdSocket, "layers", len(spec.Layers), "upper", spec.UpperDir, "key", spec.Key)
	return &bddv1.AttachResponse{Device: d.toAPI()}, nil
}

// keyedLocked returns the device that spec's idempotency key names, if it names one that
// is attached and stacks what spec asks for; a key naming another stack, or a device being
// attached or awaiting its restore, is an error. s.mu is held.
func (s *Server) keyedLocked(spec DeviceSpec) (*device, error) {
	id, ok := s.keys[spec.Key]
	if spec.Key == "" || !ok {
		return nil, nil
	}
	d := s.devices[id]
	switch {
	case d == nil:
		return nil, fmt.Errorf("%w: device %s with idempotency key %q is being attached or awaits its restore", ErrKeyBusy, id, spec.Key)
	case !sameStack(d.spec, spec):
		return nil, fmt.Errorf("%w: idempotency key %q names device %s, which stacks other layers or options", ErrKeyInUse, spec.Key, id)
	}
	return d, nil
}

// sameStack says whether a and b ask for the same device, ids aside.
func sameStack(a, b DeviceSpec) bool {
	a.ID, b.ID = "", ""
	return reflect.DeepEqual(a, b)
}

// releaseKey frees the idempotency key of device id, if it has one.
func (s *Server) releaseKey(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for key, owner := range s.keys {
		if owner == id {
			delete(s.keys, key)
		}
	}
}

// attach opens spec's stack and exposes it; resume asks the transport to take
// over a device that survived a restart of bdd instead of creating a new one.
func (s *Server) attach(ctx context.Context, spec DeviceSpec, resume bool) (*device, error) {
	stack, layers, err := s.openStack(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("device %s: %w", spec.ID, err)
	}
	d := &device{spec: spec, stack: stack, layers: layers}
	d.prefetch = s.newPrefetcher(d)
	if err := s.expose(ctx, d, resume); err != nil {
		return nil, errors.Join(fmt.Errorf("device %s: %s transport: %w", spec.ID, spec.Transport, err), s.closeDevice(d))
	}
	d.prefetch.start()
	return d, nil
}

func (s *Server) add(d *device) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.devices[d.spec.ID] = d
	s.metrics.devices.Set(float64(len(s.devices)))
}

// reserveUpper claims spec's upper dir for spec's device.
func (s *Server) reserveUpper(spec DeviceSpec) error {
	if spec.UpperDir == "" {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if other, ok := s.uppers[spec.UpperDir]; ok {
		return fmt.Errorf("%w: upper dir %s is in use by device %s", ErrInvalidRequest, spec.UpperDir, other)
	}
	s.uppers[spec.UpperDir] = spec.ID
	return nil
}

func (s *Server) releaseUpper(spec DeviceSpec) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.uppers[spec.UpperDir] == spec.ID {
		delete(s.uppers, spec.UpperDir)
	}
}

func (s *Server) release(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.busy, id)
}

// Restore brings back every device persisted in the state dir, resuming the
// transport where it survived. A device that cannot be restored is logged, its state is
// kept, and its restore is tried again in the background with growing pauses
// (restoreRetries times, until ctx ends or it is detached: Detach also releases what the
// keeper holds for it); the joined error names the first failures.
func (s *Server) Restore(ctx context.Context) error {
	specs, loadErr := s.store.LoadAll()
	errs := []error{loadErr}
	s.mu.Lock()
	for _, spec := range specs {
		if spec.Key != "" {
			s.keys[spec.Key] = spec.ID
		}
	}
	s.mu.Unlock()
	for _, spec := range specs {
		if err := s.restore(ctx, spec); err != nil {
			s.log.Error("restore failed", "device", spec.ID, "err", err)
			errs = append(errs, err)
			s.retries.Go(func() { s.retryRestore(ctx, spec) })
		}
	}
	errs = append(errs, s.dropOrphans(ctx, specs))
	return errors.Join(errs...)
}

// Restores that failed are tried again this many times, after pauses doubling from
// restoreBackoff up to restoreBackoffMax (a registry or a layer's disk may come back).
const (
	restoreRetries    = 8
	restoreBackoff    = time.Second
	restoreBackoffMax = time.Minute
)

// restore attaches spec's device again, resuming its transport.
func (s *Server) restore(ctx context.Context, spec DeviceSpec) error {
	if err := s.reserveUpper(spec); err != nil {
		return err
	}
	d, err := s.attach(ctx, spec, true)
	if err != nil {
		s.releaseUpper(spec)
		return err
	}
	s.add(d)
	s.log.Info("restored", "device", spec.ID, "path", d.path, "nbd", d.nbdSocket)
	return nil
}

// retryRestore tries restore again with backoff while the device's state exists.
func (s *Server) retryRestore(ctx context.Context, spec DeviceSpec) {
	delay := restoreBackoff
	for attempt := 1; attempt <= restoreRetries; attempt++ {
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, restoreBackoffMax)
		s.mu.Lock()
		if s.busy[spec.ID] { // being detached: try later, or find its state gone
			s.mu.Unlock()
			continue
		}
		s.busy[spec.ID] = true
		s.mu.Unlock()
		var err error
		if s.store.Exists(spec.ID) {
			err = s.restore(ctx, spec)
		}
		s.release(spec.ID)
		if err == nil {
			return
		}
		s.log.Warn("restore retry failed", "device", spec.ID, "attempt", attempt, "err", err)
	}
	s.log.Error("restore abandoned: detach the device to release it", "device", spec.ID, "attempts", restoreRetries)
}

// Detach stops serving a device and forgets it. A device that is still mounted
// is left alone and the call fails with FailedPrecondition.
func (s *Server) Detach(ctx context.Context, req *bddv1.DetachRequest) (*bddv1.DetachResponse, error) {
	id := req.GetId()
	s.mu.Lock()
	d := s.devices[id]
	if s.busy[id] {
		s.mu.Unlock()
		return nil, status.Errorf(codes.Aborted, "device %s is being attached or detached", id)
	}
	s.busy[id] = true
	s.mu.Unlock()
	defer s.release(id)

	if d == nil {
		// A device whose restore failed has only its state left.
		if !validID.MatchString(id) || !s.store.Exists(id) {
			return nil, grpcError(fmt.Errorf("device %q: %w", id, ErrNotFound))
		}
		if err := s.releaseHeld(ctx, nil, id); err != nil {
			return nil, grpcError(fmt.Errorf("detach unrestored device %s: %w", id, err))
		}
		if err := s.store.Remove(id); err != nil {
			return nil, grpcError(err)
		}
		s.releaseKey(id)
		s.log.Info("dropped an unrestored device: its FUSE connection and state", "device", id)
		return &bddv1.DetachResponse{}, nil
	}
	if err := s.closeDevice(d); err != nil {
		return nil, grpcError(fmt.Errorf("detach device %s: %w", id, err))
	}
	s.mu.Lock()
	delete(s.devices, id)
	s.metrics.devices.Set(float64(len(s.devices)))
	s.mu.Unlock()
	s.releaseUpper(d.spec)
	if err := s.store.Remove(id); err != nil {
		return nil, grpcError(err)
	}
	s.releaseKey(id)
	s.log.Info("detached", "device", id)
	return &bddv1.DetachResponse{}, nil
}

// List returns the attached devices.
func (s *Server) List(context.Context, *bddv1.ListRequest) (*bddv1.ListResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := &bddv1.ListResponse{}
	for _, d := range s.devices {
		resp.Devices = append(resp.Devices, d.toAPI())
	}
	sortDevices(resp.Devices)
	return resp, nil
}

// Stats returns the counters of each lower layer; local layers report zeros.
func (s *Server) Stats(_ context.Context, req *bddv1.StatsRequest) (*bddv1.StatsResponse, error) {
	s.mu.Lock()
	d := s.devices[req.GetId()]
	s.mu.Unlock()
	if d == nil {
		return nil, grpcError(fmt.Errorf("device %q: %w", req.GetId(), ErrNotFound))
	}
	resp := &bddv1.StatsResponse{Id: d.spec.ID}
	for i, l := range d.layers {
		ls := &bddv1.LayerStats{Index: int32(i), Name: d.spec.Layers[i].Name()}
		if l.blob != nil {
			st := l.blob.Stats()
			ls.Hits, ls.Misses, ls.BytesFetched, ls.Retries, ls.Errors = st.Hits, st.Misses, st.BytesFetched, st.Retries, st.Errors
		}
		resp.Layers = append(resp.Layers, ls)
	}
	return resp, nil
}

// StartTrace starts recording the ranges read from remote layers.
func (s *Server) StartTrace(context.Context, *bddv1.StartTraceRequest) (*bddv1.StartTraceResponse, error) {
	s.fetcher.StartTrace()
	return &bddv1.StartTraceResponse{}, nil
}

// StopTrace stops recording and returns the ranges read since StartTrace.
func (s *Server) StopTrace(context.Context, *bddv1.StopTraceRequest) (*bddv1.StopTraceResponse, error) {
	trace, err := s.fetcher.StopTrace().Encode()
	if err != nil {
		return nil, grpcError(fmt.Errorf("encode trace: %w", err))
	}
	return &bddv1.StopTraceResponse{Trace: trace}, nil
}

// Prefetch fetches every range of a trace into the cache. Devices over the trace's blobs
// stop fetching ahead meanwhile (see replays).
func (s *Server) Prefetch(ctx context.Context, req *bddv1.PrefetchRequest) (*bddv1.PrefetchResponse, error) {
	trace, err := blocktrace.Decode(req.GetTrace())
	if err != nil {
		return nil, grpcError(fmt.Errorf("%w: trace: %w", ErrInvalidRequest, err))
	}
	blobs := make([]digest.Digest, len(trace.Blobs))
	for i, b := range trace.Blobs {
		blobs[i] = b.Digest
	}
	s.replays.begin(blobs)
	defer s.replays.end(blobs)
	replayed, warmed := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(warmed)
		s.warmSeekIndexes(ctx, trace, replayed)
	}()
	err = s.fetcher.Prefetch(ctx, trace)
	close(replayed)
	<-warmed
	if err != nil {
		return nil, grpcError(fmt.Errorf("prefetch: %w", err))
	}
	return &bddv1.PrefetchResponse{}, nil
}

// warmIndexPoll is how often a replay looks for the indexed layers of its blobs to open: a
// snapshotter replays a trace while the device is being attached.
const warmIndexPoll = 10 * time.Millisecond

// warmSeekIndexes fetches, beside a replay of trace, the seek index windows that the traced
// reads of indexed layers' blobs will need: without them each span's first read waits for its
// window. A blob whose indexed layer is not open yet is looked for again until the replay
// ends. Fetch errors only cost the warm-up.
func (s *Server) warmSeekIndexes(ctx context.Context, trace blocktrace.Trace, replayed <-chan struct{}) {
	pending := slices.Clone(trace.Blobs)
	for {
		left := pending[:0]
		for _, tb := range pending {
			seek, blob := s.layers.seekIndex(tb.Digest)
			if seek == nil {
				left = append(left, tb)
				continue
			}
			ranges := make([][2]int64, len(tb.Ranges))
			for i, r := range tb.Ranges {
				ranges[i] = [2]int64{r.Off, r.Len}
			}
			windows := seek.WindowRanges(ranges)
			var n int64
			for _, w := range windows {
				if err := blob.FillRange(ctx, w[0], w[1]); err != nil {
					s.log.WarnContext(ctx, "seek index windows not warmed", "blob", tb.Digest, "err", err)
					break
				}
				n += w[1]
			}
			s.log.InfoContext(ctx, "seek index windows warmed", "blob", tb.Digest, "ranges", len(windows), "bytes", n)
		}
		pending = left
		if len(pending) == 0 {
			return
		}
		select {
		case <-replayed:
			return
		case <-ctx.Done():
			return
		case <-time.After(warmIndexPoll):
		}
	}
}

// grpcError maps errors to status codes callers can branch on.
func grpcError(err error) error {
	code := codes.Internal
	switch {
	case errors.Is(err, ErrInvalidRequest), errors.Is(err, lsmt.ErrFormat), errors.Is(err, zfile.ErrFormat),
		errors.Is(err, tarblob.ErrNotLayerTar), errors.Is(err, lsmt.ErrTooManyLayers):
		code = codes.InvalidArgument
	case errors.Is(err, ErrNotFound), errors.Is(err, fs.ErrNotExist):
		code = codes.NotFound
	case errors.Is(err, blockdev.ErrBusy), errors.Is(err, remotefetch.ErrUnverified):
		code = codes.FailedPrecondition
	case errors.Is(err, ErrLimit):
		code = codes.ResourceExhausted
	case errors.Is(err, remotefetch.ErrUnauthorized):
		code = codes.PermissionDenied
	case errors.Is(err, ErrKeyInUse):
		code = codes.AlreadyExists
	case errors.Is(err, ErrKeyBusy):
		code = codes.Aborted
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	}
	return status.Error(code, err.Error())
}

// Shutdown makes every writable device durable, stops the NBD exports and closes
// the remote fetcher (making the cache durable); it does not detach anything, so a
// restarted bdd picks every device up again (FUSE devices stay alive in the keeper
// meanwhile). The state files are kept. Call it after Serve has returned and the context
// given to Restore is done (Shutdown waits for the restores it retries).
func (s *Server) Shutdown() error {
	s.retries.Wait() // they end with Restore's context
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for id, d := range s.devices {
		if err := d.stack.Sync(); err != nil {
			errs = append(errs, fmt.Errorf("device %s: sync: %w", id, err))
		}
		if d.spec.Transport == bddclient.TransportNBD {
			errs = append(errs, s.closeDevice(d))
			delete(s.devices, id)
		}
	}
	errs = append(errs, s.fetcher.Close())
	s.keeperMu.Lock()
	defer s.keeperMu.Unlock()
	if s.keeperClient != nil {
		errs = append(errs, s.keeperClient.Close())
		s.keeperClient = nil
	}
	return errors.Join(errs...)
}
