package coldstart

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
)

// SOCIPrepared counts, in a SOCI snapshotter's log (bench/soci, JSON lines of
// github.com/containerd/log), how each layer's snapshot was prepared: lazily over the layer's
// zTOC (Remote), or pulled and unpacked whole by the snapshotter (Local, e.g. a layer without a
// zTOC) or by containerd (Deferred: the image had no SOCI index). The keys are the ones SOCI's
// snapshot package logs for its own tests.
type SOCIPrepared struct {
	Remote, Local, Deferred int
}

// ReadSOCIPrepared reads a SOCI snapshotter's log. Lines that are not JSON (a panic's stack,
// say) are skipped.
func ReadSOCIPrepared(r io.Reader) (SOCIPrepared, error) {
	var p SOCIPrepared
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var fields map[string]any
		if json.Unmarshal(line, &fields) != nil {
			continue
		}
		for key, n := range map[string]*int{
			"remote-snapshot-prepared": &p.Remote,
			"local-snapshot-prepared":  &p.Local,
			"defer-snapshot-runtime":   &p.Deferred,
		} {
			if fields[key] == "true" {
				*n++
			}
		}
	}
	if err := sc.Err(); err != nil {
		return p, fmt.Errorf("SOCI snapshotter log: %w", err)
	}
	return p, nil
}

// Lazy says whether a start of an image of layers layers was the lazy one mode soci measures:
// every layer mounted over its zTOC, none pulled whole.
func (p SOCIPrepared) Lazy(layers int) error {
	if p.Remote == layers && p.Local == 0 && p.Deferred == 0 {
		return nil
	}
	return fmt.Errorf("SOCI prepared %d of %d layers lazily, %d whole itself and %d through containerd (no SOCI index?)",
		p.Remote, layers, p.Local, p.Deferred)
}

// SOCIWorkloads are the workloads issue #23's target against SOCI is judged on (network
// TargetNetwork).
var SOCIWorkloads = []string{"python", "gcc"}

// sociTargets judges issue #23's target against the SOCI snapshotter on cells (workload -> mode
// -> summary of the target network): obd's lazy start of the indexed gzip image (obd+index)
// faster than SOCI's lazy start of the same image with its SOCI index, for each of
// SOCIWorkloads. The bytes each fetched are shown beside the times.
func sociTargets(cells map[string]map[Mode]CellSummary) []TargetResult {
	var targets []TargetResult
	for _, w := range SOCIWorkloads {
		target := TargetResult{Name: fmt.Sprintf("obd+index vs soci, end to end (%s)", w), Want: "faster", Measured: "not measured"}
		index, okIndex := cells[w][ModeOBDIndex]
		soci, okSOCI := cells[w][ModeSOCI]
		if okIndex && okSOCI {
			ratio := soci.Total.Median.Seconds() / index.Total.Median.Seconds()
			target.Measured = fmt.Sprintf("%.2f× (%s vs %s; %s vs %s)", ratio, secs(soci.Total.Median), secs(index.Total.Median),
				mib(soci.BytesFetched), mib(index.BytesFetched))
			target.Met = index.Total.Median < soci.Total.Median
		}
		targets = append(targets, target)
	}
	return targets
}
