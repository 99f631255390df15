// Command obd-lambda serves serverless functions in lean sandboxes (package sandbox): an HTTP
// API to register functions and invoke them with JSON, sandboxes started cold, forked from
// zygotes, or thawed from the handler cache. The logic lives in package sandbox; this file
// parses flags and wires it up.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/obdproject/obd/bddclient"
	"github.com/obdproject/obd/checkpoint"
	"github.com/obdproject/obd/convert"
	"github.com/obdproject/obd/policy/live"
	"github.com/obdproject/obd/sandbox"
	"github.com/obdproject/obd/sandbox/bddrootfs"
	"github.com/obdproject/obd/sandbox/cgroup"
	"github.com/obdproject/obd/sandbox/ckptstart"
	"github.com/spf13/cobra"
)

func main() {
	if err := newCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "obd-lambda:", err)
		os.Exit(1)
	}
}

// defaultSocket is where obd-lambda listens, and `obd sandbox` connects, by default.
const defaultSocket = "/run/obd/lambda.sock"

// listen opens addr: a unix socket only root can use when addr is a path, else TCP.
func listen(addr string) (net.Listener, error) {
	if !filepath.IsAbs(addr) {
		return net.Listen("tcp", addr)
	}
	if err := os.MkdirAll(filepath.Dir(addr), 0o755); err != nil {
		return nil, err
	}
	os.Remove(addr) // a stale socket of an earlier run
	// The umask makes the socket 0600 from the start: no window in which others may connect.
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", addr)
	syscall.Umask(old)
	return l, err
}

// readToken reads the bearer token of o.tokenFile, and checks that a TCP listener has one.
func readToken(o options) (string, error) {
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return "", errors.New("--tls-cert and --tls-key go together")
	}
	if o.tokenFile == "" {
		if !filepath.IsAbs(o.listen) {
			return "", fmt.Errorf("--listen %s is TCP: anyone who can connect could run code; give --token-file", o.listen)
		}
		return "", nil
	}
	b, err := os.ReadFile(o.tokenFile)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if len(token) < 16 {
		return "", fmt.Errorf("--token-file %s: the token must be at least 16 characters", o.tokenFile)
	}
	return token, nil
}

type options struct {
	listen    string
	tokenFile string
	tlsCert   string
	tlsKey    string
	stateDir  string
	rootfsDir string
	bddSocket string
	packages  string
	keepAlive time.Duration
	policy    string
	timeScale float64
	spares    int
	poolSize  int
	imports   []string
	noZygotes bool
	criu      bool
	ckptReg   bool
	uidBase   int
	max       sandbox.Limits
	poolMemMB int64
	poolCPUs  float64
	poolPids  int64
	zygoteMem int64
	zygotePid int64
	logLevel  string
	registry  convert.RegistryOptions
}

func newCmd() *cobra.Command {
	var o options
	cmd := &cobra.Command{
		Use:   "obd-lambda (--rootfs-dir DIR | --bdd-socket SOCK) [flags]",
		Short: "serve functions in lean sandboxes started from obd images",
		Long: `obd-lambda runs functions (Python 3 handlers) in SOCK-style sandboxes: a read-only tree of
the image's rootfs entered with chroot, own user/PID/UTS/IPC namespaces, a network namespace per
function, a pooled cgroup with memory/CPU/pids limits, the handler running as nobody with no
capabilities, no_new_privs and a seccomp filter; everything from the image runs confined.
New sandboxes are forked (a few per function ahead of demand) from zygotes that already
imported the runtime's modules; idle ones are frozen in the handler cache.

How long an idle sandbox stays, and whether one is started ahead of an expected invocation,
is decided per function by a policy (package policy, the ones obd sim compares): --policy is
the default, a function may name its own at registration (obd sandbox register --policy):
  fixed-DURATION  keep each idle sandbox DURATION (without --policy: fixed --keep-alive)
  hybrid          hybrid histogram of idle times (Shahrad et al., ATC'20): keep-alive and
                  pre-warming from the 5th/99th percentiles, fixed 10m while data is scarce
  predictive      FFT forecast of the per-minute invocation series (IceBreaker-style)
  reuse+POLICY    POLICY, and a function with no idle sandbox of its own borrows one of
                  another function under the same reuse policy whose image, imports and
                  packages cover its own, scrubbed first (its /tmp, code, environment,
                  processes and modules gone); GET /stats counts lends and cold starts saved.
                  Lending shares an interpreter: only for functions that trust each other.
--policy-time-scale runs the policies' clock that many times faster than real time, for
replaying a time-compressed trace (obd probe); keep 1 in production.

HTTP API (obd sandbox register|run|ls|stats|rm talks to it), on a root-only unix socket by
default; on TCP (--listen HOST:PORT) every request must carry the bearer token of --token-file,
optionally over TLS (--tls-cert, --tls-key):
  POST   /functions            register (multipart "spec" + "code" tarball: code is uploaded)
  GET    /functions            list
  GET    /functions/NAME/stats counters
  GET    /stats                server-wide counters: lends, cold starts saved, pre-warms
  DELETE /functions/NAME       unregister
  POST   /run/NAME             invoke: JSON event in, JSON result out

Images: with --rootfs-dir DIR, image ref REF is the unpacked rootfs DIR/REF (scripts/mkrootfs.sh
builds DIR/python3-bookworm). With --bdd-socket, an image ref is an obd image in a registry
(registry/repo:tag or registry/repo@sha256:..., converted by obd convert; its manifest is read
with --hosts-dir and --docker-config, and the start trace the registry holds for it is
replayed), or an obd layer stack, bottom first, comma-separated, each an absolute layer file
path or a registry blob REF@DIGEST:SIZE: bdd attaches it read-only (blocks fetched lazily), its
ext4 is mounted once and shared by every sandbox of the image. Needs root. On SIGTERM or SIGINT every sandbox, zygote, mount and
cgroup it made is removed.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	cmd.CompletionOptions.DisableDefaultCmd = true
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", defaultSocket, "HTTP listen address: a unix socket path (root-only, 0600), or host:port (needs --token-file)")
	f.StringVar(&o.tokenFile, "token-file", "", "file holding the bearer token every request must carry; required to listen on TCP")
	f.StringVar(&o.tlsCert, "tls-cert", "", "serve HTTPS with this certificate (PEM; with --tls-key)")
	f.StringVar(&o.tlsKey, "tls-key", "", "private key of --tls-cert (PEM)")
	f.StringVar(&o.stateDir, "state-dir", "/var/lib/obd/lambda", "sandbox roots, scratch dirs, uploaded code, sandbox log")
	f.StringVar(&o.rootfsDir, "rootfs-dir", "", "directory of unpacked image rootfs dirs, one per image ref")
	f.StringVar(&o.bddSocket, "bdd-socket", "", "control socket of bdd: images are obd layer stacks attached through it")
	f.StringVar(&o.packages, "packages-dir", "", "install cache: package dirs shared read-only at /opt in every sandbox")
	f.DurationVar(&o.keepAlive, "keep-alive", 10*time.Minute, "without --policy: how long an idle sandbox stays frozen in the handler cache (0: no cache)")
	f.StringVar(&o.policy, "policy", "", "default keep-alive and pre-warm policy: fixed-DURATION, hybrid, predictive or reuse+POLICY (default fixed --keep-alive)")
	f.Float64Var(&o.timeScale, "policy-time-scale", 1, "policies' clock runs this many times faster than real time (for time-compressed trace replays)")
	f.IntVar(&o.spares, "spare-sandboxes", 2, "sandboxes per function forked ahead of demand (0: none)")
	f.IntVar(&o.poolSize, "pool-size", 16, "cgroups created at start")
	f.StringSliceVar(&o.imports, "imports", []string{"json", "sqlite3"}, "modules the runtime zygote imports")
	f.BoolVar(&o.noZygotes, "no-zygotes", false, "start every sandbox cold, or restored from its checkpoint (for comparison)")
	f.BoolVar(&o.ckptReg, "checkpoint-registry", false, "with --checkpoints and --bdd-socket: keep checkpoints in the registry as artifacts of the function's image, pushing those made here and restoring those found there through bdd (whoever may push to the image's repository decides what is restored)")
	f.BoolVar(&o.criu, "checkpoints", false, "allow functions registered with checkpoint: restore starts from a CRIU checkpoint (criu 4.x from make deps or PATH; the state dir's parents must be o+x)")
	d := sandbox.DefaultMaxLimits
	f.Int64Var(&o.max.MemoryMB, "max-memory", d.MemoryMB, "most memory (MB) a function may ask for")
	f.Float64Var(&o.max.CPUs, "max-cpus", d.CPUs, "most CPUs a function may ask for")
	f.Int64Var(&o.max.Pids, "max-pids", d.Pids, "most processes a function may ask for")
	f.DurationVar(&o.max.Timeout, "max-timeout", d.Timeout, "longest per-invocation timeout a function may ask for")
	f.Int64Var(&o.max.ScratchMB, "max-scratch", d.ScratchMB, "largest /tmp (MB) a function may ask for")
	f.Int64Var(&o.poolMemMB, "pool-memory", 0, "memory (MB) of all sandboxes and zygotes together (0: unlimited)")
	f.Float64Var(&o.poolCPUs, "pool-cpus", 0, "CPUs of all sandboxes and zygotes together (0: unlimited)")
	f.Int64Var(&o.poolPids, "pool-pids", 0, "processes of all sandboxes and zygotes together (0: unlimited)")
	f.Int64Var(&o.zygoteMem, "zygote-memory", 1024, "memory (MB) of each image's zygotes together (a function zygote per function)")
	f.Int64Var(&o.zygotePid, "zygote-pids", 512, "processes of each image's zygotes together")
	f.IntVar(&o.uidBase, "uid-base", 1_000_000_000, "host uid (and gid) of uid 0 in the sandboxes' user namespaces; they use 65536 from there, which no host user may own")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&o.registry.HostsDir, "hosts-dir", "", "with --bdd-socket: registry host configuration for image references (containerd certs.d layout with hosts.toml)")
	f.StringVar(&o.registry.DockerConfig, "docker-config", "", "with --bdd-socket: docker config.json with registry credentials (default $DOCKER_CONFIG or ~/.docker)")
	f.BoolVar(&o.registry.PlainHTTP, "plain-http", false, "with --bdd-socket: talk plain HTTP to every registry (localhost registries always may)")
	cmd.MarkFlagsOneRequired("rootfs-dir", "bdd-socket")
	cmd.MarkFlagsMutuallyExclusive("rootfs-dir", "bdd-socket")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error { return run(o) }
	return cmd
}

// newPolicies checks the policy flags and returns the resolver of functions' policies:
// --policy as the default, or fixed --keep-alive.
func newPolicies(o options) (func(string) (sandbox.Policy, error), error) {
	if o.keepAlive < 0 {
		return nil, fmt.Errorf("--keep-alive %v is negative", o.keepAlive)
	}
	if o.spares < 0 {
		return nil, fmt.Errorf("--spare-sandboxes %d is negative", o.spares)
	}
	def := o.policy
	if def == "" {
		def = "fixed-" + o.keepAlive.String()
	}
	ps, err := live.New(def, o.timeScale, time.Now())
	if err != nil {
		return nil, fmt.Errorf("--policy: %w", err)
	}
	return func(spec string) (sandbox.Policy, error) {
		p, err := ps.Get(spec)
		if err != nil {
			return nil, err
		}
		return p, nil
	}, nil
}

// spareRoots is sandbox.Config.SpareRoots for n spare sandboxes (its 0 is the default).
func spareRoots(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

func run(o options) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	token, err := readToken(o)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	codeDir := filepath.Join(o.stateDir, "functions")
	// Registrations live in memory, so code uploaded to an earlier run is stale.
	if err := os.RemoveAll(codeDir); err != nil {
		return err
	}
	var rootfs sandbox.RootfsProvider = sandbox.DirProvider{Root: o.rootfsDir}
	// What a killed run left attached; undone once the manager has killed its processes.
	cleanup := func(context.Context) error { return nil }
	if o.bddSocket != "" {
		client, conn, err := bddclient.Dial(o.bddSocket)
		if err != nil {
			return err
		}
		defer conn.Close()
		resolvers, err := o.registry.Resolvers(context.Background())
		if err != nil {
			return err
		}
		rootfs = &bddrootfs.Provider{Client: client, MountDir: filepath.Join(o.stateDir, "mnt"), Resolver: resolvers(), Log: log}
		cleanup = rootfs.(*bddrootfs.Provider).Cleanup
	}
	policies, err := newPolicies(o)
	if err != nil {
		return err
	}
	var criu *checkpoint.CRIU
	if o.criu {
		if criu, err = checkpoint.Find(); err != nil {
			return fmt.Errorf("--checkpoints: %w", err)
		}
	}
	var store sandbox.CheckpointStore
	if o.ckptReg {
		p, ok := rootfs.(*bddrootfs.Provider)
		if !ok || criu == nil {
			return errors.New("--checkpoint-registry needs --checkpoints and --bdd-socket")
		}
		store = &ckptstart.Store{Rootfs: p, Resolver: p.Resolver, CRIU: criu, WorkDir: filepath.Join(o.stateDir, "checkpoint-work")}
	}
	m, err := sandbox.NewManager(sandbox.Config{
		CRIU: criu, Checkpoints: store,
		StateDir: o.stateDir, Rootfs: rootfs, PoolSize: o.poolSize, Policies: policies, SpareRoots: spareRoots(o.spares),
		KeepAlive: o.keepAlive, PackagesDir: o.packages, Imports: o.imports, NoZygotes: o.noZygotes, UIDBase: o.uidBase, Log: log,
		MaxLimits:    o.max,
		PoolLimits:   cgroup.Limits{MemoryBytes: o.poolMemMB << 20, CPUs: o.poolCPUs, Pids: o.poolPids},
		ZygoteLimits: cgroup.Limits{MemoryBytes: o.zygoteMem << 20, Pids: o.zygotePid},
	})
	if err != nil {
		return err
	}
	if err := cleanup(context.Background()); err != nil {
		log.Warn("clean up a killed run's images", "err", err)
	}
	l, err := listen(o.listen)
	if err != nil {
		m.Close()
		return err
	}
	srv := &http.Server{Handler: sandbox.NewHandler(m, codeDir, token), ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	served := make(chan error, 1)
	go func() {
		if o.tlsCert != "" {
			served <- srv.ServeTLS(l, o.tlsCert, o.tlsKey)
			return
		}
		served <- srv.Serve(l)
	}()
	log.Info("serving", "listen", l.Addr().String(), "state_dir", o.stateDir, "rootfs_dir", o.rootfsDir, "bdd_socket", o.bddSocket, "keep_alive", o.keepAlive,
		"policy", o.policy, "policy_time_scale", o.timeScale)
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err = <-served:
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv.Shutdown(shutCtx)
	cerr := m.Close()
	os.RemoveAll(codeDir)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	if cerr != nil {
		log.Error("cleanup", "err", cerr)
	}
	return errors.Join(err, cerr)
}
