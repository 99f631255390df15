package ext4meta

import (
	"cmp"
	"slices"
	"sort"
)

// Extent is a byte range of the device.
type Extent struct{ Off, Len int64 }

// End is the first byte past e.
func (e Extent) End() int64 { return e.Off + e.Len }

// fileExtent is an extent of a regular file's data.
type fileExtent struct {
	Extent
	file int32
}

// Files says which regular file owns which device bytes, as Walk found in the inode tables
// and extent trees. It is immutable and safe for concurrent use.
type Files struct {
	sizes  []int64
	byFile []fileExtent // grouped by file, each file's extents in device order
	start  []int        // byFile[start[f]:start[f+1]] are file f's extents
	byOff  []fileExtent // every extent, by device offset
}

// newFiles indexes exts, keeping of each file's extents (in device order) no more than
// its size rounded up to whole blocks of bs bytes: extents that overlap in the file, as a
// hostile filesystem's may, cannot make a file own more of the device than its size.
func newFiles(sizes []int64, exts []fileExtent, bs int64) *Files {
	slices.SortStableFunc(exts, func(a, b fileExtent) int {
		return cmp.Or(cmp.Compare(a.file, b.file), cmp.Compare(a.Off, b.Off))
	})
	f := &Files{sizes: sizes, start: make([]int, len(sizes)+1)}
	var left int64
	for i, e := range exts {
		if i == 0 || e.file != exts[i-1].file {
			left = (sizes[e.file] + bs - 1) / bs * bs
		}
		if e.Len = min(e.Len, left); e.Len > 0 {
			left -= e.Len
			f.byFile = append(f.byFile, e)
		}
	}
	f.byOff = slices.Clone(f.byFile)
	slices.SortFunc(f.byOff, func(a, b fileExtent) int { return cmp.Compare(a.Off, b.Off) })
	i := 0
	for file := range sizes {
		f.start[file] = i
		for i < len(f.byFile) && int(f.byFile[i].file) == file {
			i++
		}
	}
	f.start[len(sizes)] = len(f.byFile)
	return f
}

// Len is the number of regular files; they are numbered from 0.
func (f *Files) Len() int { return len(f.sizes) }

// Size is file's size in bytes (from its inode).
func (f *Files) Size(file int) int64 { return f.sizes[file] }

// Extents returns where file's data lies on the device, in device order.
func (f *Files) Extents(file int) []Extent {
	exts := f.byFile[f.start[file]:f.start[file+1]]
	out := make([]Extent, len(exts))
	for i, e := range exts {
		out[i] = e.Extent
	}
	return out
}

// Owners calls fn for each file with data in [off, off+n), once per extent there.
func (f *Files) Owners(off, n int64, fn func(file int)) {
	// Extents do not overlap in a consistent filesystem, so the first extent ending past
	// off starts the run; a hostile one only costs a few wrong prefetches.
	i := sort.Search(len(f.byOff), func(i int) bool { return f.byOff[i].End() > off })
	for ; i < len(f.byOff) && f.byOff[i].Off < off+n; i++ {
		fn(int(f.byOff[i].file))
	}
}
