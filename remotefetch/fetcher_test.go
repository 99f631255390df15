package remotefetch

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/obdproject/obd/blocktrace"
	"github.com/obdproject/obd/internal/faultproxy"
	"github.com/obdproject/obd/internal/testregistry"
	"github.com/obdproject/obd/remotefetch/cache"
)

const testUnit = 64 << 10

func randomBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, 99))
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// env is a registry with one blob, optionally behind a fault proxy.
type env struct {
	reg   *testregistry.Registry
	proxy *faultproxy.Proxy
	data  []byte
	dgst  digest.Digest
	ref   string // image reference through the proxy if there is one
}

func newEnv(t testing.TB, ropts testregistry.Options, size int, withProxy bool) *env {
	t.Helper()
	reg := testregistry.Start(t, ropts)
	e := &env{reg: reg, data: randomBytes(uint64(size), size)}
	e.dgst = reg.PushBlob(t, "obd/test", e.data)
	e.ref = reg.Host + "/obd/test:latest"
	if withProxy {
		p, err := faultproxy.New(reg.URL)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		e.proxy = p
		e.ref = p.Host + "/obd/test:latest"
	}
	return e
}

// dockerConfig writes a config.json with the registry's credentials for hosts.
func dockerConfig(t testing.TB, reg *testregistry.Registry, hosts ...string) string {
	t.Helper()
	auth := base64.StdEncoding.EncodeToString([]byte(reg.Username() + ":" + reg.Password()))
	var entries []string
	for _, h := range hosts {
		entries = append(entries, fmt.Sprintf("%q:{\"auth\":%q}", h, auth))
	}
	path := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(path, []byte(`{"auths":{`+strings.Join(entries, ",")+`}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func newFetcher(t testing.TB, opts Options) *Fetcher {
	t.Helper()
	if opts.CacheDir == "" {
		opts.CacheDir = t.TempDir()
	}
	if opts.FillUnit == 0 {
		opts.FillUnit = testUnit
	}
	if opts.BackgroundDelay == 0 {
		opts.BackgroundDelay = -1
	}
	if opts.DockerConfig == "" {
		opts.DockerConfig = filepath.Join(t.TempDir(), "none.json")
	}
	f, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func open(t testing.TB, f *Fetcher, e *env) *Blob {
	t.Helper()
	b, err := f.Open(t.Context(), e.ref, e.dgst, int64(len(e.data)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkRead reads [off, off+n) and compares it with the source.
func checkRead(t testing.TB, b *Blob, data []byte, off, n int64) error {
	buf := make([]byte, n)
	got, err := b.ReadAt(buf, off)
	if off+n > int64(len(data)) {
		if !errors.Is(err, io.EOF) {
			return fmt.Errorf("read past end at %d: err %w, want EOF", off, err)
		}
		n = int64(len(data)) - off
		err = nil
	}
	if err != nil {
		return err
	}
	if int64(got) != n || !bytes.Equal(buf[:n], data[off:off+n]) {
		t.Errorf("read %d+%d returned wrong bytes (n=%d)", off, n, got)
	}
	return nil
}

// noLeaks fails if goroutines started since before are still running after a grace period.
func noLeaks(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutine leak: %d running, %d before\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestBasicAuthRandomReads(t *testing.T) {
	e := newEnv(t, testregistry.Options{Auth: testregistry.AuthBasic}, 10*testUnit+123, false)
	f := newFetcher(t, Options{DockerConfig: dockerConfig(t, e.reg, e.reg.Host)})
	b := open(t, f, e)
	defer b.Close()
	r := rand.New(rand.NewPCG(1, 1))
	for range 50 {
		off := r.Int64N(int64(len(e.data)))
		if err := checkRead(t, b, e.data, off, 1+r.Int64N(3*testUnit)); err != nil {
			t.Fatal(err)
		}
	}
	if err := checkRead(t, b, e.data, int64(len(e.data))-10, 100); err != nil {
		t.Fatal(err)
	}
	if s := b.Stats(); s.Misses == 0 || s.Hits == 0 || s.BytesFetched > uint64(len(e.data)) {
		t.Fatalf("stats %+v", s)
	}

	// Without credentials the registry refuses: a fast ErrUnauthorized, not a deadline.
	anon := newFetcher(t, Options{CacheDir: t.TempDir()})
	ab := open(t, anon, e)
	defer ab.Close()
	start := time.Now()
	_, err := ab.ReadAt(make([]byte, 10), 0)
	if !errors.Is(err, ErrUnauthorized) || errors.Is(err, ErrDeadline) {
		t.Fatalf("anonymous read: %v", err)
	}
	if strings.Contains(err.Error(), e.reg.Password()) {
		t.Fatalf("error leaks the password: %v", err)
	}
	t.Logf("unauthorized after %v: %v", time.Since(start), err)
}

func TestTokenAuth(t *testing.T) {
	e := newEnv(t, testregistry.Options{Auth: testregistry.AuthToken}, 8*testUnit, false)
	f := newFetcher(t, Options{DockerConfig: dockerConfig(t, e.reg, e.reg.Host)})
	b := open(t, f, e)
	defer b.Close()
	pushTokens := e.reg.TokensIssued()
	for i := range 8 {
		if err := checkRead(t, b, e.data, int64(i)*testUnit+7, 100); err != nil {
			t.Fatal(err)
		}
	}
	// The token is fetched once and re-used for later requests.
	if n := e.reg.TokensIssued() - pushTokens; n != 1 {
		t.Fatalf("%d tokens issued for 8 fetches, want 1", n)
	}
	wrong := newFetcher(t, Options{DockerConfig: filepath.Join(t.TempDir(), "none.json")})
	wb := open(t, wrong, e)
	defer wb.Close()
	if _, err := wb.ReadAt(make([]byte, 1), 0); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("read without credentials: %v", err)
	}
}

// TestTokenRefresh: an expired token is replaced by a new one before the next request.
func TestTokenRefresh(t *testing.T) {
	e := newEnv(t, testregistry.Options{Auth: testregistry.AuthToken, TokenTTL: time.Second}, 4*testUnit, false)
	f := newFetcher(t, Options{DockerConfig: dockerConfig(t, e.reg, e.reg.Host)})
	b := open(t, f, e)
	defer b.Close()
	if err := checkRead(t, b, e.data, 0, 10); err != nil {
		t.Fatal(err)
	}
	issued := e.reg.TokensIssued()
	time.Sleep(1100 * time.Millisecond)
	if err := checkRead(t, b, e.data, 2*testUnit, 10); err != nil {
		t.Fatal(err)
	}
	if got := e.reg.TokensIssued() - issued; got != 1 {
		t.Fatalf("%d tokens fetched after expiry, want 1", got)
	}
}

func TestRedirectTargetIsReused(t *testing.T) {
	e := newEnv(t, testregistry.Options{Auth: testregistry.AuthBasic, RedirectBlobs: true}, 6*testUnit, false)
	f := newFetcher(t, Options{DockerConfig: dockerConfig(t, e.reg, e.reg.Host)})
	b := open(t, f, e)
	defer b.Close()
	for i := range 6 {
		if err := checkRead(t, b, e.data, int64(i)*testUnit, 10); err != nil {
			t.Fatal(err)
		}
	}
	if e.reg.BlobGets() != 2 || e.reg.BlobStoreGets() != 6 { // 401 challenge + 1 redirect, then direct
		t.Fatalf("registry blob GETs %d (want 2), blob store GETs %d (want 6)", e.reg.BlobGets(), e.reg.BlobStoreGets())
	}
}

// TestRedirectTargetExpires: after RedirectReuse the registry is asked again.
func TestRedirectTargetExpires(t *testing.T) {
	e := newEnv(t, testregistry.Options{RedirectBlobs: true}, 4*testUnit, false)
	f := newFetcher(t, Options{RedirectReuse: 50 * time.Millisecond})
	b := open(t, f, e)
	defer b.Close()
	if err := checkRead(t, b, e.data, 0, 10); err != nil {
		t.Fatal(err)
	}
	if err := checkRead(t, b, e.data, testUnit, 10); err != nil {
		t.Fatal(err)
	}
	if e.reg.BlobGets() != 1 {
		t.Fatalf("%d registry GETs before expiry, want 1", e.reg.BlobGets())
	}
	time.Sleep(100 * time.Millisecond)
	if err := checkRead(t, b, e.data, 2*testUnit, 10); err != nil {
		t.Fatal(err)
	}
	if e.reg.BlobGets() != 2 || e.reg.BlobStoreGets() != 3 {
		t.Fatalf("after expiry: %d registry GETs (want 2), %d blob store GETs (want 3)", e.reg.BlobGets(), e.reg.BlobStoreGets())
	}
}

func TestConcurrentMissesFetchOnce(t *testing.T) {
	e := newEnv(t, testregistry.Options{}, 4*testUnit, true)
	e.proxy.SetShaping(faultproxy.Shaping{Latency: 50 * time.Millisecond})
	f := newFetcher(t, Options{})
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			b := open(t, f, e)
			defer b.Close()
			if err := checkRead(t, b, e.data, testUnit+int64(i)*100, 50); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := e.proxy.Requests(); n != 1 {
		t.Fatalf("%d requests for 16 concurrent misses on one unit, want 1", n)
	}
}

// TestPartialUnitServesEarly: on a slow link, a small read at the start of a large fill unit
// returns as soon as its bytes are stored, before the rest of the unit has arrived.
func TestPartialUnitServesEarly(t *testing.T) {
	const unit = 1 << 20
	e := newEnv(t, testregistry.Options{}, 2*unit, true)
	e.proxy.SetShaping(faultproxy.Shaping{Bandwidth: 2 << 20}) // the unit takes 0.5 s
	f := newFetcher(t, Options{FillUnit: unit})
	b := open(t, f, e)
	defer b.Close()
	if err := checkRead(t, b, e.data, 100, 4096); err != nil {
		t.Fatal(err)
	}
	if unitPresent(b, 0) {
		t.Fatal("the read waited for the whole 1 MiB unit")
	}
	// A read at the end of the unit waits for its bytes; Fill waits for the stored unit.
	if err := checkRead(t, b, e.data, unit-4096, 4096); err != nil {
		t.Fatal(err)
	}
	if err := b.Fill(t.Context(), 0, unit); err != nil || !unitPresent(b, 0) {
		t.Fatalf("unit not stored after Fill: %v", err)
	}
}

func TestAdjacentMissesMerge(t *testing.T) {
	e := newEnv(t, testregistry.Options{}, 40*testUnit, true)
	f := newFetcher(t, Options{MaxRequestSize: 16 * testUnit})
	b := open(t, f, e)
	defer b.Close()
	// 30 units: two requests of at most 16 units.
	if err := checkRead(t, b, e.data, 5, 30*testUnit-10); err != nil {
		t.Fatal(err)
	}
	if n := e.proxy.Requests(); n != 2 {
		t.Fatalf("%d requests for 30 adjacent missing units with 16-unit requests, want 2", n)
	}
}

func TestSequentialReadahead(t *testing.T) {
	e := newEnv(t, testregistry.Options{}, 64*testUnit, true)
	f := newFetcher(t, Options{MaxRequestSize: 16 * testUnit})
	b := open(t, f, e)
	defer b.Close()
	for off := int64(0); off < int64(len(e.data)); off += 32 << 10 {
		if err := checkRead(t, b, e.data, off, 32<<10); err != nil {
			t.Fatal(err)
		}
	}
	// 64 units in 16-unit windows: about 4 requests plus the first unit, not 64.
	if n := e.proxy.Requests(); n > 8 {
		t.Fatalf("%d requests for a sequential read of 64 units", n)
	}
}

// TestShortSequentialRunReadsLittleAhead: two adjacent reads (a small file read through once)
// start a small readahead, not a MaxRequestSize window: lazy starts fetch what they read.
func TestShortSequentialRunReadsLittleAhead(t *testing.T) {
	e := newEnv(t, testregistry.Options{}, 64*testUnit, true)
	f := newFetcher(t, Options{MaxRequestSize: 32 * testUnit, BackgroundDelay: -1})
	b := open(t, f, e)
	defer b.Close()
	for _, off := range []int64{10 * testUnit, 11 * testUnit} {
		if err := checkRead(t, b, e.data, off, testUnit); err != nil {
			t.Fatal(err)
		}
	}
	waitForIdle(t, b)
	if got, limit := b.Stats().BytesFetched, uint64(6*testUnit); got > limit {
		t.Fatalf("two adjacent unit reads fetched %d bytes, want at most %d (no full readahead window)", got, limit)
	}
}

func TestNotFound(t *testing.T) {
	e := newEnv(t, testregistry.Options{}, testUnit, false)
	f := newFetcher(t, Options{})
	b, err := f.Open(t.Context(), e.ref, digest.FromString("missing"), 100)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.ReadAt(make([]byte, 10), 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("read of a missing blob: %v", err)
	}
}

func TestWrongSizeFailsFast(t *testing.T) {
	e := newEnv(t, testregistry.Options{}, 2*testUnit, false)
	f := newFetcher(t, Options{})
	b, err := f.Open(t.Context(), e.ref, e.dgst, int64(len(e.data))+100)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, err = b.ReadAt(make([]byte, 10), 0)
	if !errors.Is(err, ErrBadResponse) || errors.Is(err, ErrDeadline) || !strings.Contains(err.Error(), "opened as") {
		t.Fatalf("read with a wrong size: %v", err)
	}
}

func TestTinyBlobs(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{})
	f := newFetcher(t, Options{})
	for _, data := range [][]byte{{}, {42}} {
		d := reg.PushBlob(t, "obd/tiny", data)
		b, err := f.Open(t.Context(), reg.Host+"/obd/tiny", d, int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		n, err := b.ReadAt(buf, 0)
		if n != len(data) || !errors.Is(err, io.EOF) || !bytes.Equal(buf[:n], data) {
			t.Errorf("%d-byte blob: read %d, %v", len(data), n, err)
		}
		if err := b.Verify(t.Context()); err != nil {
			t.Errorf("%d-byte blob: verify: %v", len(data), err)
		}
		b.Close()
	}
}

func TestBadArguments(t *testing.T) {
	f := newFetcher(t, Options{})
	for _, tc := range []struct {
		ref  string
		d    digest.Digest
		size int64
	}{
		{"reg.example/x y", digest.FromString("x"), 1},
		{"reg.example/x", "sha256:short", 1},
		{"reg.example/x", digest.FromString("x"), -1},
	} {
		if _, err := f.Open(t.Context(), tc.ref, tc.d, tc.size); err == nil {
			t.Errorf("Open(%q, %q, %d): no error", tc.ref, tc.d, tc.size)
		}
	}
	if _, err := New(Options{}); err == nil {
		t.Error("New without CacheDir: no error")
	}
}

// failingBlob opens a blob of size bytes behind a registry that answers every request with
// 503, with reads bounded by timeout. It is closed when the test ends.
func failingBlob(t *testing.T, size int, timeout time.Duration) *Blob {
	t.Helper()
	e := newEnv(t, testregistry.Options{}, size, true)
	e.proxy.SetRandom(1, 1, faultproxy.Status503)
	b := open(t, newFetcher(t, Options{ReadTimeout: timeout}), e)
	t.Cleanup(func() { b.Close() })
	return b
}

// TestDeadlineNamesBlobRangeAndCause: a registry that always fails makes a read fail after
// ReadTimeout with ErrDeadline, naming the blob, the range and the last cause.
func TestDeadlineNamesBlobRangeAndCause(t *testing.T) {
	b := failingBlob(t, 4*testUnit, 600*time.Millisecond)
	start := time.Now()
	_, err := b.ReadAt(make([]byte, 100), testUnit)
	took := time.Since(start)
	if !errors.Is(err, ErrDeadline) {
		t.Fatalf("read: %v, want ErrDeadline", err)
	}
	for _, want := range []string{b.Digest().String(), fmt.Sprintf("%d-%d", testUnit, testUnit+100), "503"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if took < 600*time.Millisecond || took > 10*time.Second {
		t.Errorf("deadline error after %v", took)
	}
	if b.Stats().Retries == 0 || b.Stats().Errors != 1 {
		t.Errorf("stats %+v", b.Stats())
	}
}

func TestStallIsRetriedThenDeadline(t *testing.T) {
	e := newEnv(t, testregistry.Options{}, 4*testUnit, true)
	f := newFetcher(t, Options{ReadTimeout: 2 * time.Second, StallTimeout: 100 * time.Millisecond})
	b := open(t, f, e)
	defer b.Close()
	// A stall sends the first half of the body, which a reader may take at once: read the end
	// of a unit. One stall: the watchdog aborts it and the retry succeeds.
	e.proxy.InjectNext(faultproxy.Stall, 1)
	if err := checkRead(t, b, e.data, testUnit-100, 100); err != nil {
		t.Fatal(err)
	}
	if got := b.Stats().Retries; got == 0 {
		t.Fatal("the stalled request was not retried")
	}
	// Endless stalls: the read fails at its deadline and says why.
	e.proxy.SetRandom(1, 1, faultproxy.Stall)
	_, err := b.ReadAt(make([]byte, 100), 3*testUnit-100)
	if !errors.Is(err, ErrDeadline) || !strings.Contains(err.Error(), "stalled") {
		t.Fatalf("read under endless stalls: %v", err)
	}
}

// TestWrongResponsesAreNeverData: reads and range fills retry every kind of bad response and
// keep only the right bytes; a range the registry never serves fails, bounded, naming the
// blob and range.
func TestWrongResponsesAreNeverData(t *testing.T) {
	for _, viaRange := range []bool{false, true} {
		t.Run(map[bool]string{false: "read", true: "range fill"}[viaRange], func(t *testing.T) {
			e := newEnv(t, testregistry.Options{}, 12*testUnit, true)
			f := newFetcher(t, Options{ReadTimeout: 10 * time.Second})
			b := open(t, f, e)
			defer b.Close()
			for i, fault := range []faultproxy.Fault{faultproxy.WrongContentRange, faultproxy.Truncate, faultproxy.Reset,
				faultproxy.Status500, faultproxy.Status429} {
				e.proxy.InjectNext(fault, 2)
				off := int64(i)*2*testUnit + 1
				if viaRange {
					if err := b.FillRange(t.Context(), off, testUnit/2); err != nil {
						t.Fatalf("after %v: %v", fault, err)
					}
				}
				if err := checkRead(t, b, e.data, off, testUnit/2); err != nil {
					t.Fatalf("after %v: %v", fault, err)
				}
			}
			if st := b.Stats(); st.Retries < 10 || (viaRange && st.Misses != 0) {
				t.Fatalf("stats %+v: want at least 10 retries (and reads that hit after range fills)", st)
			}
			if !viaRange {
				return
			}
			e.proxy.InjectNext(faultproxy.Status500, 1000)
			ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
			defer cancel()
			err := b.FillRange(ctx, 11*testUnit+3, 100)
			t.Logf("error: %v", err)
			if err == nil || !strings.Contains(err.Error(), "range") || !strings.Contains(err.Error(), e.dgst.String()) {
				t.Fatalf("a range the registry never serves: %v, want an error naming the blob and range", err)
			}
		})
	}
}

// TestRandomFaults runs concurrent readers through a proxy that injects every fault kind
// except corruption (which only the digest check can catch): every read is correct or fails
// with an error within its deadline, and nothing leaks.
func TestRandomFaults(t *testing.T) {
	e := newEnv(t, testregistry.Options{Auth: testregistry.AuthBasic}, 64*testUnit+77, true)
	before := runtime.NumGoroutine()
	e.proxy.SetRandom(0.3, 7, faultproxy.Status500, faultproxy.Status503, faultproxy.Status429,
		faultproxy.Reset, faultproxy.Truncate, faultproxy.Stall, faultproxy.WrongContentRange)
	e.proxy.SetStall(2 * time.Second)
	const timeout = 3 * time.Second
	f, err := New(Options{CacheDir: t.TempDir(), FillUnit: testUnit, MaxRequestSize: 4 * testUnit,
		ReadTimeout: timeout, StallTimeout: 500 * time.Millisecond, BackgroundDelay: 20 * time.Millisecond,
		BackgroundRate: 8 << 20, DockerConfig: dockerConfig(t, e.reg, e.proxy.Host), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, failed := 0, 0
	for g := range 8 {
		wg.Go(func() {
			b, err := f.Open(t.Context(), e.ref, e.dgst, int64(len(e.data)))
			if err != nil {
				t.Error(err)
				return
			}
			defer b.Close()
			r := rand.New(rand.NewPCG(uint64(g), 5))
			for range 15 {
				off := r.Int64N(int64(len(e.data)))
				start := time.Now()
				err := checkRead(t, b, e.data, off, 1+r.Int64N(2*testUnit))
				// Generous slack: the test machine is shared and -race is slow.
				if took := time.Since(start); took > timeout+3*time.Second {
					t.Errorf("read took %v with a %v deadline", took, timeout)
				}
				mu.Lock()
				if err != nil {
					failed++
					if !errors.Is(err, ErrDeadline) {
						t.Errorf("read failed with %v, want ErrDeadline", err)
					}
				} else {
					ok++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	e.proxy.CloseIdleConnections()
	t.Logf("%d reads correct, %d failed at their deadline, %d faults injected", ok, failed, e.proxy.Injected())
	if e.proxy.Injected() < 10 || ok == 0 {
		t.Fatalf("test did not exercise faults: %d injected, %d ok", e.proxy.Injected(), ok)
	}
	noLeaks(t, before)
}

func TestDigestMismatch(t *testing.T) {
	e := newEnv(t, testregistry.Options{}, 5*testUnit, true)
	f := newFetcher(t, Options{})
	b := open(t, f, e)
	e.proxy.InjectNext(faultproxy.Corrupt, 1)
	err := b.Verify(t.Context())
	if !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Verify with a corrupted body: %v", err)
	}
	if _, err := b.ReadAt(make([]byte, 10), 0); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("read after mismatch: %v", err)
	}
	if f.CacheUsage() != 0 {
		t.Fatalf("cache holds %d bytes of a corrupt blob", f.CacheUsage())
	}
	b.Close()
	b = open(t, f, e)
	defer b.Close()
	if err := b.Verify(t.Context()); err != nil {
		t.Fatalf("Verify after reopening: %v", err)
	}
	if err := checkRead(t, b, e.data, 0, int64(len(e.data))); err != nil {
		t.Fatal(err)
	}
}

func TestRestartReusesCache(t *testing.T) {
	e := newEnv(t, testregistry.Options{}, 16*testUnit, true)
	dir := t.TempDir()
	f1 := newFetcher(t, Options{CacheDir: dir})
	b := open(t, f1, e)
	for _, off := range []int64{0, 5 * testUnit, 9*testUnit + 3} {
		if err := checkRead(t, b, e.data, off, testUnit); err != nil {
			t.Fatal(err)
		}
	}
	// A read returns once its own bytes are in; the rest of its last unit may still be on
	// the way, and closing would cut it off (that unit is then fetched again, correctly).
	waitForIdle(t, b)
	if err := f1.Close(); err != nil {
		t.Fatal(err)
	}
	requests := e.proxy.Requests()
	f2 := newFetcher(t, Options{CacheDir: dir})
	b2 := open(t, f2, e)
	defer b2.Close()
	for _, off := range []int64{0, 5 * testUnit, 9*testUnit + 3} {
		if err := checkRead(t, b2, e.data, off, testUnit); err != nil {
			t.Fatal(err)
		}
	}
	if e.proxy.Requests() != requests || b2.Stats().Hits != 3 {
		t.Fatalf("restarted reader fetched again: %d new requests, stats %+v", e.proxy.Requests()-requests, b2.Stats())
	}
}

// TestCapacityWithConcurrentReaders: readers open, read and close many blobs at once; the
// cache ends within its capacity and every read is correct.
func TestCapacityWithConcurrentReaders(t *testing.T) {
	const (
		blobs = 6
		size  = 4 * testUnit
	)
	reg := testregistry.Start(t, testregistry.Options{})
	var envs []*env
	for i := range blobs {
		data := randomBytes(uint64(1000+i), size)
		envs = append(envs, &env{reg: reg, data: data, dgst: reg.PushBlob(t, "obd/cap", data), ref: reg.Host + "/obd/cap"})
	}
	f := newFetcher(t, Options{CacheSize: 2 * size})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 3))
			for range 10 {
				e := envs[r.IntN(blobs)]
				b := open(t, f, e)
				if err := checkRead(t, b, e.data, r.Int64N(size), testUnit); err != nil {
					t.Error(err)
				}
				b.Close()
			}
		})
	}
	wg.Wait()
	if u := f.CacheUsage(); u > 2*size {
		t.Fatalf("cache holds %d bytes, capacity %d", u, 2*size)
	}
}

func TestBackgroundFillCompletesBlob(t *testing.T) {
	e := newEnv(t, testregistry.Options{}, 20*testUnit+5, true)
	f := newFetcher(t, Options{BackgroundDelay: 10 * time.Millisecond, BackgroundRate: 64 << 20})
	b := open(t, f, e)
	defer b.Close()
	deadline := time.Now().Add(10 * time.Second)
	for f.CacheUsage() < int64(len(e.data)) {
		if time.Now().After(deadline) {
			t.Fatalf("background fill stalled at %d of %d bytes", f.CacheUsage(), len(e.data))
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.proxy.Close() // the registry is gone: everything must come from the cache
	if err := checkRead(t, b, e.data, 0, int64(len(e.data))); err != nil {
		t.Fatal(err)
	}
	if err := b.Verify(t.Context()); err != nil {
		t.Fatal(err)
	}
}

func TestTraceAndPrefetch(t *testing.T) {
	e := newEnv(t, testregistry.Options{}, 32*testUnit, true)
	f1 := newFetcher(t, Options{})
	b := open(t, f1, e)
	f1.StartTrace()
	ranges := [][2]int64{{3 * testUnit, 100}, {20*testUnit + 5, 2 * testUnit}, {3*testUnit + 50, 100}}
	for _, r := range ranges {
		if err := checkRead(t, b, e.data, r[0], r[1]); err != nil {
			t.Fatal(err)
		}
	}
	tr := f1.StopTrace()
	b.Close()
	enc, err := tr.Encode()
	if err != nil {
		t.Fatal(err)
	}
	tr2, err := blocktrace.Decode(enc)
	if err != nil {
		t.Fatal(err)
	}
	if len(tr2.Blobs) != 1 || len(tr2.Blobs[0].Ranges) != 2 || tr2.Blobs[0].Digest != e.dgst {
		t.Fatalf("trace: %+v", tr2)
	}

	f2 := newFetcher(t, Options{})
	if err := f2.Prefetch(t.Context(), tr2); err != nil {
		t.Fatal(err)
	}
	requests := e.proxy.Requests()
	b2 := open(t, f2, e)
	defer b2.Close()
	for _, r := range ranges {
		if err := checkRead(t, b2, e.data, r[0], r[1]); err != nil {
			t.Fatal(err)
		}
	}
	if e.proxy.Requests() != requests || b2.Stats().Misses != 0 {
		t.Fatalf("after prefetch: %d new requests, stats %+v", e.proxy.Requests()-requests, b2.Stats())
	}
}

// TestPrefetchFetchesExactRanges: a replay fetches the traced bytes, not the fill units around
// them; reads inside them are hits, and a read that strays outside fetches whole units.
func TestPrefetchFetchesExactRanges(t *testing.T) {
	e := newEnv(t, testregistry.Options{}, 32*testUnit, true)
	f := newFetcher(t, Options{})
	b := open(t, f, e) // held across the replay, so its counters see the replay's fetches
	defer b.Close()
	ranges := []blocktrace.Range{{Off: 100, Len: 3000, First: 1}, {Off: 5*testUnit - 700, Len: 1500, First: 2},
		{Off: 31*testUnit + 10, Len: testUnit - 10, First: 3},
		{Off: 8*testUnit + 5, Len: 17 * testUnit, First: 4}} // over a stream batch: units 8-25
	tr := blocktrace.Trace{Blobs: []blocktrace.Blob{{Ref: e.ref, Digest: e.dgst, Size: int64(len(e.data)), Ranges: ranges}}}
	if err := f.Prefetch(t.Context(), tr); err != nil {
		t.Fatal(err)
	}
	want := uint64(18 * testUnit)
	for _, r := range ranges[:3] {
		want += uint64(r.Len)
	}
	if got := b.Stats().BytesFetched; got != want {
		t.Fatalf("replay fetched %d bytes, want the traced %d", got, want)
	}
	requests := e.proxy.Requests()
	for _, r := range ranges {
		for _, q := range [][2]int64{{r.Off, r.Len}, {r.Off + r.Len/3, r.Len / 3}, {r.Off + r.Len - 1, 1}} {
			if err := checkRead(t, b, e.data, q[0], q[1]); err != nil {
				t.Fatal(err)
			}
		}
	}
	if e.proxy.Requests() != requests || b.Stats().Misses != 0 {
		t.Fatalf("reads inside replayed ranges: %d requests, stats %+v", e.proxy.Requests()-requests, b.Stats())
	}
	if err := checkRead(t, b, e.data, 50, 100); err != nil {
		t.Fatal(err)
	}
	waitForIdle(t, b)
	if e.proxy.Requests() != requests+1 || !unitPresent(b, 0) {
		t.Fatalf("a read past a replayed range: %d requests, unit 0 filled %v", e.proxy.Requests()-requests, unitPresent(b, 0))
	}
}

// TestReadsJoinRangeFillInFlight: reads and fills inside a range being fetched wait for it
// instead of fetching its units again.
func TestReadsJoinRangeFillInFlight(t *testing.T) {
	e := newEnv(t, testregistry.Options{}, 8*testUnit, true)
	e.proxy.SetShaping(faultproxy.Shaping{Latency: 200 * time.Millisecond})
	f := newFetcher(t, Options{})
	b := open(t, f, e)
	defer b.Close()
	off, n := int64(1000), int64(2*testUnit)
	done := make(chan error, 1)
	go func() { done <- b.FillRange(t.Context(), off, n) }()
	for _, ranges := inFlight(b); ranges == 0; _, ranges = inFlight(b) {
		time.Sleep(time.Millisecond)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := checkRead(t, b, e.data, off+testUnit, 500); err != nil {
			t.Error(err)
		}
	})
	wg.Go(func() {
		if err := b.Fill(t.Context(), off+n-10, 10); err != nil {
			t.Error(err)
		}
	})
	wg.Wait()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := checkRead(t, b, e.data, off, n); err != nil {
		t.Fatal(err)
	}
	if got := e.proxy.Requests(); got != 1 {
		t.Fatalf("%d requests, want the range fill's one", got)
	}
}

func TestHostsTomlMirrorFallback(t *testing.T) {
	e := newEnv(t, testregistry.Options{}, 4*testUnit, true)
	e.proxy.SetRandom(1, 1, faultproxy.Status503) // the mirror is broken
	hostsDir := t.TempDir()
	// The image names a registry that does not resolve; hosts.toml maps it to the real one,
	// with the (broken) mirror first.
	dir := filepath.Join(hostsDir, "registry.invalid")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	toml := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\"]\n", e.reg.URL, e.proxy.URL)
	if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	f := newFetcher(t, Options{HostsDir: hostsDir, ReadTimeout: 5 * time.Second})
	b, err := f.Open(t.Context(), "registry.invalid/obd/test:v1", e.dgst, int64(len(e.data)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := checkRead(t, b, e.data, 0, int64(len(e.data))); err != nil {
		t.Fatal(err)
	}
	if e.proxy.Requests() == 0 {
		t.Fatal("the mirror was never asked")
	}
}

// TestHostsTomlTLS: a registry behind TLS with a private CA is reached through hosts.toml
// (server + ca); without the CA the TLS handshake is refused.
func TestHostsTomlTLS(t *testing.T) {
	e := newEnv(t, testregistry.Options{}, 2*testUnit, false)
	upstream, err := url.Parse(e.reg.URL)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(httputil.NewSingleHostReverseProxy(upstream))
	defer srv.Close()
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})

	hostsDir := t.TempDir()
	dir := filepath.Join(hostsDir, "tls.invalid")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	write := func(toml string) {
		if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(toml), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	read := func() error {
		f := newFetcher(t, Options{HostsDir: hostsDir, ReadTimeout: 2 * time.Second})
		b, err := f.Open(t.Context(), "tls.invalid/obd/test", e.dgst, int64(len(e.data)))
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		return checkRead(t, b, e.data, 0, int64(len(e.data)))
	}
	write(fmt.Sprintf("server = %q\nca = \"ca.crt\"\n", srv.URL))
	if err := read(); err != nil {
		t.Fatalf("read over TLS with the CA from hosts.toml: %v", err)
	}
	write(fmt.Sprintf("server = %q\n", srv.URL))
	if err := read(); err == nil || errors.Is(err, ErrDeadline) || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("read over TLS without the CA: %v, want a certificate error", err)
	}
}

func TestMetrics(t *testing.T) {
	e := newEnv(t, testregistry.Options{}, 4*testUnit, false)
	reg := prometheus.NewRegistry()
	f := newFetcher(t, Options{Registerer: reg})
	b := open(t, f, e)
	defer b.Close()
	for range 3 {
		if err := checkRead(t, b, e.data, 0, 10); err != nil {
			t.Fatal(err)
		}
	}
	waitForIdle(t, b) // a fetch is counted once stored, which may be after its reader returned
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range families {
		m := mf.GetMetric()[0]
		if m.GetCounter() != nil {
			got[mf.GetName()] = m.GetCounter().GetValue()
		} else {
			got[mf.GetName()] = float64(m.GetHistogram().GetSampleCount())
		}
	}
	want := map[string]float64{
		"obd_remotefetch_cache_hits_total": 2, "obd_remotefetch_cache_misses_total": 1,
		"obd_remotefetch_fetched_bytes_total": testUnit, "obd_remotefetch_fetch_duration_seconds": 1,
		"obd_remotefetch_retries_total": 0, "obd_remotefetch_errors_total": 0,
		"obd_remotefetch_ipfs_served_total": 0, "obd_remotefetch_ipfs_passed_total": 0, "obd_remotefetch_ipfs_seeded_total": 0,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	if _, err := New(Options{CacheDir: t.TempDir(), Registerer: reg}); err == nil {
		t.Error("second Fetcher on the same registerer: no error")
	}
}

func FuzzParseContentRange(f *testing.F) {
	f.Add("bytes 0-99/100")
	f.Add("bytes 5-5/*")
	f.Add("bytes 9-1/2")
	f.Fuzz(func(t *testing.T, s string) {
		first, last, total, err := parseContentRange(s)
		if err != nil {
			return
		}
		if first < 0 || last < first || (total >= 0 && last >= total) {
			t.Fatalf("%q parsed to inconsistent %d-%d/%d", s, first, last, total)
		}
	})
}

// testLogger logs at debug level into the test's output (shown on failure or with -v).
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// unitPresent reports whether unit u of b is in the cache as a whole.
func unitPresent(b *Blob, u int) bool { return len(b.entry.Missing(u, u)) == 0 }

// inFlight counts the unit fetches and range fills of b in flight.
func inFlight(b *Blob) (units, ranges int) {
	f := b.fill.(*filler)
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.inflight), len(f.ranges)
}

// waitForIdle waits until b has no fetch in flight (readahead runs in the background).
func waitForIdle(t testing.TB, b *Blob) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if units, ranges := inFlight(b); units+ranges == 0 {
			return
		}
	}
	t.Fatal("fetches still in flight after 10s")
}

// TestStreamAcrossBatches: long requests stream through several batches while concurrent
// readers take bytes from memory, from the cache file and from both in one read, with some
// responses cut short; every read is correct and the stored blob is the blob.
func TestStreamAcrossBatches(t *testing.T) {
	per := int64(streamBatch / testUnit)
	e := newEnv(t, testregistry.Options{}, int(3*per*testUnit+77), true)
	e.proxy.SetShaping(faultproxy.Shaping{Bandwidth: 32 << 20})
	e.proxy.SetRandom(0.2, 3, faultproxy.Truncate)
	before := runtime.NumGoroutine()
	f := newFetcher(t, Options{MaxRequestSize: 4 * per * testUnit})
	b := open(t, f, e)
	for _, u := range []int64{3, per - 1, per + 5, 2 * per} { // stored before the long reads
		if err := b.Fill(t.Context(), u*testUnit, testUnit); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 9))
			for range 20 {
				off := r.Int64N(int64(len(e.data)))
				if err := checkRead(t, b, e.data, off, 1+r.Int64N(3*testUnit)); err != nil {
					t.Error(err)
				}
			}
		})
	}
	if err := checkRead(t, b, e.data, 1, int64(len(e.data))-1); err != nil { // one read across all
		t.Error(err)
	}
	wg.Wait()
	if err := b.Fill(t.Context(), 0, int64(len(e.data))); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(e.data))
	if _, err := b.entry.ReadAt(got, 0); err != nil || !bytes.Equal(got, e.data) {
		t.Fatalf("stored blob differs from the blob (read error %v)", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	e.proxy.CloseIdleConnections()
	noLeaks(t, before)
}

// A fill that was already under way when the blob failed its digest check may still store
// its unit afterwards; a read of that unit must fail like every other read of the blob.
func TestReadFailsAfterMismatchWhenAUnitIsStoredLate(t *testing.T) {
	e := newEnv(t, testregistry.Options{}, 5*testUnit, true)
	f := newFetcher(t, Options{})
	b := open(t, f, e)
	defer b.Close()
	e.proxy.InjectNext(faultproxy.Corrupt, 1)
	if err := b.Verify(t.Context()); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Verify with a corrupted body: %v", err)
	}
	storeLate(t, b, e.data[:testUnit])
	if _, err := b.ReadAt(make([]byte, 10), 0); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("read of a unit stored after the mismatch: %v, want ErrDigestMismatch", err)
	}
}

// storeLate writes data at the blob's offset 0 into its cache entry, as a fill that began
// before the blob failed its check would. The blob's own background verification may still
// discard the entry once meanwhile, so a discarded write is tried again.
func storeLate(t *testing.T, b *Blob, data []byte) {
	t.Helper()
	var err error
	for range 50 {
		var w *cache.Writer
		if w, err = b.entry.NewWriter(0, int64(len(data))); err != nil {
			t.Fatal(err)
		}
		if _, err = w.WriteAt(data, 0); err != nil {
			t.Fatal(err)
		}
		if _, err = w.Commit(); err == nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("storing a unit after the mismatch: %v", err)
}
