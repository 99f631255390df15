package convert

import (
	"testing"

	"github.com/obdproject/obd/zfile"
)

func TestNewValidatesOptions(t *testing.T) {
	work := t.TempDir()
	for name, opts := range map[string]Options{
		"no work dir":     {},
		"bad platform":    {WorkDir: work, Platforms: []string{"linux/amd64/v3/extra/x"}},
		"tiny vsize":      {WorkDir: work, VirtualSize: 1 << 20},
		"unaligned vsize": {WorkDir: work, VirtualSize: 64<<20 + 1},
		"bad block size":  {WorkDir: work, BlockSize: 1000},
		"bad algorithm":   {WorkDir: work, Algorithm: zfile.Algorithm(9)},
		"bad zstd level":  {WorkDir: work, Algorithm: zfile.ZSTD, Level: 23},
	} {
		if _, err := New(opts); err == nil {
			t.Errorf("%s: New accepted %+v", name, opts)
		}
	}
	if _, err := New(Options{WorkDir: work, Platforms: []string{"linux/arm64"}, Algorithm: zfile.ZSTD, BlockSize: 65536}); err != nil {
		t.Errorf("valid options refused: %v", err)
	}
}
