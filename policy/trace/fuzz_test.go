package trace

import (
	"bytes"
	"io"
	"reflect"
	"testing"
)

// roundTrip checks that whatever read accepts, write writes and read reads back unchanged;
// input read rejects is fine (the reader must only not panic or hang).
func roundTrip[T any](t *testing.T, data []byte, read func(io.Reader) (T, error), write func(io.Writer, T) error) {
	rows, err := read(bytes.NewReader(data))
	if err != nil {
		return
	}
	var buf bytes.Buffer
	if err := write(&buf, rows); err != nil {
		t.Fatalf("rows read could not be written: %v", err)
	}
	again, err := read(&buf)
	if err != nil || !reflect.DeepEqual(again, rows) {
		t.Fatalf("round trip changed rows: %v\nbefore %v\nafter  %v", err, rows, again)
	}
}

// invocationsFile pairs an invocations file's rows with its minute count.
type invocationsFile struct {
	rows    []Invocations
	minutes int
}

func FuzzReadInvocations(f *testing.F) {
	f.Add([]byte("HashOwner,HashApp,HashFunction,Trigger,1,2\no,a,f,http,1,0\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		roundTrip(t, data, func(r io.Reader) (invocationsFile, error) {
			rows, minutes, err := ReadInvocations(r)
			return invocationsFile{rows, minutes}, err
		}, func(w io.Writer, v invocationsFile) error { return WriteInvocations(w, v.rows, v.minutes) })
	})
}

func FuzzReadDurations(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) { roundTrip(t, data, ReadDurations, WriteDurations) })
}

func FuzzReadMemory(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) { roundTrip(t, data, ReadMemory, WriteMemory) })
}

func FuzzReadPackages(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		roundTrip(t, data, ReadPackages, func(w io.Writer, pkgs map[FunctionKey][]string) error {
			keys := make([]FunctionKey, 0, len(pkgs))
			for k := range pkgs {
				keys = append(keys, k)
			}
			return WritePackages(w, keys, pkgs)
		})
	})
}
