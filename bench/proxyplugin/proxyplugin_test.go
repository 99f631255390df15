package proxyplugin

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func TestServeReplacesStaleSocketAndStops(t *testing.T) {
	address := filepath.Join(t.TempDir(), "run", "plugin.sock")
	if err := os.MkdirAll(filepath.Dir(address), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(address, nil, 0o600); err != nil { // a stale socket file
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- Serve(ctx, address, func(s *grpc.Server) { healthpb.RegisterHealthServer(s, health.NewServer()) })
	}()
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health %v, want SERVING", resp.GetStatus())
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatalf("Serve after cancel: %v", err)
	}
}
