package layout

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/cocoon-network/cocoon"

// pkg is what `go list -json` says of one package.
type pkg struct {
	ImportPath   string
	Imports      []string
	TestImports  []string
	XTestImports []string
}

// listPackages returns the module's packages with their non-test imports.
func listPackages(t *testing.T, root string) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json=ImportPath,Imports,TestImports,XTestImports", "./...")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// table reads the Layout table of docs/design.md: package path (relative to
// the module) → the module's packages it may import.
func table(t *testing.T, root string) map[string][]string {
	t.Helper()
	f, err := os.Open(filepath.Join(root, "docs", "design.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows := map[string][]string{}
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "## ") {
			in = line == "## Layout"
			continue
		}
		if !in || !strings.HasPrefix(line, "| `") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		if len(cells) != 3 {
			t.Fatalf("docs/design.md Layout row %q: want | package | holds | imports |", line)
		}
		path := strings.Trim(strings.TrimSpace(cells[0]), "`")
		var imports []string
		for _, s := range strings.Split(cells[2], ",") {
			s = strings.Trim(strings.TrimSpace(s), "`")
			if s != "" && s != "—" {
				imports = append(imports, s)
			}
		}
		if _, dup := rows[path]; dup {
			t.Fatalf("docs/design.md Layout lists %s twice", path)
		}
		rows[path] = imports
	}
	if len(rows) == 0 {
		t.Fatal("docs/design.md has no Layout table")
	}
	return rows
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// check compares what the packages import with the table and returns one
// line per disagreement.
func check(pkgs []pkg, rows map[string][]string) []string {
	var bad []string
	seen := map[string]bool{}
	for _, p := range pkgs {
		rel := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		allowed, ok := rows[rel]
		if !ok {
			bad = append(bad, fmt.Sprintf("%s is not in docs/design.md's Layout table", rel))
			continue
		}
		seen[rel] = true
		var got []string
		for _, imp := range p.Imports {
			if r, ok := strings.CutPrefix(imp, module+"/"); ok {
				got = append(got, r)
			}
		}
		for _, imp := range got {
			if !slices.Contains(allowed, imp) {
				bad = append(bad, fmt.Sprintf("%s imports %s, which its Layout row does not allow", rel, imp))
			}
		}
		for _, a := range allowed {
			if !slices.Contains(got, a) {
				bad = append(bad, fmt.Sprintf("%s's Layout row names %s, which it does not import", rel, a))
			}
		}
	}
	for rel := range rows {
		if !seen[rel] {
			bad = append(bad, fmt.Sprintf("docs/design.md's Layout table lists %s, which is not a package", rel))
		}
	}
	slices.Sort(bad)
	return bad
}

// TestImportsMatchTheDesign: every package's imports of the module are
// exactly those its row of the Layout table names.
func TestImportsMatchTheDesign(t *testing.T) {
	root := repoRoot(t)
	for _, line := range check(listPackages(t, root), table(t, root)) {
		t.Error(line)
	}
}

// thirdParty bounds where the heavy outside libraries may be imported, so
// that each stays behind the package that exists to wrap it.
var thirdParty = []struct {
	prefix string
	only   []string // module-relative packages allowed to import it
}{
	{"github.com/hybridgroup/yzma", []string{"runtime/llamacpp"}},
	{"github.com/xssnick/tonutils-go", []string{"settle", "settle/devledger", "settle/tonchain", "market", "market/service", "node", "cmd/cocoon"}},
	{"go.etcd.io/bbolt", []string{"settle"}},
	{"github.com/google/go-tdx-guest", []string{"enclave"}},
	{"github.com/google/go-sev-guest", []string{"enclave"}},
	{"github.com/libp2p/go-libp2p/p2p/net/mock", []string{"testnet/inproc"}},
	{"github.com/prometheus/client_golang", []string{"node/metrics"}},
}

// outside lists, for the packages kept at the bottom of the graph, every
// import from outside this module and the standard library their code may
// make (an entry ending in "/" is a prefix). enclave parses hardware evidence
// with the vendors' libraries and nothing else; enclave/tee is a leaf both
// enclave and market import; runtime is interfaces; market is a protocol
// over io.ReadWriter, so no libp2p host, no settle store, no OpenAI JSON.
var outside = map[string][]string{
	"enclave": {"github.com/google/go-tdx-guest/", "github.com/google/go-sev-guest/",
		"github.com/google/go-configfs-tsm/", "github.com/google/uuid"},
	"enclave/tee": nil,
	"runtime":     nil,
	"market": {"github.com/libp2p/go-libp2p/core/peer", "github.com/libp2p/go-msgio/pbio",
		"github.com/xssnick/tonutils-go/address", "google.golang.org/protobuf/proto"},
}

// testsMayNot lists what a package's tests must not import either: market's
// tests run the protocol without a host, settle or the OpenAI types.
var testsMayNot = map[string][]string{
	"market": {module + "/market/service", module + "/p2p", module + "/settle", module + "/runtime/openaiapi",
		"github.com/libp2p/go-libp2p/core/host", "github.com/libp2p/go-libp2p/core/network"},
}

func matches(path string, rules []string) bool {
	for _, r := range rules {
		if path == strings.TrimSuffix(r, "/") || (strings.HasSuffix(r, "/") && strings.HasPrefix(path, r)) {
			return true
		}
	}
	return false
}

func TestBottomPackagesImportLittle(t *testing.T) {
	seen := map[string]bool{}
	for _, p := range listPackages(t, repoRoot(t)) {
		rel := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		if allowed, ok := outside[rel]; ok {
			seen[rel] = true
			for _, imp := range p.Imports {
				std := !strings.Contains(strings.Split(imp, "/")[0], ".")
				if !std && !strings.HasPrefix(imp, module+"/") && !matches(imp, allowed) {
					t.Errorf("%s imports %s; it may import only %v from outside", rel, imp, allowed)
				}
			}
		}
		for _, imp := range append(p.TestImports, p.XTestImports...) {
			if matches(imp, testsMayNot[rel]) || slices.ContainsFunc(testsMayNot[rel], func(r string) bool { return strings.HasPrefix(imp, r+"/") }) {
				t.Errorf("%s's tests import %s", rel, imp)
			}
		}
	}
	for rel := range outside {
		if !seen[rel] {
			t.Errorf("outside names %s, which is not a package", rel)
		}
	}
}

func TestThirdPartyStaysBehindItsWrapper(t *testing.T) {
	for _, p := range listPackages(t, repoRoot(t)) {
		rel := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		for _, imp := range p.Imports {
			for _, tp := range thirdParty {
				if strings.HasPrefix(imp, tp.prefix) && !slices.Contains(tp.only, rel) {
					t.Errorf("%s imports %s; only %v may", rel, imp, tp.only)
				}
			}
		}
	}
}

// The check fails both ways: an import the row does not allow, and a row
// naming an import the code does not make.
func TestCheckFailsBothWays(t *testing.T) {
	pkgs := []pkg{{ImportPath: module + "/a", Imports: []string{module + "/b", "fmt"}}, {ImportPath: module + "/b"}}
	if bad := check(pkgs, map[string][]string{"a": {"b"}, "b": nil}); len(bad) != 0 {
		t.Fatalf("a matching table: %v", bad)
	}
	for _, rows := range []map[string][]string{
		{"a": nil, "b": nil},             // a's import of b not allowed
		{"a": {"b"}, "b": {"a"}},         // b's row names an import it does not make
		{"a": {"b"}},                     // b missing from the table
		{"a": {"b"}, "b": nil, "c": nil}, // c is no package
	} {
		if bad := check(pkgs, rows); len(bad) == 0 {
			t.Errorf("table %v passed", rows)
		}
	}
}
