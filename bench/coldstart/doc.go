// Package coldstart is obd's cold-start benchmark (issue #8): it measures how long a container
// takes from `nerdctl pull` to its first line of output when its image is read lazily through the
// whole read path of docs/DESIGN.md (registry → remotefetch → cache → zfile → lsmt → blockdev →
// ext4 → overlayfs), against containerd's full pull onto overlayfs and against the stargz and
// SOCI snapshotters.
//
// The package holds the pure parts, unit-tested in `make test`: the shuffled interleaved run
// schedule (plan.go), statistics (stats.go), the markdown report with the targets
// (report.go), the PNG chart (chart.go), a byte-counting TCP relay in front of the registry
// (relay.go), the machine description (machine.go) and the reading of the SOCI snapshotter's
// log (soci.go). The harness that starts registries, containerd, bdd and the snapshotters lives
// in harness_test.go (the soci mode's parts in harness_soci_test.go) and runs only when asked
// (`make bench-coldstart`, i.e. `go test ./bench/coldstart -run TestColdStart -coldstart`),
// because it takes tens of minutes.
package coldstart
