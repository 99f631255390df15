// Package archtest holds the architecture test of the module: a table of which packages may
// import or link which (the same table as docs/DESIGN.md, "Who may import whom"), checked
// against the import graph that `go list` reports. It sits outside the read path and has no
// code of its own outside its tests; nothing imports it.
package archtest
