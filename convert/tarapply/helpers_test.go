package tarapply_test

import (
	"os"
	"syscall"
	"testing"
)

func mustStat(t *testing.T, p string) os.FileInfo {
	t.Helper()
	st, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func blocksOf(st os.FileInfo) int64 { return st.Sys().(*syscall.Stat_t).Blocks }
