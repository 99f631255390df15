// Command wanlink is the emulated wide-area link of obd's demo (demo/demo.sh): the demo's nodes
// reach its registry only through it. It is the cold-start benchmark's model of a slow link
// (bench/coldstart), as a process:
//
//	client → relay (counts the bytes sent to clients) → faultproxy (adds --latency before each
//	request, shares --bandwidth among all response bodies) → blob front (serves blobs from the
//	registry's storage, as object storage does behind a real registry) → registry
//
// The kernel's netem is not needed: the link is shaped at the HTTP level, per request, which is
// what a registry client pays for. On start it prints one line,
//
//	wanlink: listening on 127.0.0.1:PORT, stats on 127.0.0.1:PORT
//
// and serves "requests N\nbytes N\n" (requests forwarded, bytes sent to clients, headers
// included) on the stats address. It runs until SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/obdproject/obd/bench/coldstart"
	"github.com/obdproject/obd/internal/faultproxy"
)

func main() {
	upstream := flag.String("upstream", "", "the registry's host:port (required)")
	storage := flag.String("storage", "", "the registry's filesystem rootdirectory: blobs are served from it directly (empty: the registry serves them)")
	latency := flag.Duration("latency", 20*time.Millisecond, "added before each request is forwarded (one round trip)")
	mbits := flag.Float64("bandwidth", 100, "Mbit/s shared by all response bodies (0: unlimited)")
	flag.Parse()
	if err := run(*upstream, *storage, *latency, *mbits); err != nil {
		fmt.Fprintln(os.Stderr, "wanlink:", err)
		os.Exit(1)
	}
}

func run(upstream, storage string, latency time.Duration, mbits float64) error {
	if upstream == "" {
		return errors.New("--upstream: required")
	}
	if latency < 0 || mbits < 0 {
		return fmt.Errorf("--latency %v, --bandwidth %v: want values >= 0", latency, mbits)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	origin := upstream
	if storage != "" {
		front, err := coldstart.StartBlobFront(upstream, storage)
		if err != nil {
			return err
		}
		defer front.Close()
		origin = front.Addr
	}
	proxy, err := faultproxy.New("http://" + origin)
	if err != nil {
		return err
	}
	defer proxy.Close()
	proxy.SetShaping(faultproxy.Shaping{Latency: latency, Bandwidth: int64(mbits * 1e6 / 8)})
	relay, err := coldstart.StartRelay(proxy.Host)
	if err != nil {
		return err
	}
	defer relay.Close()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("stats: listen: %w", err)
	}
	stats := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "requests %d\nbytes %d\n", proxy.Requests(), relay.BytesDown())
	})}
	go func() { _ = stats.Serve(ln) }()
	defer stats.Close()

	fmt.Printf("wanlink: listening on %s, stats on %s\n", relay.Addr, ln.Addr())
	<-ctx.Done()
	return nil
}
