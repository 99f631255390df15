package bdd

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestAPICallPanicIsInternal: a call whose handler panics fails with Internal, logged under
// err with the panic, instead of taking the daemon down.
func TestAPICallPanicIsInternal(t *testing.T) {
	logs := make(records, 16)
	s := &Server{log: slog.New(logs)}
	info := &grpc.UnaryServerInfo{FullMethod: "/obd.bdd.v1.Daemon/Attach"}
	_, err := s.logCall(context.Background(), nil, info, func(context.Context, any) (any, error) {
		var m map[string]int
		m["boom"]++ // a nil map write: a runtime panic
		return nil, nil
	})
	if status.Code(err) != codes.Internal || !strings.Contains(err.Error(), "panic") {
		t.Fatalf("got %v, want Internal naming the panic", err)
	}
	if msg, logged := logs.next(); msg != "api call panicked" || !strings.Contains(logged, "nil map") {
		t.Errorf("logged %q with err %q, want the panic", msg, logged)
	}
}
