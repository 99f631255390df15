package remotefetch

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Stats are a Blob's counters since it was opened.
type Stats struct {
	Hits         uint64 // reads served entirely from the cache
	Misses       uint64 // reads that needed at least one fetch
	BytesFetched uint64 // bytes received from the registry and stored
	Retries      uint64 // failed attempts that were retried
	Errors       uint64 // reads that returned an error
}

// counters is a Blob's Stats, updated atomically, mirrored into the Fetcher's metrics.
type counters struct {
	m                                      *metrics
	hits, misses, fetched, retries, errors atomic.Uint64
}

func (c *counters) hit()  { c.hits.Add(1); c.m.hits.Inc() }
func (c *counters) miss() { c.misses.Add(1); c.m.misses.Inc() }
func (c *counters) fetchedBytes(n int) {
	c.fetched.Add(uint64(n))
	c.m.bytesFetched.Add(float64(n))
}
func (c *counters) retry() { c.retries.Add(1); c.m.retries.Inc() }
func (c *counters) fail()  { c.errors.Add(1); c.m.errors.Inc() }

func (c *counters) stats() Stats {
	return Stats{Hits: c.hits.Load(), Misses: c.misses.Load(), BytesFetched: c.fetched.Load(),
		Retries: c.retries.Load(), Errors: c.errors.Load()}
}

// metrics are the Fetcher's Prometheus collectors.
type metrics struct {
	hits, misses, bytesFetched, retries, errors prometheus.Counter
	fetchLatency                                prometheus.Histogram
	// Reads through the IPFS gateway (ipfs.go): requests it answered, requests passed to the
	// registry instead, blobs added to the node for its peers.
	ipfsServed, ipfsPassed, ipfsSeeded prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "obd", Subsystem: "remotefetch", Name: name, Help: help})
	}
	m := &metrics{
		hits:         counter("cache_hits_total", "Reads served entirely from the local cache."),
		misses:       counter("cache_misses_total", "Reads that needed data from the registry."),
		bytesFetched: counter("fetched_bytes_total", "Bytes received from registries and stored in the cache."),
		retries:      counter("retries_total", "Failed registry requests that were retried."),
		errors:       counter("errors_total", "Reads that returned an error, and blobs that failed digest verification."),
		fetchLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "obd", Subsystem: "remotefetch",
			Name: "fetch_duration_seconds", Help: "Duration of one registry range request, headers to last byte.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}),
		ipfsServed: counter("ipfs_served_total", "Range requests the IPFS gateway answered (the bytes come from peers)."),
		ipfsPassed: counter("ipfs_passed_total", "Range requests the IPFS gateway failed or did not answer in time; the registry served them."),
		ipfsSeeded: counter("ipfs_seeded_total", "Blobs held whole and added to the node's IPFS for its peers."),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.hits, m.misses, m.bytesFetched, m.retries, m.errors, m.fetchLatency,
		m.ipfsServed, m.ipfsPassed, m.ipfsSeeded} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, fmt.Errorf("remotefetch: metrics already registered (one Fetcher per registerer): %w", err)
			}
			return nil, fmt.Errorf("remotefetch: register metrics: %w", err)
		}
	}
	return m, nil
}
