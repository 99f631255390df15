package convert

import (
	"fmt"
	"path/filepath"

	"github.com/obdproject/obd/lsmt"
)

// canonicalPiece is the size and alignment of the records canonicalize
// writes: 4 MiB, the largest single record a writable layer makes.
const canonicalPiece = 4 << 20

// canonicalize copies the live ranges of upper into a new writable layer in
// dir, as records cut only at 4 MiB-aligned boundaries, in ascending order,
// leaving out the 4 KiB blocks free reports as free in the final filesystem.
// The kernel splits the same filesystem writes into different requests from
// run to run, and a commit merges records as it finds them; from the
// canonical copy the commit is the same every time. Free blocks may hold
// whatever writeback left there before they were freed: dropping them keeps
// that out of the layer (the filesystem never reads a free block).
func canonicalize(upper *lsmt.Writable, dir string, opts lsmt.CreateOptions, free func(off int64) bool) (*lsmt.Writable, error) {
	out, err := lsmt.Create(filepath.Join(dir, "canonical"), opts)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, canonicalPiece)
	copyRange := func(off, end int64) error {
		if _, err := upper.ReadAt(buf[:end-off], off); err != nil {
			return err
		}
		_, err := out.WriteAt(buf[:end-off], off)
		return err
	}
	for _, r := range coalesce(upper.Segments()) {
		for off := r.start; off < r.end && err == nil; {
			end := min(r.end, (off/canonicalPiece+1)*canonicalPiece)
			if r.zeroed {
				err = out.Discard(off, end-off)
			} else {
				err = forKeptRuns(off, end, free, copyRange)
			}
			if err != nil {
				err = fmt.Errorf("canonical copy at %d: %w", off, err)
			}
			off = end
		}
		if err != nil {
			out.Close()
			return nil, err
		}
	}
	return out, nil
}

// forKeptRuns calls fn for each maximal run of [off, end) that does not lie
// in a free 4 KiB block.
func forKeptRuns(off, end int64, free func(int64) bool, fn func(off, end int64) error) error {
	const block = 4096
	runStart := int64(-1)
	for p := off; p < end; {
		next := min(end, (p/block+1)*block)
		if free(p / block * block) {
			if runStart >= 0 {
				if err := fn(runStart, p); err != nil {
					return err
				}
				runStart = -1
			}
		} else if runStart < 0 {
			runStart = p
		}
		p = next
	}
	if runStart >= 0 {
		return fn(runStart, end)
	}
	return nil
}

// extent is a byte range of the virtual disk, data or zeroed.
type extent struct {
	start, end int64
	zeroed     bool
}

// coalesce joins touching segments of the same kind into maximal extents.
func coalesce(segs []lsmt.Segment) []extent {
	var out []extent
	for _, s := range segs {
		e := extent{int64(s.Offset) * lsmt.SectorSize, int64(s.End()) * lsmt.SectorSize, s.Zeroed}
		if n := len(out); n > 0 && out[n-1].end == e.start && out[n-1].zeroed == e.zeroed {
			out[n-1].end = e.end
			continue
		}
		out = append(out, e)
	}
	return out
}
