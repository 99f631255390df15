package dedup

import (
	"fmt"
	"strings"
)

// Markdown renders the report as a table: one row per layer format present, each level's
// duplicate share and the bytes left after deduplicating at that level.
func (r Report) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Images: %s\n\n", strings.Join(r.Images, ", "))
	b.WriteString("| layers | referenced | layer | file | 4 KiB block | ZFile block |\n|---|---|---|---|---|---|\n")
	row := func(what string, k Kind, file, zblock bool) {
		if k.Layers == 0 {
			return
		}
		cell := func(l Level, ok bool) string {
			if !ok {
				return "–"
			}
			return fmt.Sprintf("%.1f%% (%s left)", 100*l.Dup(), mib(l.Unique))
		}
		fmt.Fprintf(&b, "| %s: %d (%d distinct) | %s content, %s stored | %s | %s | %s | %s |\n", what, k.Layers, k.DistinctLayers,
			mib(k.Layer.Total), mib(k.Stored.Total), cell(k.Layer, true), cell(k.File, file), cell(k.Block, true), cell(k.ZFileBlock, zblock))
	}
	row("OCI", r.OCI, true, false)
	row("overlaybd", r.OBD, false, true)
	if k := r.OBD; k.Layers > 0 {
		fmt.Fprintf(&b, "\nLayer reuse (`obd convert` keeps converted layers by chain ID): the overlaybd images reference %s of layer blobs and store %s, %.1f%% saved.\n",
			mib(k.Stored.Total), mib(k.Stored.Unique), 100*k.Stored.Dup())
	}
	return b.String()
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
