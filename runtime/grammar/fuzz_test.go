package grammar

import (
	"errors"
	"os"
	"testing"
)

// FuzzFromSchema: any bytes either make a grammar that parses (every rule it
// names defined, root present, no left recursion) within MaxGrammarBytes, or
// a *SchemaError with a reason; never a panic.
func FuzzFromSchema(f *testing.F) {
	files, _ := os.ReadDir("testdata")
	for _, e := range files {
		if b, err := os.ReadFile("testdata/" + e.Name()); err == nil && len(e.Name()) > 5 && e.Name()[len(e.Name())-5:] == ".json" {
			f.Add(b)
		}
	}
	for _, r := range refusals {
		f.Add([]byte(r.schema))
	}
	f.Add([]byte(`{"type":"object","properties":{"next":{"anyOf":[{"$ref":"#"},{"type":"null"}]}},"required":["next"]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		g, err := FromSchema(b)
		if err != nil {
			var se *SchemaError
			if !errors.As(err, &se) || se.Reason == "" {
				t.Fatalf("FromSchema(%q): error %v (%T) is not a *SchemaError with a reason", b, err, err)
			}
			return
		}
		if len(g) > MaxGrammarBytes {
			t.Fatalf("FromSchema(%q): %d bytes of grammar", b, len(g))
		}
		p, err := parseGBNF(g)
		if err != nil {
			t.Fatalf("FromSchema(%q) does not parse: %v\n%s", b, err, g)
		}
		for _, d := range []string{``, `{}`, `[]`, `""`, `0`, `null`, `{"a":[1]}`} {
			p.accepts(d)
		}
		if p.leftRecursive {
			t.Fatalf("FromSchema(%q) is left-recursive:\n%s", b, g)
		}
	})
}
