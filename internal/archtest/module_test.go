package archtest

import "testing"

// TestModuleKeepsRules checks the module's own import graph against the rules table, and that
// every package pattern a rule starts from names a package, so that a rename cannot leave a
// rule checking nothing.
func TestModuleKeepsRules(t *testing.T) {
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
