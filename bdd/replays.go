package bdd

import (
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// replayCoverWindow is how long after a trace replay ends a device attached over its blobs
// still counts as covered by it: the snapshotter asks for the replay right after it
// attaches the device the trace was recorded for, and a harness may ask just before.
const replayCoverWindow = time.Minute

// replays tells devices when a trace replay covers their remote blobs. Such a device leaves
// fetching ahead to the replay: the trace holds what the workload will read, and the
// metadata walk and whole-file prefetch would only add bytes on the link the replay needs
// (bench/FINDINGS.md: 1-2 MiB on a python start). One mutex guards both the marks and the
// registered prefetchers, so a replay and an attach racing each other end the same way
// whichever comes first.
type replays struct {
	mu      sync.Mutex
	running map[digest.Digest]int       // replays in progress per blob
	ended   map[digest.Digest]time.Time // when the last replay of a blob ended
	active  map[*prefetcher]bool        // prefetchers still fetching ahead
}

func newReplays() *replays {
	return &replays{running: map[digest.Digest]int{}, ended: map[digest.Digest]time.Time{}, active: map[*prefetcher]bool{}}
}

// begin marks blobs as being replayed and stops the prefetchers that replay covers.
func (r *replays) begin(blobs []digest.Digest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, d := range blobs {
		r.running[d]++
	}
	for p := range r.active {
		if r.coversLocked(p.blobs) {
			delete(r.active, p)
			p.yield()
		}
	}
}

// end marks one replay of blobs as finished.
func (r *replays) end(blobs []digest.Digest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	for _, d := range blobs {
		if r.running[d]--; r.running[d] <= 0 {
			delete(r.running, d)
		}
		r.ended[d] = now
	}
	for d, t := range r.ended { // forget old marks, so the map stays small
		if now.Sub(t) > replayCoverWindow && r.running[d] == 0 {
			delete(r.ended, d)
		}
	}
}

// register adds a prefetcher that is about to fetch ahead; it reports false, leaving the
// prefetcher out, when a replay already covers the prefetcher's blobs.
func (r *replays) register(p *prefetcher) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.coversLocked(p.blobs) {
		return false
	}
	r.active[p] = true
	return true
}

// unregister removes a stopped prefetcher.
func (r *replays) unregister(p *prefetcher) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.active, p)
}

// coversLocked reports whether every one of blobs is being replayed or was lately.
func (r *replays) coversLocked(blobs []digest.Digest) bool {
	if len(blobs) == 0 {
		return false
	}
	for _, d := range blobs {
		if r.running[d] == 0 && time.Since(r.ended[d]) > replayCoverWindow {
			return false
		}
	}
	return true
}
