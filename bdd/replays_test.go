package bdd

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/opencontainers/go-digest"
)

func testPrefetcher(r *replays, blobs ...digest.Digest) *prefetcher {
	p := &prefetcher{blobs: blobs, replays: r, walk: true, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	return p
}

// TestReplaysStopCoveredPrefetchers: a replay stops the prefetchers whose blobs it covers
// whether it starts before or after them, leaves the others alone, and keeps covering new
// devices for a while after it ends.
func TestReplaysStopCoveredPrefetchers(t *testing.T) {
	a, b, c := digest.FromString("a"), digest.FromString("b"), digest.FromString("c")
	r := newReplays()

	running := testPrefetcher(r, a, b)
	other := testPrefetcher(r, a, c)
	local := testPrefetcher(r) // no remote layers: never covered
	for _, p := range []*prefetcher{running, other, local} {
		if !r.register(p) {
			t.Fatal("a prefetcher was refused with no replay running")
		}
	}
	r.begin([]digest.Digest{b, a})
	if running.ctx.Err() == nil {
		t.Error("a replay of a and b left the prefetcher over a and b running")
	}
	if other.ctx.Err() != nil || local.ctx.Err() != nil {
		t.Error("a replay of a and b stopped a prefetcher it does not cover")
	}
	if r.register(testPrefetcher(r, a)) {
		t.Error("a prefetcher over a started while a replay of a runs")
	}
	r.end([]digest.Digest{b, a})
	if r.register(testPrefetcher(r, b)) {
		t.Error("a prefetcher over b started just after a replay of b ended")
	}

	r.mu.Lock()
	r.ended[a] = r.ended[a].Add(-2 * replayCoverWindow)
	r.mu.Unlock()
	if !r.register(testPrefetcher(r, a)) {
		t.Error("a replay of a still covers new devices after its window")
	}
	for _, p := range []*prefetcher{other, local} {
		r.unregister(p)
	}
}
