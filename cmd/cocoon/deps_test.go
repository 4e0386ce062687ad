package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// testingImporters are the packages outside this module that may bring package
// testing into the binary: go-libp2p-kad-dht v0.42.2 imports it in
// dht_options.go for two unexported test-only options, so its init is linked
// whatever this module does. Any other importer fails the test.
var testingImporters = []string{"github.com/libp2p/go-libp2p-kad-dht"}

// TestBinaryLinksNoTestKit: the shipped binary's packages (`go list -deps`)
// include no test kit. Nothing of this module imports package testing, the
// in-process kit (testnet/inproc) and libp2p's mocknet are absent, and the only
// other importer of testing is the one named in testingImporters.
func TestBinaryLinksNoTestKit(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	const module = "github.com/cocoon-network/cocoon"
	seen := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, imports, _ := strings.Cut(line, " ")
		seen++
		if strings.Contains(pkg, "/p2p/net/mock") || pkg == module+"/testnet/inproc" {
			t.Errorf("the binary depends on the test kit package %s", pkg)
		}
		if !slices.Contains(strings.Fields(imports), "testing") {
			continue
		}
		if strings.HasPrefix(pkg, module+"/") || pkg == module || !slices.Contains(testingImporters, pkg) {
			t.Errorf("%s imports package testing into the binary", pkg)
		}
	}
	if seen < 100 {
		t.Fatalf("go list -deps listed %d packages; the binary has hundreds:\n%s", seen, out)
	}
}
