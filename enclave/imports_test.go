package enclave

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImportsStayLow keeps enclave at the bottom of the import graph (docs/design.md):
// the standard library, the attestation libraries and enclave/tee (the TEE kind, a
// leaf shared with market) only; no libp2p, no other cocoon package.
func TestImportsStayLow(t *testing.T) {
	allowed := []string{
		"github.com/google/go-tdx-guest/",
		"github.com/google/go-sev-guest/",
		"github.com/google/go-configfs-tsm/",
		"github.com/google/uuid",                       // the SEV certificate table's GUID type
		"github.com/cocoon-network/cocoon/enclave/tee", // the kind; imports only the standard library
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			first := strings.Split(path, "/")[0]
			if !strings.Contains(first, ".") {
				continue // standard library
			}
			ok := false
			for _, a := range allowed {
				if strings.HasPrefix(path, a) || path == strings.TrimSuffix(a, "/") {
					ok = true
				}
			}
			if !ok {
				t.Errorf("%s imports %s: enclave may import only the standard library, attestation libraries and enclave/tee", name, path)
			}
		}
	}
}
