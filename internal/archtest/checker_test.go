package archtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"slices"
	"strings"
)

// scope says which of an importer's dependencies a rule looks at.
type scope int

const (
	imports   scope = iota // the importer's own import lines
	links                  // everything its binary links (transitive, tests excluded)
	boxCycles              // not a package rule: the box graph must have no cycle
)

func (s scope) verb() string {
	if s == links {
		return "links"
	}
	return "imports"
}

// rule forbids packages matching from (but not except) to import or link packages matching
// deny (but not allow). Patterns are described at the rules table.
type rule struct {
	name   string
	from   []string
	except []string
	scope  scope
	deny   []string
	allow  []string
}

// graph is the module's non-test import graph, reduced to the module's own packages and keyed
// by path relative to the module.
type graph struct {
	module  string
	imports map[string][]string // direct imports
	deps    map[string][]string // transitive imports
}

// goListPackage is the part of `go list -json` output the checker reads.
type goListPackage struct {
	ImportPath string
	Imports    []string
	Deps       []string
	Module     *struct {
		Path string
		Main bool
	}
}

// loadGraph runs `go list` over every package of the module in dir.
func loadGraph(dir string) (*graph, error) {
	cmd := exec.Command("go", "list", "-json=ImportPath,Imports,Deps,Module", "./...")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("archtest: go list in %s: %w: %s", dir, err, stderr.String())
	}
	var pkgs []goListPackage
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p goListPackage
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("archtest: go list output: %w", err)
		}
		pkgs = append(pkgs, p)
	}
	g := &graph{imports: map[string][]string{}, deps: map[string][]string{}}
	for _, p := range pkgs {
		if p.Module != nil && p.Module.Main {
			g.module = p.Module.Path
			break
		}
	}
	if g.module == "" {
		return nil, fmt.Errorf("archtest: go list in %s: no package of the main module", dir)
	}
	for _, p := range pkgs {
		rel, ok := g.rel(p.ImportPath)
		if !ok {
			continue
		}
		g.imports[rel] = g.relAll(p.Imports)
		g.deps[rel] = g.relAll(p.Deps)
	}
	return g, nil
}

// rel returns importPath relative to the module, and whether it is in the module.
func (g *graph) rel(importPath string) (string, bool) {
	if importPath == g.module {
		return ".", true
	}
	rest, ok := strings.CutPrefix(importPath, g.module+"/")
	return rest, ok
}

func (g *graph) relAll(importPaths []string) []string {
	var out []string
	for _, p := range importPaths {
		if rel, ok := g.rel(p); ok {
			out = append(out, rel)
		}
	}
	slices.Sort(out)
	return out
}

func (g *graph) packages() []string {
	var out []string
	for p := range g.imports {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// violation is one edge that breaks a rule.
type violation struct {
	rule     string
	importer string
	imported string
	verb     string // "imports" or "links"
	detail   string // the import chain from importer to imported, or the box cycle
}

func (v violation) String() string {
	return fmt.Sprintf("rule %q: %s %s %s (%s)", v.rule, v.importer, v.verb, v.imported, v.detail)
}

// check returns every violation of rules in g, in a stable order.
func check(g *graph, rules []rule) []violation {
	var out []violation
	for _, r := range rules {
		if r.scope == boxCycles {
			out = append(out, boxCycleViolations(g, r.name)...)
			continue
		}
		for _, p := range g.packages() {
			if !matchAny(r.from, p) || matchAny(r.except, p) {
				continue
			}
			reached := g.imports[p]
			if r.scope == links {
				reached = g.deps[p]
			}
			for _, q := range reached {
				if matchAny(r.deny, q) && !matchAny(r.allow, q) {
					out = append(out, violation{rule: r.name, importer: p, imported: q, verb: r.scope.verb(), detail: strings.Join(g.chain(p, q), " → ")})
				}
			}
		}
	}
	return out
}

// unmatched returns the from patterns of rules that match no package of g: a package not
// written yet, or one renamed under the table.
func unmatched(g *graph, rules []rule) []string {
	var out []string
	for _, r := range rules {
		for _, pat := range r.from {
			if !slices.ContainsFunc(g.packages(), func(p string) bool { return match(pat, p) }) {
				out = append(out, fmt.Sprintf("rule %q: %s", r.name, pat))
			}
		}
	}
	return out
}

// chain returns a shortest import chain from one package to another, both ends included.
func (g *graph) chain(from, to string) []string {
	prev := map[string]string{from: ""}
	queue := []string{from}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if p == to {
			var out []string
			for ; p != ""; p = prev[p] {
				out = append(out, p)
			}
			slices.Reverse(out)
			return out
		}
		for _, q := range g.imports[p] {
			if _, seen := prev[q]; !seen {
				prev[q] = p
				queue = append(queue, q)
			}
		}
	}
	return []string{from, "…", to}
}

// box is the top-level directory of a package; each command under cmd/ is a box of its own.
func box(pkg string) string {
	first, rest, _ := strings.Cut(pkg, "/")
	if first == "cmd" && rest != "" {
		second, _, _ := strings.Cut(rest, "/")
		return "cmd/" + second
	}
	return first
}

// boxCycleViolations reports, for every set of boxes that import each other in a circle, one
// cycle through it with the package imports that make each of its edges.
func boxCycleViolations(g *graph, ruleName string) []violation {
	// edge[a][b] is one package import that makes box a import box b.
	edge := map[string]map[string][2]string{}
	for _, p := range g.packages() {
		for _, q := range g.imports[p] {
			a, b := box(p), box(q)
			if a == b {
				continue
			}
			if edge[a] == nil {
				edge[a] = map[string][2]string{}
			}
			if _, ok := edge[a][b]; !ok {
				edge[a][b] = [2]string{p, q}
			}
		}
	}
	var out []violation
	for _, comp := range stronglyConnected(edge) {
		if len(comp) < 2 {
			continue
		}
		cycle := boxCycle(edge, comp)
		var via []string
		for i := range len(cycle) - 1 {
			e := edge[cycle[i]][cycle[i+1]]
			via = append(via, e[0]+" imports "+e[1])
		}
		out = append(out, violation{
			rule:     ruleName,
			importer: cycle[0],
			imported: cycle[1],
			verb:     "imports",
			detail:   "cycle " + strings.Join(cycle, " → ") + ": " + strings.Join(via, "; "),
		})
	}
	return out
}

// boxCycle returns a shortest cycle from the first box of comp back to it, inside comp.
func boxCycle(edge map[string]map[string][2]string, comp []string) []string {
	in := map[string]bool{}
	for _, b := range comp {
		in[b] = true
	}
	start := comp[0]
	prev := map[string]string{}
	queue := []string{start}
	for len(queue) > 0 {
		a := queue[0]
		queue = queue[1:]
		for _, b := range sortedKeys(edge[a]) {
			if !in[b] {
				continue
			}
			if b == start {
				cycle := []string{start}
				for p := a; p != start; p = prev[p] {
					cycle = append(cycle, p)
				}
				cycle = append(cycle, start)
				slices.Reverse(cycle)
				return cycle
			}
			if _, seen := prev[b]; !seen {
				prev[b] = a
				queue = append(queue, b)
			}
		}
	}
	return comp // unreachable for a strongly connected comp
}

// stronglyConnected returns the strongly connected components of the box graph (Tarjan),
// each sorted, in a stable order.
func stronglyConnected(edge map[string]map[string][2]string) [][]string {
	nodes := map[string]bool{}
	for a, bs := range edge {
		nodes[a] = true
		for b := range bs {
			nodes[b] = true
		}
	}
	var (
		index   = map[string]int{}
		low     = map[string]int{}
		onStack = map[string]bool{}
		stack   []string
		comps   [][]string
		visit   func(string)
	)
	visit = func(a string) {
		index[a] = len(index)
		low[a] = index[a]
		stack = append(stack, a)
		onStack[a] = true
		for _, b := range sortedKeys(edge[a]) {
			if _, seen := index[b]; !seen {
				visit(b)
				low[a] = min(low[a], low[b])
			} else if onStack[b] {
				low[a] = min(low[a], index[b])
			}
		}
		if low[a] == index[a] {
			var comp []string
			for {
				b := stack[len(stack)-1]
				stack = stack[:len(stack)-1]
				onStack[b] = false
				comp = append(comp, b)
				if b == a {
					break
				}
			}
			slices.Sort(comp)
			comps = append(comps, comp)
		}
	}
	for _, a := range sortedKeys(nodes) {
		if _, seen := index[a]; !seen {
			visit(a)
		}
	}
	slices.SortFunc(comps, func(x, y []string) int { return strings.Compare(x[0], y[0]) })
	return comps
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// matchAny reports whether pkg matches one of the patterns.
func matchAny(patterns []string, pkg string) bool {
	return slices.ContainsFunc(patterns, func(pat string) bool { return match(pat, pkg) })
}

// match reports whether pkg matches pattern: "x" matches x only, "x/..." matches x and the
// packages below it, and each element of x may be a path.Match glob.
func match(pattern, pkg string) bool {
	base, tree := strings.CutSuffix(pattern, "/...")
	want := strings.Split(base, "/")
	got := strings.Split(pkg, "/")
	if len(got) < len(want) || (!tree && len(got) != len(want)) {
		return false
	}
	for i, w := range want {
		if ok, err := path.Match(w, got[i]); err != nil || !ok {
			return false
		}
	}
	return true
}
