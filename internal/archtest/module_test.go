package archtest

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestModuleKeepsRules checks the module's own import graph against the rules table, and that
// every package pattern a rule starts from names a package, so that a rename cannot leave a
// rule checking nothing.
func TestModuleKeepsRules(t *testing.T) {
	statSources(t, "../..")
	g, err := loadGraph("../..")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range check(g, rules) {
		t.Error(v)
	}
	for _, u := range unmatched(g, rules) {
		t.Errorf("%s matches no package", u)
	}
}

// statSources stats go.mod and every Go file under root: go test caches a result until a file
// the test looked at changes, and the graph comes from `go list`, whose reads it does not see.
func statSources(t *testing.T, root string) {
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != root && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) {
			return filepath.SkipDir
		}
		if !d.IsDir() && (strings.HasSuffix(path, ".go") || d.Name() == "go.mod") {
			_, err = os.Stat(path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}
