package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// writeOutput creates path through a temporary file in the same directory and renames it
// into place only when fill succeeds, so a failed command never leaves a half-written output.
// The path "-" writes to standard output.
func writeOutput(path string, fill func(*os.File) error) (err error) {
	if path == "-" {
		return fill(os.Stdout)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	// CreateTemp makes the file 0600; outputs are ordinary files.
	if err = tmp.Chmod(0o644); err != nil {
		return err
	}
	if err = fill(tmp); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// parseSize parses a byte count with an optional binary suffix: 4096, 64K, 64M, 1G, 2T
// (a trailing "B" or "iB" is accepted too: 64KiB, 1GB).
func parseSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "I")
	shift := 0
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			shift = 10
		case 'M':
			shift = 20
		case 'G':
			shift = 30
		case 'T':
			shift = 40
		}
		if shift > 0 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseInt(t, 10, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("invalid size %q (want a number with an optional K, M, G or T suffix)", s)
	}
	if v > (1<<62)>>shift {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return v << shift, nil
}
