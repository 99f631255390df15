package archtest

import (
	"slices"
	"strings"
	"testing"
)

// TestCheckerReportsPlantedImports runs the module's rules over testdata/fixture, a module of
// empty packages named like obd's whose imports break every rule (and keep to it elsewhere:
// cmd/obd links a transport through convert, which a rule of direct imports allows), and
// requires exactly those violations, each naming its rule, importer and imported package.
func TestCheckerReportsPlantedImports(t *testing.T) {
	g, err := loadGraph("testdata/fixture")
	if err != nil {
		t.Fatal(err)
	}
	if g.module != "example.com/fixture" {
		t.Fatalf("module %q, want example.com/fixture", g.module)
	}
	want := []violation{
		{rule: "formats link no fetcher, daemon, transport or client", importer: "tarblob", imported: "blockdev", verb: "links",
			detail: "tarblob → internal/util → blockdev"},
		{rule: "formats link no fetcher, daemon, transport or client", importer: "zfile", imported: "remotefetch", verb: "links",
			detail: "zfile → remotefetch"},
		{rule: "the fetcher links no layer format", importer: "remotefetch/cache", imported: "lsmt", verb: "links",
			detail: "remotefetch/cache → lsmt"},
		{rule: "the snapshotter links no daemon, transport or fetcher", importer: "snapshotter", imported: "remotefetch", verb: "links",
			detail: "snapshotter → tracestore → remotefetch"},
		{rule: "the snapshotter links no daemon, transport or fetcher", importer: "tracestore", imported: "remotefetch", verb: "links",
			detail: "tracestore → remotefetch"},
		{rule: "clients of bdd link no daemon or fetcher", importer: "cmd/obd-lambda", imported: "remotefetch", verb: "links",
			detail: "cmd/obd-lambda → tracestore → remotefetch"},
		{rule: "clients of bdd link no daemon or fetcher", importer: "ctr-plugin", imported: "bdd", verb: "links",
			detail: "ctr-plugin → bdd"},
		{rule: "clients of bdd import no transport", importer: "sandbox/bddrootfs", imported: "blockdev", verb: "imports",
			detail: "sandbox/bddrootfs → blockdev"},
		{rule: "policies link no sandbox", importer: "policy/sim", imported: "sandbox", verb: "links",
			detail: "policy/sim → sandbox"},
		{rule: "no cycle between top-level boxes", importer: "policy", imported: "sandbox", verb: "imports",
			detail: "cycle policy → sandbox → policy: policy/probe imports sandbox/sandboxapi; sandbox imports policy"},
	}
	got := check(g, rules)
	for _, v := range got {
		t.Log(v)
	}
	if !slices.Equal(got, want) {
		t.Errorf("violations:\n%s\nwant:\n%s", lines(got), lines(want))
	}
	for _, v := range got {
		s := v.String()
		for _, part := range []string{v.rule, v.importer, v.imported} {
			if !strings.Contains(s, part) {
				t.Errorf("%q does not name %q", s, part)
			}
		}
	}
}

// TestCheckerPassesCleanFixture checks that the rules hold for the fixture once its planted
// imports are left out of the graph: the checker reports edges, not packages.
func TestCheckerPassesCleanFixture(t *testing.T) {
	g, err := loadGraph("testdata/fixture")
	if err != nil {
		t.Fatal(err)
	}
	planted := map[string]string{
		"zfile": "remotefetch", "internal/util": "blockdev", "remotefetch/cache": "lsmt",
		"tracestore": "remotefetch", "ctr-plugin": "bdd", "sandbox/bddrootfs": "blockdev",
		"policy/sim": "sandbox", "sandbox": "policy",
	}
	for from, to := range planted {
		g.drop(from, to)
	}
	if got := check(g, rules); len(got) != 0 {
		t.Errorf("violations in the clean fixture:\n%s", lines(got))
	}
}

// drop removes the import from → to and recomputes every package's transitive imports.
func (g *graph) drop(from, to string) {
	g.imports[from] = slices.DeleteFunc(slices.Clone(g.imports[from]), func(p string) bool { return p == to })
	for _, p := range g.packages() {
		seen := map[string]bool{}
		var walk func(string)
		walk = func(p string) {
			for _, q := range g.imports[p] {
				if !seen[q] {
					seen[q] = true
					walk(q)
				}
			}
		}
		walk(p)
		g.deps[p] = sortedKeys(seen)
	}
}

func TestMatch(t *testing.T) {
	for _, c := range []struct {
		pattern, pkg string
		want         bool
	}{
		{"zfile", "zfile", true},
		{"zfile", "zfile/internal", false},
		{"zfile", "zfiles", false},
		{"zfile/...", "zfile", true},
		{"zfile/...", "zfile/internal/x", true},
		{"zfile/...", "zfiles", false},
		{"cmd/obd", "cmd/obd-lambda", false},
		{"sandbox/*api", "sandbox/sandboxapi", true},
		{"sandbox/*api", "sandbox/api", true},
		{"sandbox/*api", "sandbox/cgroup", false},
		{"sandbox/*api", "sandbox", false},
	} {
		if got := match(c.pattern, c.pkg); got != c.want {
			t.Errorf("match(%q, %q) = %v, want %v", c.pattern, c.pkg, got, c.want)
		}
	}
}

func TestBox(t *testing.T) {
	for pkg, want := range map[string]string{
		"zfile": "zfile", "remotefetch/cache": "remotefetch", "cmd/obd": "cmd/obd",
		"cmd/obd-lambda": "cmd/obd-lambda", "internal/testenv": "internal", ".": ".",
	} {
		if got := box(pkg); got != want {
			t.Errorf("box(%q) = %q, want %q", pkg, got, want)
		}
	}
}

func lines(vs []violation) string {
	var b strings.Builder
	for _, v := range vs {
		b.WriteString("\t" + v.String() + "\n")
	}
	return b.String()
}
