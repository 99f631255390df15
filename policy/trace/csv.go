package trace

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode"
)

var (
	invocationColumns = []string{"HashOwner", "HashApp", "HashFunction", "Trigger"}
	durationColumns   = append([]string{"HashOwner", "HashApp", "HashFunction", "Average", "Count", "Minimum", "Maximum"},
		suffixed("percentile_Average_", DurationPercentiles[:])...)
	memoryColumns = append([]string{"HashOwner", "HashApp", "SampleCount", "AverageAllocatedMb"},
		suffixed("AverageAllocatedMb_pct", MemoryPercentiles[:])...)
	packageColumns = []string{"HashOwner", "HashApp", "HashFunction", "Packages"}
)

func suffixed(prefix string, ps []float64) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = prefix + strconv.FormatFloat(p, 'f', -1, 64)
	}
	return out
}

// table reads one CSV file: a header whose first columns must be want, then rows passed to
// row with their 1-based line number. extra receives the header columns after want.
func table(r io.Reader, file string, want []string, header func(extra []string) error, row func(rec []string) error) error {
	cr := csv.NewReader(r)
	cr.ReuseRecord = true
	head, err := cr.Read()
	if err != nil {
		return fmt.Errorf("%w: %s header: %w", ErrFormat, file, err)
	}
	if len(head) > 0 {
		head[0] = strings.TrimPrefix(head[0], "\ufeff")
	}
	if len(head) < len(want) {
		return fmt.Errorf("%w: %s header has %d columns, want at least %d", ErrFormat, file, len(head), len(want))
	}
	for i, name := range want {
		if head[i] != name {
			return fmt.Errorf("%w: %s header column %d is %q, want %q", ErrFormat, file, i+1, head[i], name)
		}
	}
	if err := header(head[len(want):]); err != nil {
		return fmt.Errorf("%w: %s header: %w", ErrFormat, file, err)
	}
	columns := len(head)
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: %s: %w", ErrFormat, file, err)
		}
		line, _ := cr.FieldPos(0)
		if len(rec) != columns { // csv checks this too, but only against the first row
			return fmt.Errorf("%w: %s line %d has %d columns, header has %d", ErrFormat, file, line, len(rec), columns)
		}
		if err := row(rec); err != nil {
			return fmt.Errorf("%w: %s line %d: %w", ErrFormat, file, line, err)
		}
	}
}

func noExtra(extra []string) error {
	if len(extra) > 0 {
		return fmt.Errorf("unexpected column %q", extra[0])
	}
	return nil
}

// fields parses columns of one row, remembering the first error.
type fields struct {
	rec  []string
	head []string
	err  error
}

func (f *fields) count(i int) int {
	n, err := strconv.Atoi(f.rec[i])
	if err == nil && n < 0 {
		err = errors.New("negative")
	}
	f.fail(i, err)
	return n
}

func (f *fields) amount(i int) float64 {
	v, err := strconv.ParseFloat(f.rec[i], 64)
	if err == nil && (v < 0 || math.IsInf(v, 0) || math.IsNaN(v)) {
		err = errors.New("not a finite non-negative number")
	}
	f.fail(i, err)
	return v
}

func (f *fields) fail(i int, err error) {
	if err != nil && f.err == nil {
		f.err = fmt.Errorf("column %s value %q: %w", f.head[min(i, len(f.head)-1)], f.rec[i], err)
	}
}

// ReadInvocations reads an invocations file and returns its rows and the number of minutes.
func ReadInvocations(r io.Reader) ([]Invocations, int, error) {
	const file = "invocations"
	var out []Invocations
	minutes := 0
	head := invocationColumns
	err := table(r, file, invocationColumns, func(extra []string) error {
		for i, name := range extra {
			if name != strconv.Itoa(i+1) {
				return fmt.Errorf("minute column %d is %q, want %q", i+1, name, strconv.Itoa(i+1))
			}
		}
		if len(extra) == 0 {
			return errors.New("no minute columns")
		}
		minutes = len(extra)
		head = append(append([]string(nil), invocationColumns...), extra...)
		return nil
	}, func(rec []string) error {
		f := fields{rec: rec, head: head}
		inv := Invocations{FunctionKey: FunctionKey{rec[0], rec[1], rec[2]}, Trigger: rec[3], Counts: make([]int, minutes)}
		for m := range minutes {
			inv.Counts[m] = f.count(len(invocationColumns) + m)
		}
		out = append(out, inv)
		return f.err
	})
	return out, minutes, err
}

// ReadDurations reads a durations file.
func ReadDurations(r io.Reader) ([]Durations, error) {
	var out []Durations
	err := table(r, "durations", durationColumns, noExtra, func(rec []string) error {
		f := fields{rec: rec, head: durationColumns}
		d := Durations{FunctionKey: FunctionKey{rec[0], rec[1], rec[2]},
			Average: f.amount(3), Count: f.count(4), Minimum: f.amount(5), Maximum: f.amount(6)}
		for i := range d.Percentiles {
			d.Percentiles[i] = f.amount(7 + i)
		}
		out = append(out, d)
		return f.err
	})
	return out, err
}

// ReadMemory reads an application memory file.
func ReadMemory(r io.Reader) ([]AppMemory, error) {
	var out []AppMemory
	err := table(r, "memory", memoryColumns, noExtra, func(rec []string) error {
		f := fields{rec: rec, head: memoryColumns}
		m := AppMemory{AppKey: AppKey{rec[0], rec[1]}, SampleCount: f.count(2), AverageMB: f.amount(3)}
		for i := range m.Percentiles {
			m.Percentiles[i] = f.amount(4 + i)
		}
		out = append(out, m)
		return f.err
	})
	return out, err
}

// ReadPackages reads a packages file (this project's addition to the layout).
func ReadPackages(r io.Reader) (map[FunctionKey][]string, error) {
	out := make(map[FunctionKey][]string)
	err := table(r, "packages", packageColumns, noExtra, func(rec []string) error {
		out[FunctionKey{rec[0], rec[1], rec[2]}] = strings.Fields(rec[3])
		return nil
	})
	return out, err
}

// WriteInvocations writes an invocations file with minutes minute columns.
func WriteInvocations(w io.Writer, rows []Invocations, minutes int) error {
	head := slices.Concat(invocationColumns, make([]string, minutes))
	for m := range minutes {
		head[len(invocationColumns)+m] = strconv.Itoa(m + 1)
	}
	return writeTable(w, head, len(rows), func(i int, rec []string) error {
		inv := rows[i]
		if len(inv.Counts) != minutes {
			return fmt.Errorf("trace: function %s has %d minutes, want %d", inv.FunctionKey, len(inv.Counts), minutes)
		}
		copy(rec, []string{inv.Owner, inv.App, inv.Function, inv.Trigger})
		for m, c := range inv.Counts {
			rec[len(invocationColumns)+m] = strconv.Itoa(c)
		}
		return nil
	})
}

// WriteDurations writes a durations file.
func WriteDurations(w io.Writer, rows []Durations) error {
	return writeTable(w, durationColumns, len(rows), func(i int, rec []string) error {
		d := rows[i]
		copy(rec, []string{d.Owner, d.App, d.Function, formatAmount(d.Average), strconv.Itoa(d.Count), formatAmount(d.Minimum), formatAmount(d.Maximum)})
		for j, p := range d.Percentiles {
			rec[7+j] = formatAmount(p)
		}
		return nil
	})
}

// WriteMemory writes an application memory file.
func WriteMemory(w io.Writer, rows []AppMemory) error {
	return writeTable(w, memoryColumns, len(rows), func(i int, rec []string) error {
		m := rows[i]
		copy(rec, []string{m.Owner, m.App, strconv.Itoa(m.SampleCount), formatAmount(m.AverageMB)})
		for j, p := range m.Percentiles {
			rec[4+j] = formatAmount(p)
		}
		return nil
	})
}

// WritePackages writes a packages file, rows in the order of keys.
func WritePackages(w io.Writer, keys []FunctionKey, packages map[FunctionKey][]string) error {
	return writeTable(w, packageColumns, len(keys), func(i int, rec []string) error {
		k := keys[i]
		for _, p := range packages[k] {
			if p == "" || strings.ContainsFunc(p, unicode.IsSpace) {
				return fmt.Errorf("trace: function %s: package name %q is empty or has spaces", k, p)
			}
		}
		copy(rec, []string{k.Owner, k.App, k.Function, strings.Join(packages[k], " ")})
		return nil
	})
}

func formatAmount(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

// writeTable writes head and then n rows, each filled in by row.
func writeTable(w io.Writer, head []string, n int, row func(i int, rec []string) error) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(head); err != nil {
		return err
	}
	rec := make([]string, len(head))
	for i := range n {
		if err := row(i, rec); err != nil {
			return err
		}
		if err := cw.Write(rec); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}
