package coldstart

import "math/rand/v2"

// Mode is how an image reaches the container's root filesystem.
type Mode string

// The modes of issues #8 and #18, in the order the report lists them.
const (
	ModeFullPull Mode = "overlayfs" // containerd pulls and unpacks the gzip OCI image, then runs
	ModeOBD      Mode = "obd"       // overlaybd image read lazily through bdd
	ModeOBDTrace Mode = "obd+trace" // as ModeOBD, with a locally recorded trace prefetched at start
	// ModeOBDRegistryTrace is ModeOBD on a node that has never run the image: the trace comes
	// from the registry, an artifact referring to the image that `ctr-obd record-trace --push`
	// left there, and the snapshotter replays it by itself.
	ModeOBDRegistryTrace Mode = "obd+registry-trace"
	ModeStargz           Mode = "stargz" // eStargz image read lazily by the stargz snapshotter
	// ModeEstargzOpt is ModeStargz on an eStargz image optimized for the workload (its
	// prioritized files first, prefetched at mount): stargz's peer of a recorded start.
	ModeEstargzOpt Mode = "estargz-opt"
	// ModeOBDIndex reads the unconverted gzip image lazily through bdd: `obd index` left a
	// seek index and a metadata layer beside it in the registry, which the snapshotter finds.
	ModeOBDIndex Mode = "obd+index"
	// ModeSOCI reads the same gzip image's layers lazily through the SOCI snapshotter
	// (bench/soci): a SOCI index with a zTOC of every layer is pushed beside them, and the
	// image's tag "soci" names an OCI index holding the image's manifest (annotated with the SOCI
	// index's digest) and the SOCI index: obd+index's peer.
	ModeSOCI Mode = "soci"
)

// Modes lists every mode in report order.
var Modes = []Mode{ModeFullPull, ModeOBD, ModeOBDTrace, ModeOBDRegistryTrace, ModeOBDIndex, ModeStargz, ModeEstargzOpt, ModeSOCI}

// Network is the link between the host and the registry.
type Network string

const (
	NetLoopback Network = "loopback" // unshaped loopback
	NetShaped   Network = "shaped"   // 100 Mbit/s, 20 ms round trip per request
)

// Networks lists every network in report order.
var Networks = []Network{NetLoopback, NetShaped}

// Cell is one combination the benchmark measures repeatedly.
type Cell struct {
	Workload string
	Mode     Mode
	Network  Network
}

// Trial is one cold run of a cell; Round counts the cell's runs from 0.
type Trial struct {
	Cell
	Round int
}

// Schedule returns runs trials of every cell, interleaved: round r holds one trial of each cell,
// in an order shuffled afresh per round (seeded, so a schedule can be repeated). Interleaving
// spreads slow drifts of the machine (page cache, thermal, background jobs) over all cells
// instead of biasing whichever cell ran last.
func Schedule(cells []Cell, runs int, seed uint64) []Trial {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	trials := make([]Trial, 0, len(cells)*runs)
	for round := range runs {
		start := len(trials)
		for _, c := range cells {
			trials = append(trials, Trial{Cell: c, Round: round})
		}
		rng.Shuffle(len(cells), func(i, j int) {
			trials[start+i], trials[start+j] = trials[start+j], trials[start+i]
		})
	}
	return trials
}
