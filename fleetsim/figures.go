// Package fleetsim models a fleet of nodes starting one image at once (README, "Fleet scale"),
// from figures measured on one machine (bench/fleet): how long one node's start takes and how
// many bytes it asks of the origin registry, for each way of reaching the image: straight from
// the origin, through a zone mirror (cold for the zone's first node, warm for the others),
// through a mirror warmed on the first manifest GET (prediction, package mirrorwarm), and
// peer to peer through IPFS (kubo). It is a pure model beside the read path of docs/DESIGN.md: `obd
// fleet-sim` runs it and charts it with gonum/plot.
package fleetsim

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"time"
)

// Mode is a way a node reaches the image.
type Mode string

const (
	Direct     Mode = "direct"            // every node reads from the origin
	MirrorCold Mode = "mirror-cold"       // a zone mirror that holds nothing yet
	MirrorWarm Mode = "mirror-warm"       // a zone mirror that holds the image
	Predicted  Mode = "mirror+prediction" // a cold mirror warmed on the first manifest GET
	P2P        Mode = "p2p"               // from peers (IPFS) that hold the image whole
	// P2PSeed samples are a canary's: Start is from its start until its IPFS node holds the
	// whole image for its peers, OriginBytes what the origin sent it meanwhile.
	P2PSeed Mode = "p2p-seed"
)

// Sample is one measured node start.
type Sample struct {
	Start       time.Duration `json:"start"`        // manifest GET to the start's last read
	OriginBytes int64         `json:"origin_bytes"` // blob bytes the origin sent during and after it (warming included)
	OriginGets  int64         `json:"origin_gets"`  // blob GETs the origin served
	NodeBytes   int64         `json:"node_bytes"`   // bytes the node fetched
}

// Figures are the measured inputs of the model.
type Figures struct {
	Note       string            `json:"note"`        // how they were measured
	ImageBytes int64             `json:"image_bytes"` // the image's layer blobs
	TraceBytes int64             `json:"trace_bytes"` // what one start reads
	OriginRTT  time.Duration     `json:"origin_rtt"`  // latency per request to the origin
	MirrorRTT  time.Duration     `json:"mirror_rtt"`  // latency per request to the mirror
	OriginBW   int64             `json:"origin_bw"`   // bytes/s of the origin link, 0 = unshaped
	Modes      map[Mode][]Sample `json:"modes"`       // by mode, every run
}

// Median returns the median sample of a mode by start time.
func (f Figures) Median(m Mode) (Sample, error) {
	s := slices.Clone(f.Modes[m])
	if len(s) == 0 {
		return Sample{}, fmt.Errorf("fleetsim: no samples of mode %s", m)
	}
	slices.SortFunc(s, func(a, b Sample) int { return int(a.Start - b.Start) })
	return s[len(s)/2], nil
}

// Load reads figures written by Save.
func Load(path string) (Figures, error) {
	var f Figures
	b, err := os.ReadFile(path)
	if err != nil {
		return f, err
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return f, fmt.Errorf("fleetsim: %s: %w", path, err)
	}
	return f, nil
}

// Save writes figures as indented JSON.
func (f Figures) Save(path string) error {
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
