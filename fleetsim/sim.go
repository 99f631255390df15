package fleetsim

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// Config is a fleet and its links. Zero values take the defaults.
type Config struct {
	Nodes    []int   // fleet sizes; default 100, 300, 1000, 3000, 10000
	ZoneSize int     // nodes per zone mirror; default 100
	OriginBW float64 // bytes/s the origin registry can send in all; default 10 Gbit/s
	MirrorBW float64 // bytes/s one zone mirror can send; default 10 Gbit/s
	Seed     uint64
}

func (c Config) withDefaults() Config {
	if len(c.Nodes) == 0 {
		c.Nodes = []int{100, 300, 1000, 3000, 10000}
	}
	c.ZoneSize = cmp.Or(c.ZoneSize, 100)
	c.OriginBW = cmp.Or(c.OriginBW, 10e9/8)
	c.MirrorBW = cmp.Or(c.MirrorBW, 10e9/8)
	return c
}

// SimModes are the modes a simulation reports, in order.
var SimModes = []Mode{Direct, MirrorCold, MirrorWarm, Predicted, P2P}

// Point is one mode at one fleet size.
type Point struct {
	Mode         Mode
	Nodes, Zones int
	OriginBytes  float64 // bytes the origin sends for the whole wave
	P50, P99     time.Duration
}

// Simulate starts every fleet size's nodes at once and returns, per mode and size, the
// origin's egress and the start-time percentiles.
//
// The model is a fluid one over the measured single-node figures. A node's start is a start
// of its mode drawn from the measured runs plus the time the wave's shared bottleneck needs
// beyond what the measured node saw: the bytes that link must carry for the whole wave
// divided by its capacity (all nodes start together, so all of them wait for it to drain).
//
//   - direct: every node asks the origin for its start's bytes (the measured direct run's).
//   - mirror-cold: the zone's mirror holds nothing and nothing warms it: every node's reads go
//     to the origin, and its misses at the mirror cost the origin what the measured run's did
//     (the mirror starts streaming the whole blob each time, and drops it).
//   - mirror-warm: the zone's mirror holds the image; each mirror serves its zone's starts,
//     the origin nothing.
//   - mirror+prediction: the mirrors are cold; the first manifest GET in each zone makes the
//     zone's warmer read the whole image from the origin; the nodes' reads go to the origin
//     until the mirror holds what they read (the measured predicted run's origin bytes per
//     node, less the image, count as such reads).
//   - p2p: peer to peer through IPFS as obd has it, where a node serves a blob to its peers
//     once it holds all of it: a canary node starts the image from the origin and holds it
//     whole after the measured seed time (the p2p-seed samples, whose origin bytes are the
//     whole wave's); the fleet starts then, every node from its peers (the p2p samples), so a
//     start takes the seed time plus a peer start. Peers' upload capacity is not modelled:
//     IPFS spreads blocks through every node that has fetched them.
func Simulate(f Figures, c Config) ([]Point, error) {
	c = c.withDefaults()
	med := map[Mode]Sample{}
	for _, m := range []Mode{Direct, MirrorCold, MirrorWarm, Predicted, P2PSeed, P2P} {
		s, err := f.Median(m)
		if err != nil {
			return nil, err
		}
		med[m] = s
	}
	var out []Point
	for _, n := range c.Nodes {
		zones := (n + c.ZoneSize - 1) / c.ZoneSize
		perZone := float64(min(n, c.ZoneSize))
		rng := rand.New(rand.NewPCG(c.Seed, uint64(n)))
		for _, mode := range SimModes {
			p := Point{Mode: mode, Nodes: n, Zones: zones}
			var extra time.Duration
			samples := f.Modes[mode]
			switch mode {
			case Direct:
				p.OriginBytes = float64(n) * float64(med[Direct].OriginBytes)
				extra = drain(p.OriginBytes, float64(med[Direct].OriginBytes), c.OriginBW, f.OriginBW)
			case MirrorCold:
				p.OriginBytes = float64(n) * float64(med[MirrorCold].OriginBytes)
				extra = drain(p.OriginBytes, float64(med[MirrorCold].OriginBytes), c.OriginBW, f.OriginBW)
			case MirrorWarm:
				p.OriginBytes = 0
				node := float64(med[MirrorWarm].NodeBytes)
				extra = drain(perZone*node, node, c.MirrorBW, 0)
			case Predicted:
				image := float64(f.ImageBytes)
				direct := math.Max(0, float64(med[Predicted].OriginBytes)-image) // the node's own origin reads
				p.OriginBytes = float64(zones)*image + float64(n)*direct
				extra = drain(p.OriginBytes, float64(med[Predicted].OriginBytes), c.OriginBW, f.OriginBW)
			case P2P:
				p.OriginBytes = float64(med[P2PSeed].OriginBytes)
				extra = med[P2PSeed].Start
			}
			starts := make([]time.Duration, n)
			for i := range starts {
				starts[i] = samples[rng.IntN(len(samples))].Start + extra
			}
			slices.Sort(starts)
			p.P50, p.P99 = starts[n/2], starts[min(n-1, n*99/100)]
			out = append(out, p)
		}
	}
	return out, nil
}

// drain is how much longer than the measured node a shared link of capacity bw takes to carry
// the wave's bytes: the measured node moved its own single bytes over a link of measured
// bytes/s (0: unshaped, counted as bw) by itself.
func drain(bytes, single, bw float64, measured int64) time.Duration {
	link := bw
	if measured > 0 {
		link = math.Min(bw, float64(measured))
	}
	return time.Duration(math.Max(0, bytes/bw-single/link) * float64(time.Second))
}

// Markdown renders the points as a table, one row per fleet size.
func Markdown(points []Point) string {
	var b strings.Builder
	b.WriteString("| nodes |")
	for _, m := range SimModes {
		fmt.Fprintf(&b, " %s: origin egress, p50 / p99 start |", m)
	}
	b.WriteString("\n|---|")
	for range SimModes {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for i := 0; i < len(points); i += len(SimModes) {
		fmt.Fprintf(&b, "| %d |", points[i].Nodes)
		for _, p := range points[i : i+len(SimModes)] {
			fmt.Fprintf(&b, " %s, %.2f / %.2f s |", gib(p.OriginBytes), p.P50.Seconds(), p.P99.Seconds())
		}
		b.WriteString("\n")
	}
	return b.String()
}

func gib(n float64) string {
	if n < 1<<30 {
		return fmt.Sprintf("%.0f MiB", n/(1<<20))
	}
	return fmt.Sprintf("%.1f GiB", n/(1<<30))
}
