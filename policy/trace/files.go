package trace

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
)

// PackagesFile names this project's packages file, shared by every day in a directory.
const PackagesFile = "function_packages.synthetic.csv"

// InvocationsFile names day's invocations file (days are 1-based, as the dataset's d01..d14).
func InvocationsFile(day int) string {
	return fmt.Sprintf("invocations_per_function_md.anon.d%02d.csv", day)
}

// DurationsFile names day's durations file.
func DurationsFile(day int) string {
	return fmt.Sprintf("function_durations_percentiles.anon.d%02d.csv", day)
}

// MemoryFile names day's application memory file.
func MemoryFile(day int) string { return fmt.Sprintf("app_memory_percentiles.anon.d%02d.csv", day) }

// Load reads day's files from dir. The invocations file is required; the durations, memory
// and packages files are read when present.
func Load(dir string, day int) (*Trace, error) {
	t := &Trace{}
	err := readFile(filepath.Join(dir, InvocationsFile(day)), false, func(r io.Reader) (err error) {
		t.Invocations, t.Minutes, err = ReadInvocations(r)
		return err
	})
	if err == nil {
		err = readFile(filepath.Join(dir, DurationsFile(day)), true, func(r io.Reader) (err error) {
			t.Durations, err = ReadDurations(r)
			return err
		})
	}
	if err == nil {
		err = readFile(filepath.Join(dir, MemoryFile(day)), true, func(r io.Reader) (err error) {
			t.Memory, err = ReadMemory(r)
			return err
		})
	}
	if err == nil {
		err = readFile(filepath.Join(dir, PackagesFile), true, func(r io.Reader) (err error) {
			t.Packages, err = ReadPackages(r)
			return err
		})
	}
	if err != nil {
		return nil, err
	}
	return t, nil
}

func readFile(path string, optional bool, read func(io.Reader) error) error {
	f, err := os.Open(path)
	if optional && errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("trace: %w", err)
	}
	defer f.Close()
	if err := read(f); err != nil {
		return fmt.Errorf("trace: %s: %w", path, err)
	}
	return nil
}

// Save writes t as day's files in dir (the packages file only when t has packages).
func (t *Trace) Save(dir string, day int) error {
	if err := t.Validate(); err != nil {
		return err
	}
	err := writeFile(filepath.Join(dir, InvocationsFile(day)), func(w io.Writer) error {
		return WriteInvocations(w, t.Invocations, t.Minutes)
	})
	if err == nil {
		err = writeFile(filepath.Join(dir, DurationsFile(day)), func(w io.Writer) error { return WriteDurations(w, t.Durations) })
	}
	if err == nil {
		err = writeFile(filepath.Join(dir, MemoryFile(day)), func(w io.Writer) error { return WriteMemory(w, t.Memory) })
	}
	if err == nil && len(t.Packages) > 0 {
		keys := make([]FunctionKey, 0, len(t.Packages))
		for k := range t.Packages {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, func(a, b FunctionKey) int {
			return cmp.Or(cmp.Compare(a.Owner, b.Owner), cmp.Compare(a.App, b.App), cmp.Compare(a.Function, b.Function))
		})
		err = writeFile(filepath.Join(dir, PackagesFile), func(w io.Writer) error { return WritePackages(w, keys, t.Packages) })
	}
	return err
}

func writeFile(path string, write func(io.Writer) error) (err error) {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("trace: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("trace: %w", cerr)
		}
	}()
	if err := write(f); err != nil {
		return fmt.Errorf("trace: %s: %w", path, err)
	}
	return nil
}
