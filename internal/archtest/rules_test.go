package archtest

import "slices"

// rules is the module's dependency table; docs/DESIGN.md ("Who may import whom") shows the same
// table in prose and must change with it.
//
// Patterns are package paths relative to the module: "x" is the package x alone, "x/..." is x
// and every package below it, and a path element may be a glob ("sandbox/*api"). A scope of
// links checks every module package the importer's binary links (go list's Deps: transitive,
// tests excluded); imports checks only its own import lines (go list's Imports).
var rules = []rule{
	{
		name:  "formats link no fetcher, daemon, transport or client",
		from:  slices.Concat(layerFormats, []string{"imagelabels/...", "rangetable/..."}, traceFormats),
		scope: links,
		deny:  []string{"remotefetch/...", "bdd/...", "blockdev/...", "snapshotter/...", "convert/...", "sandbox/...", "api/..."},
	},
	{
		name:  "the image reader links no fetcher, daemon, transport or client",
		from:  []string{"obdimage/..."},
		scope: links,
		deny:  []string{"remotefetch/...", "bdd/...", "blockdev/...", "snapshotter/...", "convert/...", "sandbox/...", "api/..."},
	},
	{
		// It converts the checkpoint into a layer in process, as obd convert does.
		name:  "the checkpoint store links no daemon, fetcher or sandbox",
		from:  []string{"ckptimage/..."},
		scope: links,
		deny:  []string{"bdd/...", "remotefetch/...", "snapshotter/...", "sandbox/...", "api/...", "checkpoint/..."},
	},
	{
		name:  "the fetcher links no layer format",
		from:  []string{"remotefetch/..."},
		scope: links,
		deny:  layerFormats,
	},
	{
		name:  "the snapshotter links no daemon, transport or fetcher",
		from:  []string{"snapshotter/...", "cmd/overlaybd-snapshotter", "tracestore/...", "criproxy/..."},
		scope: links,
		deny:  daemonTransportFetcher,
	},
	{
		name:  "clients of bdd link no daemon or fetcher",
		from:  bddClients,
		scope: links,
		deny:  []string{"bdd/...", "remotefetch/..."},
	},
	{
		// They link one through convert, which mounts the images it builds.
		name:  "clients of bdd import no transport",
		from:  bddClients,
		scope: imports,
		deny:  []string{"blockdev/..."},
	},
	{
		name:  "fleet tools link no daemon, transport or fetcher",
		from:  []string{"dedup/...", "mirrorwarm/...", "fleetsim/...", "ipfsnode/..."},
		scope: links,
		deny:  daemonTransportFetcher,
	},
	{
		name:   "policies link no sandbox",
		from:   []string{"policy/..."},
		except: []string{"policy/probe"},
		scope:  links,
		deny:   []string{"sandbox/..."},
	},
	{
		name:  "the probe links only the sandbox's wire package",
		from:  []string{"policy/probe"},
		scope: links,
		deny:  []string{"sandbox/..."},
		allow: []string{"sandbox/*api"},
	},
	{
		// A start path the sandbox manager can take up without the engine coming with it.
		name:  "checkpoint links no other obd package",
		from:  []string{"checkpoint/..."},
		scope: links,
		deny:  []string{"*/..."},
		allow: []string{"checkpoint/..."},
	},
	{
		name:  "no cycle between top-level boxes",
		scope: boxCycles,
	},
}

var (
	// layerFormats read and write the bytes of an image's layers.
	layerFormats = []string{"zfile/...", "lsmt/...", "tarblob/...", "layerblob/...", "ext4meta/...", "gzindex/...", "ociindex/..."}
	// traceFormats encode what a start read: blocks of blobs, ranges of files.
	traceFormats = []string{"blocktrace/...", "pagetrace/..."}
	// daemonTransportFetcher are what a client of bdd reaches only through api/bdd/v1 and
	// bddclient.
	daemonTransportFetcher = []string{"bdd/...", "blockdev/...", "remotefetch/..."}
	// bddClients talk to bdd through api/bdd/v1 and bddclient.
	bddClients = []string{"ctr-plugin/...", "cmd/obd", "cmd/obd-lambda", "sandbox/bddrootfs", "sandbox/ckptstart", "tracerec/..."}
)
