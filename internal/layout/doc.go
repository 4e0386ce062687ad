// Package layout holds the test that keeps the import graph as the design
// draws it: the Layout table of docs/design.md lists, for every package of
// the module, the packages of the module it imports, and the test fails when
// `go list` disagrees in either direction (an import the table does not
// allow, a package the table does not list, a row naming an import the code
// no longer makes), and it bounds what the bottom packages (enclave,
// enclave/tee, runtime, market) import from outside the module. Nothing
// imports it.
package layout
