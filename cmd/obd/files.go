package main

import (
	"os"
	"path/filepath"
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
