package bdd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"time"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/blockdev"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/net/netutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ListenControl creates the control socket at path, readable and writable by its
// owner only (bdd runs as root). A stale socket left by a killed bdd is replaced;
// a socket some live process still answers on is an error.
func ListenControl(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("bdd: socket dir: %w", err)
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("bdd: %s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("bdd: another bdd is serving %s", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("bdd: remove stale socket: %w", err)
		}
	}
	// The umask keeps the socket private from the moment it exists.
	l, err := listenUnixPrivate(path)
	if err != nil {
		return nil, fmt.Errorf("bdd: listen %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("bdd: chmod %s: %w", path, err)
	}
	return l, nil
}

// stopGrace bounds how long Serve lets in-flight calls finish once asked to stop: a
// long call (a Prefetch of a large trace) must not keep the daemon from exiting.
const stopGrace = 3 * time.Second

// Serve serves the control API on l until ctx is done, then stops gracefully:
// in-flight calls get stopGrace to finish and are then cancelled.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	g := grpc.NewServer(grpc.UnaryInterceptor(s.logCall))
	bddv1.RegisterDaemonServer(g, s)
	stopped := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			timer := time.AfterFunc(stopGrace, g.Stop)
			g.GracefulStop()
			timer.Stop()
		case <-stopped:
		}
	}()
	err := g.Serve(netutil.LimitListener(l, s.cfg.Limits.MaxAPIConnections))
	close(stopped)
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// logCall logs every API call at debug level with its outcome and duration. A call that
// panics fails with Internal, logged with the panic and its stack, and the daemon goes on
// serving every device.
func (s *Server) logCall(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	start := time.Now()
	defer func() {
		if errors.Is(err, blockdev.ErrPanic) {
			s.log.Error("api call panicked", "method", info.FullMethod, "err", err)
			err = status.Error(codes.Internal, err.Error())
		}
		s.log.Debug("api call", "method", info.FullMethod, "code", status.Code(err).String(), "duration", time.Since(start))
	}()
	defer blockdev.Recovered(&err, info.FullMethod)
	return handler(ctx, req)
}

// ServeMetrics serves gatherer's metrics at /metrics, and Go's profiles at
// /debug/pprof/, on l until ctx is done. Listen on a loopback address.
func ServeMetrics(ctx context.Context, l net.Listener, gatherer prometheus.Gatherer) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shutdownCtx)
	}()
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("bdd: metrics: %w", err)
	}
	return nil
}
