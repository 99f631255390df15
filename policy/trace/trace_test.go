package trace

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestGenerateRoundTripsThroughFiles(t *testing.T) {
	want, err := Generate(GenerateConfig{Seed: 7, Minutes: 240, Mix: DefaultMix(60)})
	if err != nil {
		t.Fatal(err)
	}
	if len(want.Invocations) != 60 || len(want.Durations) != 60 || len(want.Memory) == 0 {
		t.Fatalf("generated %d functions, %d durations, %d apps", len(want.Invocations), len(want.Durations), len(want.Memory))
	}
	dir := t.TempDir()
	if err := want.Save(dir, 3); err != nil {
		t.Fatal(err)
	}
	got, err := Load(dir, 3)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("trace changed through Save/Load")
	}
	if _, err := Load(dir, 4); err == nil {
		t.Fatal("Load of a missing day succeeded")
	}
}

func TestGenerateIsDeterministicAndFollowsPatterns(t *testing.T) {
	cfg := GenerateConfig{Seed: 42, Mix: map[Pattern]int{Periodic: 20, Rare: 20}}
	a, err := Generate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Generate(cfg)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("same seed gave different traces")
	}
	c, _ := Generate(GenerateConfig{Seed: 43, Mix: cfg.Mix})
	if reflect.DeepEqual(a.Invocations, c.Invocations) {
		t.Fatal("different seeds gave the same trace")
	}
	for i, inv := range a.Invocations {
		total := 0
		for _, n := range inv.Counts {
			total += n
		}
		switch {
		case i < 20 && (inv.Trigger != "timer" || total < 1440/120-1):
			t.Errorf("periodic function %d: trigger %s, %d invocations", i, inv.Trigger, total)
		case i >= 20 && (total < 1 || total > 6):
			t.Errorf("rare function %d: %d invocations", i, total)
		}
		if a.Durations[i].Count != total {
			t.Errorf("function %d: durations count %d, invocations %d", i, a.Durations[i].Count, total)
		}
	}
}

func TestReadRejectsMalformedFiles(t *testing.T) {
	cases := map[string]string{
		"empty":          "",
		"wrong column":   "HashOwner,HashApp,HashFn,Trigger,1\n",
		"no minutes":     "HashOwner,HashApp,HashFunction,Trigger\n",
		"minute gap":     "HashOwner,HashApp,HashFunction,Trigger,1,3\n",
		"negative count": "HashOwner,HashApp,HashFunction,Trigger,1,2\no,a,f,http,1,-2\n",
		"not a number":   "HashOwner,HashApp,HashFunction,Trigger,1,2\no,a,f,http,1,x\n",
		"short row":      "HashOwner,HashApp,HashFunction,Trigger,1,2\no,a,f,http,1\n",
		"bad quote":      "HashOwner,HashApp,HashFunction,Trigger,1\no,a,\"f,http,1\n",
	}
	for name, in := range cases {
		if _, _, err := ReadInvocations(strings.NewReader(in)); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: err = %v, want ErrFormat", name, err)
		}
	}
	durations := strings.Join(durationColumns, ",") + "\no,a,f,1,2,3,4,5,6,7,8,9,NaN,11\n"
	if _, err := ReadDurations(strings.NewReader(durations)); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "percentile_Average_99") {
		t.Errorf("NaN duration: err = %v", err)
	}
	memory := strings.Join(memoryColumns, ",") + ",extra\n"
	if _, err := ReadMemory(strings.NewReader(memory)); !errors.Is(err, ErrFormat) {
		t.Errorf("extra memory column: err = %v", err)
	}
}

func TestReadInvocationsAcceptsDatasetHeader(t *testing.T) {
	in := "\ufeffHashOwner,HashApp,HashFunction,Trigger,1,2,3\nab,cd,ef,timer,1,0,1\n"
	rows, minutes, err := ReadInvocations(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []Invocations{{FunctionKey{"ab", "cd", "ef"}, "timer", []int{1, 0, 1}}}
	if minutes != 3 || !reflect.DeepEqual(rows, want) {
		t.Fatalf("got %v minutes %d", rows, minutes)
	}
	var buf bytes.Buffer
	if err := WriteInvocations(&buf, rows, minutes); err != nil {
		t.Fatal(err)
	}
	if buf.String() != strings.TrimPrefix(in, "\ufeff") {
		t.Fatalf("rewritten:\n%s", buf.String())
	}
}

func TestWritePackagesRejectsSpaces(t *testing.T) {
	k := FunctionKey{"o", "a", "f"}
	err := WritePackages(&bytes.Buffer{}, []FunctionKey{k}, map[FunctionKey][]string{k: {"two words"}})
	if err == nil {
		t.Fatal("package name with a space was written")
	}
}

func TestParseMix(t *testing.T) {
	mix, err := ParseMix("periodic=3, rare=2,periodic=1")
	if err != nil || !reflect.DeepEqual(mix, map[Pattern]int{Periodic: 4, Rare: 2}) {
		t.Fatalf("%v %v", mix, err)
	}
	for _, bad := range []string{"", "periodic", "periodic=-1", "weekly=3", "poisson=x"} {
		if _, err := ParseMix(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if Bursty.String() != "bursty" || Pattern(9).String() != "pattern(9)" {
		t.Fatal("pattern names")
	}
}
