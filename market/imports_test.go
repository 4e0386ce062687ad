package market

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImportsStayProtocol keeps market a protocol over io.ReadWriter
// (docs/design.md, Layout): its code imports the standard library, its wire
// types, runtime's types, the TEE kind (enclave/tee, not enclave), libp2p's
// peer IDs and the codecs only. What mounts it on a libp2p host, pays through
// settle's store or speaks OpenAI's JSON lives in market/service; its tests do
// not reach for those either.
func TestImportsStayProtocol(t *testing.T) {
	allowed := []string{
		"github.com/cocoon-network/cocoon/enclave/tee", // the TEE kind; a leaf, unlike enclave
		"github.com/cocoon-network/cocoon/market/pb",
		"github.com/cocoon-network/cocoon/runtime",
		"github.com/libp2p/go-libp2p/core/peer",
		"github.com/libp2p/go-msgio/pbio",
		"github.com/xssnick/tonutils-go/address", // Open's channel address check
		"google.golang.org/protobuf/proto",
	}
	forbiddenInTests := []string{
		"github.com/cocoon-network/cocoon/market/service",
		"github.com/cocoon-network/cocoon/p2p",
		"github.com/cocoon-network/cocoon/settle",
		"github.com/cocoon-network/cocoon/runtime/openaiapi",
		"github.com/libp2p/go-libp2p/core/host",
		"github.com/libp2p/go-libp2p/core/network",
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if strings.HasSuffix(name, "_test.go") {
				for _, p := range forbiddenInTests {
					if path == p || strings.HasPrefix(path, p+"/") {
						t.Errorf("%s imports %s: market's tests run the protocol without a host, settle or the OpenAI types", name, path)
					}
				}
				continue
			}
			if !strings.Contains(strings.Split(path, "/")[0], ".") {
				continue // standard library
			}
			ok := false
			for _, a := range allowed {
				ok = ok || path == a
			}
			if !ok {
				t.Errorf("%s imports %s: market is the protocol; libp2p hosts, settle and OpenAI types belong in market/service", name, path)
			}
		}
	}
}
