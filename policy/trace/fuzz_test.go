package trace

import (
	"bytes"
	"reflect"
	"testing"
)

// FuzzReadInvocations checks that any input is either rejected or read into rows that write
// back and read again unchanged.
func FuzzReadInvocations(f *testing.F) {
	f.Add([]byte("HashOwner,HashApp,HashFunction,Trigger,1,2\no,a,f,http,1,0\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rows, minutes, err := ReadInvocations(bytes.NewReader(data))
		if err != nil {
			return
		}
		var buf bytes.Buffer
		if err := WriteInvocations(&buf, rows, minutes); err != nil {
			t.Fatalf("rows read could not be written: %v", err)
		}
		again, minutes2, err := ReadInvocations(&buf)
		if err != nil || minutes2 != minutes || !reflect.DeepEqual(again, rows) {
			t.Fatalf("round trip changed rows: %v", err)
		}
	})
}

// FuzzReadDurations checks that the durations reader never panics and keeps values finite.
func FuzzReadDurations(f *testing.F) {
	f.Add([]byte("HashOwner,HashApp,HashFunction,Average,Count,Minimum,Maximum,percentile_Average_0,percentile_Average_1,percentile_Average_25,percentile_Average_50,percentile_Average_75,percentile_Average_99,percentile_Average_100\no,a,f,1,2,3,4,5,6,7,8,9,10,11\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rows, err := ReadDurations(bytes.NewReader(data))
		if err != nil {
			return
		}
		var buf bytes.Buffer
		if err := WriteDurations(&buf, rows); err != nil {
			t.Fatal(err)
		}
		if again, err := ReadDurations(&buf); err != nil || !reflect.DeepEqual(again, rows) {
			t.Fatalf("round trip changed rows: %v", err)
		}
	})
}

// FuzzReadMemory checks that the memory reader never panics and round-trips what it accepts.
func FuzzReadMemory(f *testing.F) {
	f.Add([]byte("HashOwner,HashApp,SampleCount,AverageAllocatedMb,AverageAllocatedMb_pct1,AverageAllocatedMb_pct5,AverageAllocatedMb_pct25,AverageAllocatedMb_pct50,AverageAllocatedMb_pct75,AverageAllocatedMb_pct95,AverageAllocatedMb_pct99,AverageAllocatedMb_pct100\no,a,3,100,1,2,3,4,5,6,7,8\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rows, err := ReadMemory(bytes.NewReader(data))
		if err != nil {
			return
		}
		var buf bytes.Buffer
		if err := WriteMemory(&buf, rows); err != nil {
			t.Fatal(err)
		}
		if again, err := ReadMemory(&buf); err != nil || !reflect.DeepEqual(again, rows) {
			t.Fatalf("round trip changed rows: %v", err)
		}
	})
}

// FuzzReadPackages checks that the packages reader never panics and round-trips.
func FuzzReadPackages(f *testing.F) {
	f.Add([]byte("HashOwner,HashApp,HashFunction,Packages\no,a,f,numpy python3.12\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		pkgs, err := ReadPackages(bytes.NewReader(data))
		if err != nil {
			return
		}
		keys := make([]FunctionKey, 0, len(pkgs))
		for k := range pkgs {
			keys = append(keys, k)
		}
		var buf bytes.Buffer
		if err := WritePackages(&buf, keys, pkgs); err != nil {
			t.Fatal(err)
		}
		if again, err := ReadPackages(&buf); err != nil || !reflect.DeepEqual(again, pkgs) {
			t.Fatalf("round trip changed packages: %v %v %v", err, again, pkgs)
		}
	})
}
