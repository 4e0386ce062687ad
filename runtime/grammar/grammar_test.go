package grammar

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.gbnf from FromSchema")

// Each testdata/NAME.json schema has its grammar in NAME.gbnf, read and
// checked by hand. For object, json_object, anyof, map, primitive and refs
// the text is exactly what llama.cpp's examples/json_schema_to_grammar.py
// (commit c392e50) writes. The others differ from it on purpose: any ({} is
// any value, not any object), array (maxItems 0 is honoured), const (compact
// JSON), strict (a type list beside enum is one choice, not one per type),
// strings (maxLength 0), names (llama.cpp's converter writes "\\"" for a
// quote and lets the property "" overwrite root).
//
// Beside the text, each grammar is run on documents it must accept and
// documents it must refuse (valid for the schema or not, as noted).
var goldenDocs = map[string]struct{ accept, refuse []string }{
	"object": {
		accept: []string{
			`{"name":"x","kind":"a"}`,
			`{ "name": "Ann", "kind": "b", "age": -3, "tags": ["p", "q"], "nick": null }`,
			"{\n  \"name\": \"x\",\n  \"kind\": \"a\",\n  \"tags\": []\n}",
			`{"name":"x","kind":"a","nick":"n"}`,
		},
		refuse: []string{
			`{"kind":"a"}`,                                     // name missing
			`{"name":"x","kind":"c"}`,                          // not in enum
			`{"name":"x","kind":"a","extra":1}`,                // additionalProperties false
			`{"name":"x","kind":"a","tags":["1","2","3","4"]}`, // maxItems 3
			`{"name":"x","kind":"a","age":1.5}`,                // integer
			`{"kind":"a","name":"x"}`,                          // valid, but properties come in the schema's order
			`{"name":"x","kind":"a","nick":"n","age":3}`,       // likewise
			`{"name":"x","kind":"a"} x`,
		},
	},
	"json_object": {
		accept: []string{`{}`, `{"a":[1,{"b":null}],"c":"d\n\u00e9"}`},
		refuse: []string{`[]`, `"s"`, `{"a"}`, `{"a":1,}`},
	},
	"any": {
		accept: []string{`1`, `"s"`, `[true]`, `{"a":{}}`, `null`, `-0.5e10`},
		refuse: []string{`nul`, `{a:1}`, `01`},
	},
	"primitive": {
		accept: []string{`"hi"`, `"a\"b"`, `"\u00e9é"`, `""`},
		refuse: []string{`hi`, `"a"b"`, "\"a\nb\"", `1`},
	},
	"strict": {
		accept: []string{
			`{"location":"Bogotá, Colombia","unit":null,"days":3,"hourly":false}`,
			`{"location":"x","unit":"celsius","days":0,"hourly":true}`,
		},
		refuse: []string{
			`{"location":"x","unit":"kelvin","days":3,"hourly":false}`,
			`{"location":"x","unit":null,"days":3}`,
			`{"location":"x","unit":"null","days":3,"hourly":false}`,
		},
	},
	"array": {
		accept: []string{
			`{"steps":[{"explanation":"e","output":1.5}],"scores":[1,2],"anything":[1,"a",null],"none":[]}`,
			`{"steps":[{"explanation":"","output":0},{"explanation":"","output":0},{"explanation":"","output":0},{"explanation":"","output":0}],"scores":[1,2,3,4,5],"anything":[],"none":[ ]}`,
		},
		refuse: []string{
			`{"steps":[],"scores":[1,2],"anything":[],"none":[]}`, // minItems 1
			`{"steps":[{"explanation":"","output":0},{"explanation":"","output":0},{"explanation":"","output":0},{"explanation":"","output":0},{"explanation":"","output":0}],"scores":[1,2],"anything":[],"none":[]}`,
			`{"steps":[{"explanation":"e","output":1}],"scores":[1],"anything":[],"none":[]}`,
			`{"steps":[{"explanation":"e","output":1}],"scores":[1,2],"anything":[],"none":[1]}`,
			`{"steps":[{"explanation":"e"}],"scores":[1,2],"anything":[],"none":[]}`,
		},
	},
	"anyof": {
		accept: []string{
			`{"id":"123e4567-e89b-12d3-a456-426614174000","note":null,"point":null}`,
			`{"id":42,"note":"n","point":{"x":1,"y":-2.5e3}}`,
		},
		refuse: []string{
			`{"id":"abc","note":null,"point":null}`,
			`{"id":1,"note":null,"point":{"x":1}}`,
			`{"id":1,"note":3,"point":null}`,
		},
	},
	"refs": {
		accept: []string{
			`{"tree":{"value":1,"children":[{"value":2,"children":[]},{"value":3,"children":[{"value":4,"children":[]}]}]},"color":"red","label":"l"}`,
		},
		refuse: []string{
			`{"tree":{"value":1,"children":[{"value":2,"children":[]},{"value":2,"children":[]},{"value":2,"children":[]}]},"color":"red","label":"l"}`,
			`{"tree":{"value":1,"children":[]},"color":"blue","label":"l"}`,
			`{"tree":{"value":1},"color":"red","label":"l"}`,
		},
	},
	"strings": {
		accept: []string{
			`{"day":"2024-02-29","at":"12:30:00Z","when":"2024-02-29T12:30:00.123+01:00","id":"123e4567-e89b-12d3-a456-426614174000","code":"ab","word":"w","empty":""}`,
			`{"day":"1999-12-31","at":"23:59:59-05:30","when":"1999-12-31T00:00:00Z","id":"00000000-0000-0000-0000-00000000000A","code":"a\"\\d","word":"\u00e9","empty":""}`,
		},
		refuse: []string{
			`{"day":"2024-02-29","at":"12:30:00Z","when":"2024-02-29T12:30:00Z","id":"123e4567-e89b-12d3-a456-426614174000","code":"a","word":"w","empty":""}`,
			`{"day":"2024-02-29","at":"12:30:00Z","when":"2024-02-29T12:30:00Z","id":"123e4567-e89b-12d3-a456-426614174000","code":"abcde","word":"w","empty":""}`,
			`{"day":"2024-02-29","at":"12:30:00Z","when":"2024-02-29T12:30:00Z","id":"123e4567-e89b-12d3-a456-426614174000","code":"ab","word":"","empty":""}`,
			`{"day":"2024-13-01","at":"12:30:00Z","when":"2024-02-29T12:30:00Z","id":"123e4567-e89b-12d3-a456-426614174000","code":"ab","word":"w","empty":""}`,
			`{"day":"2024-02-29","at":"12:30:00","when":"2024-02-29T12:30:00Z","id":"123e4567-e89b-12d3-a456-426614174000","code":"ab","word":"w","empty":""}`,
			`{"day":"2024-02-29","at":"12:30:00Z","when":"2024-02-29T12:30:00Z","id":"123e4567e89b12d3a456426614174000","code":"ab","word":"w","empty":""}`,
			`{"day":"2024-02-29","at":"12:30:00Z","when":"2024-02-29T12:30:00Z","id":"123e4567-e89b-12d3-a456-426614174000","code":"ab","word":"w","empty":"x"}`,
		},
	},
	"map": {
		accept: []string{`{}`, `{"a":1,"b":2.5}`, `{"":0}`},
		refuse: []string{`{"a":"x"}`, `{"a":null}`, `[]`},
	},
	"const": {
		accept: []string{
			`{"version":2,"mode":"fast","shape":{"w":1,"tags":["x"]},"level":3}`,
			`{"version":2,"mode":"fast","shape":{"w":1,"tags":["x"]}}`,
		},
		refuse: []string{
			`{"version":3,"mode":"fast","shape":{"w":1,"tags":["x"]}}`,
			`{"version":2,"mode":"fast","shape":{"w":1,"tags":["x"]},"level":4}`,
			`{"version":2,"mode":"slow","shape":{"w":1,"tags":["x"]}}`,
		},
	},
	"names": {
		accept: []string{`{"string":"s","root":true,"space":1,"a\"b":"q\"uote","a b":null,"é":-7,"":false}`,
			`{"string":"s","root":true,"space":1,"a\"b":"back\\slash","a b":null,"é":0,"":true}`},
		refuse: []string{`{"string":"s","root":true,"space":1,"a\"b":"other","a b":null,"é":-7,"":false}`},
	},
}

func goldenSchemas(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("testdata/*.json: %v %v", files, err)
	}
	return files
}

func TestGolden(t *testing.T) {
	for _, file := range goldenSchemas(t) {
		name := strings.TrimSuffix(filepath.Base(file), ".json")
		t.Run(name, func(t *testing.T) {
			schema, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			got, err := FromSchema(schema)
			if err != nil {
				t.Fatalf("FromSchema(%s): %v", file, err)
			}
			golden := strings.TrimSuffix(file, ".json") + ".gbnf"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Errorf("FromSchema(%s) =\n%s\nwant (%s)\n%s", file, got, golden, want)
			}
			checkDocs(t, got, goldenDocs[name].accept, goldenDocs[name].refuse)
		})
	}
	for name := range goldenDocs {
		if _, err := os.Stat(filepath.Join("testdata", name+".json")); err != nil {
			t.Errorf("goldenDocs[%s]: %v", name, err)
		}
	}
}

// checkDocs runs grammar on documents it must accept and ones it must refuse.
func checkDocs(t *testing.T, grammar string, accept, refuse []string) {
	t.Helper()
	g, err := parseGBNF(grammar)
	if err != nil {
		t.Fatalf("grammar does not parse: %v\n%s", err, grammar)
	}
	if len(accept) == 0 {
		t.Error("no documents to accept")
	}
	for _, d := range accept {
		if !json.Valid([]byte(d)) {
			t.Errorf("test document %s is not JSON", d)
		}
		if !g.accepts(d) {
			t.Errorf("grammar refuses %s", d)
		}
	}
	for _, d := range refuse {
		if g.accepts(d) {
			t.Errorf("grammar accepts %s", d)
		}
	}
	if g.leftRecursive {
		t.Errorf("grammar is left-recursive:\n%s", grammar)
	}
}

func TestJSONObject(t *testing.T) {
	want, err := os.ReadFile(filepath.Join("testdata", "json_object.gbnf"))
	if err != nil {
		t.Fatal(err)
	}
	if JSONObject() != string(want) {
		t.Errorf("JSONObject() =\n%s\nwant testdata/json_object.gbnf", JSONObject())
	}
}

const weatherParams = `{
  "type": "object",
  "properties": {
    "city": {"type": "string"},
    "unit": {"type": "string", "enum": ["c", "f"]}
  },
  "required": ["city"],
  "additionalProperties": false
}`

func TestToolCall(t *testing.T) {
	got, err := ToolCall("get_weather", []byte(weatherParams))
	if err != nil {
		t.Fatal(err)
	}
	want := `char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt] | "u" [0-9a-fA-F]{4})
get-weather-args ::= "{" space get-weather-city-kv ( "," space ( get-weather-unit-kv ) )? "}" space
get-weather-call ::= "{" space "\"name\"" space ":" space "\"get_weather\"" space "," space "\"arguments\"" space ":" space get-weather-args "}" space
get-weather-city-kv ::= "\"city\"" space ":" space string
get-weather-unit ::= ("\"c\"" | "\"f\"") space
get-weather-unit-kv ::= "\"unit\"" space ":" space get-weather-unit
root ::= get-weather-call
space ::= | " " | "\n" [ \t]{0,20}
string ::= "\"" char* "\"" space
`
	if got != want {
		t.Errorf("ToolCall(get_weather) =\n%s\nwant\n%s", got, want)
	}
	checkDocs(t, got,
		[]string{`{"name":"get_weather","arguments":{"city":"Paris"}}`, `{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}`},
		[]string{`{"name":"get_time","arguments":{"city":"Paris"}}`, `{"arguments":{"city":"Paris"},"name":"get_weather"}`,
			`{"name":"get_weather","arguments":{}}`, `{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}`})
}

func TestAnyToolCall(t *testing.T) {
	// Each tool's $refs resolve in its own parameters: "#" in tree is tree's.
	tree := `{"type":"object","properties":{"label":{"$ref":"#/$defs/label"},"kids":{"type":"array","items":{"$ref":"#"}}},"required":["label","kids"],"$defs":{"label":{"type":"string","enum":["x","y"]}}}`
	other := `{"type":"object","properties":{"label":{"$ref":"#/$defs/label"}},"required":["label"],"$defs":{"label":{"type":"integer"}}}`
	got, err := AnyToolCall([]Tool{
		{Name: "get_weather", Parameters: []byte(weatherParams)},
		{Name: "now"},
		{Name: "tree", Parameters: []byte(tree)},
		{Name: "other", Parameters: []byte(other)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got, "root ::= get-weather-call | now-call | tree-call | other-call\n") {
		t.Errorf("AnyToolCall: root is not the choice of the four calls:\n%s", got)
	}
	checkDocs(t, got,
		[]string{
			`{"name":"now","arguments":{}}`,
			`{"name":"get_weather","arguments":{"city":"Paris"}}`,
			`{"name":"tree","arguments":{"label":"x","kids":[{"label":"y","kids":[]}]}}`,
			`{"name":"other","arguments":{"label":7}}`,
		},
		[]string{
			`{"name":"now","arguments":{"x":1}}`,
			`{"name":"get_weather","arguments":{}}`,
			`{"name":"tree","arguments":{"label":7,"kids":[]}}`,
			`{"name":"other","arguments":{"label":"x"}}`,
			`{"name":"tree","arguments":{"label":"x","kids":[{"label":"y"}]}}`,
		})
}

func TestToolCallRefused(t *testing.T) {
	for _, tc := range []struct {
		tools []Tool
		want  string
	}{
		{nil, "no tools"},
		{[]Tool{{Name: "a b"}}, `name "a b"`},
		{[]Tool{{Name: ""}}, `name ""`},
		{[]Tool{{Name: strings.Repeat("a", 65)}}, "is not [a-zA-Z0-9_-]{1,64}"},
		{[]Tool{{Name: "a"}, {Name: "a"}}, `"a" given twice`},
		{[]Tool{{Name: "a", Parameters: []byte(`{"type":"object","properties":{"p":{"type":"string","pattern":"x"}}}`)}},
			`tool "a" parameters: grammar: "pattern" at #/properties/p: not supported`},
		{make([]Tool, MaxTools+1), "above the limit"},
	} {
		_, err := AnyToolCall(tc.tools)
		var se *SchemaError
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.As(err, &se) {
			t.Errorf("AnyToolCall(%d tools) = %v; want a *SchemaError containing %q", len(tc.tools), err, tc.want)
		}
	}
}

// refusals: schemas refused, with the keyword and the pointer the error names.
var refusals = []struct {
	schema, keyword, pointer string
}{
	{`{"type":"string","pattern":"^a$"}`, "pattern", ""},
	{`{"type":"object","properties":{"a":{"type":"string","pattern":"x"}}}`, "pattern", "/properties/a"},
	{`{"properties":{"a/b~c":{"type":"string","minLength":1,"format":"date"}}}`, "format", "/properties/a~1b~0c"},
	{`{"allOf":[{"type":"object"}]}`, "allOf", ""},
	{`{"oneOf":[{"type":"string"},{"type":"null"}]}`, "oneOf", ""},
	{`{"not":{"type":"null"}}`, "not", ""},
	{`{"if":{},"then":{},"else":{}}`, "if", ""},
	{`{"type":"object","patternProperties":{"^x":{}}}`, "patternProperties", ""},
	{`{"type":"object","propertyNames":{"maxLength":3}}`, "propertyNames", ""},
	{`{"type":"object","minProperties":1}`, "minProperties", ""},
	{`{"type":"integer","minimum":0}`, "minimum", ""},
	{`{"type":"number","exclusiveMaximum":1}`, "exclusiveMaximum", ""},
	{`{"type":"number","multipleOf":2}`, "multipleOf", ""},
	{`{"type":"array","prefixItems":[{"type":"string"}]}`, "prefixItems", ""},
	{`{"type":"array","items":[{"type":"string"}]}`, "items", ""},
	{`{"type":"array","contains":{"type":"string"}}`, "contains", ""},
	{`{"type":"array","uniqueItems":true}`, "uniqueItems", ""},
	{`{"type":"array","maxItems":5000}`, "maxItems", ""},
	{`{"type":"array","minItems":3,"maxItems":2}`, "minItems", ""},
	{`{"type":"array","minItems":-1}`, "minItems", ""},
	{`{"type":"string","maxLength":1.5}`, "maxLength", ""},
	{`{"type":"string","format":"email"}`, "format", ""},
	{`{"type":"string","nullable":true}`, "nullable", ""},
	{`{"$id":"https://example.com/s","type":"string"}`, "$id", ""},
	{`{"$ref":"https://example.com/s.json"}`, "$ref", ""},
	{`{"$ref":"other.json#/$defs/a"}`, "$ref", ""},
	{`{"$ref":"#/$defs/missing"}`, "$ref", ""},
	{`{"$ref":"#"}`, "$ref", ""},
	{`{"$ref":"#/$defs/a","$defs":{"a":{"anyOf":[{"$ref":"#/$defs/b"},{"type":"null"}]},"b":{"$ref":"#/$defs/a"}}}`, "$ref", "/$defs/b"},
	// A cycle (A → Z → X → A) whose members are first reached inside an object.
	{`{"$ref":"#/$defs/A","$defs":{"A":{"anyOf":[{"type":"object","properties":{"x":{"$ref":"#/$defs/X"}}},{"$ref":"#/$defs/Z"}]},"X":{"anyOf":[{"$ref":"#/$defs/A"},{"type":"null"}]},"Z":{"$ref":"#/$defs/X"}}}`, "$ref", "/$defs/X/anyOf/0"},
	{`{"type":"object","properties":{"x":{"$ref":"#/$defs/a"}},"$defs":{"a":{"type":["string","object"],"anyOf":[{"$ref":"#/$defs/a"}]}}}`, "type", "/$defs/a"},
	{`{"$ref":"#/$defs/a","type":"object","$defs":{"a":{}}}`, "type", ""},
	{`{"anyOf":[{"type":"string"}],"minLength":1}`, "minLength", ""},
	{`{"anyOf":[]}`, "anyOf", ""},
	{`{"type":"object","properties":{"a":{}},"required":["b"]}`, "required", ""},
	{`{"type":"object","required":["b"]}`, "required", ""},
	{`{"type":"object","properties":{"a":{}},"required":["a","a"]}`, "required", ""},
	{`{"type":"strin"}`, "type", ""},
	{`{"type":[]}`, "type", ""},
	{`{"type":["string","string"]}`, "type", ""},
	{`{"type":"string","enum":["a",1]}`, "enum", ""},
	{`{"type":"integer","enum":[1.5]}`, "enum", ""},
	{`{"type":["string","null"],"const":3}`, "const", ""},
	{`{"enum":[]}`, "enum", ""},
	{`{"enum":["a"],"const":"a"}`, "enum", ""},
	{`{"enum":["a"],"maxLength":3}`, "maxLength", ""},
	{`{"properties":{},"items":{}}`, "items", ""},
	{`{"type":"object","additionalProperties":3}`, "additionalProperties", ""},
	{`{"items":{"$id":"x"}}`, "$id", "/items"},
	{`{"type":"object","properties":{"x":{"$ref":"#/$defs/a"}},"$defs":{"a":{"prefixItems":[]}}}`, "prefixItems", "/$defs/a"},
	{`{"anyOf":[{"type":"string"},{"type":"object","additionalProperties":{"type":"string","pattern":"x"}}]}`, "pattern", "/anyOf/1/additionalProperties"},
	{`false`, "", ""},
	{`{"properties":{"a":false}}`, "", "/properties/a"},
	{`3`, "", ""},
	{`{"properties":{"a":"string"}}`, "", "/properties/a"},
}

func TestRefused(t *testing.T) {
	for _, tc := range refusals {
		_, err := FromSchema([]byte(tc.schema))
		var se *SchemaError
		if !errors.As(err, &se) || se.Keyword != tc.keyword || se.Pointer != tc.pointer {
			t.Errorf("FromSchema(%s) = %v; want a *SchemaError for %q at %q", tc.schema, err, tc.keyword, tc.pointer)
			continue
		}
		if !strings.Contains(err.Error(), fmt.Sprintf("%q at #%s", tc.keyword, tc.pointer)) && tc.keyword != "" {
			t.Errorf("FromSchema(%s): error %q does not name %q at #%s", tc.schema, err, tc.keyword, tc.pointer)
		}
	}
}

func TestLimits(t *testing.T) {
	// A chain of definitions, each an object holding the next.
	var defs []string
	for i := range MaxDepth {
		defs = append(defs, fmt.Sprintf(`"d%d":{"type":"object","properties":{"x":{"$ref":"#/$defs/d%d"}}}`, i, i+1))
	}
	deep := `{"$ref":"#/$defs/d0","$defs":{` + strings.Join(defs, ",") + `,"d` + fmt.Sprint(MaxDepth) + `":{"type":"null"}}}`
	// Long property names nested: every rule's name repeats its ancestors'.
	long := `{"type":"null"}`
	for i := range 30 {
		long = fmt.Sprintf(`{"type":"object","properties":{"%s%d":%s}}`, strings.Repeat("p", 2000), i, long)
	}
	for _, tc := range []struct {
		name, schema, want string
	}{
		{"size", `{"description":"` + strings.Repeat("x", MaxSchemaBytes) + `"}`, "bytes, above the limit"},
		{"nesting", strings.Repeat(`{"items":`, MaxNesting) + `{}` + strings.Repeat(`}`, MaxNesting), "nested deeper than"},
		{"depth", deep, "nest deeper than"},
		{"grammar size", long, "the grammar would be over"},
		{"invalid JSON", `{"type":`, "invalid JSON"},
		{"trailing data", `{} {}`, "data after the schema"},
		{"duplicate key", `{"type":"string","type":"null"}`, `key "type" appears twice`},
	} {
		if len(tc.schema) > MaxSchemaBytes && tc.name != "size" {
			t.Fatalf("%s: test schema too big (%d bytes)", tc.name, len(tc.schema))
		}
		_, err := FromSchema([]byte(tc.schema))
		var se *SchemaError
		if !errors.As(err, &se) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: FromSchema = %v; want a *SchemaError containing %q", tc.name, err, tc.want)
		}
	}
	// Just inside the limits.
	var chain []string
	for i := range 40 {
		chain = append(chain, fmt.Sprintf(`"d%d":{"type":"object","properties":{"x":{"$ref":"#/$defs/d%d"}}}`, i, i+1))
	}
	ok := `{"$ref":"#/$defs/d0","$defs":{` + strings.Join(chain, ",") + `,"d40":{"type":"null"}}}`
	for _, s := range []string{ok, `{"type":"array","maxItems":1000,"items":{"type":"string","maxLength":1000}}`} {
		if _, err := FromSchema([]byte(s)); err != nil {
			t.Errorf("FromSchema(%.60s...): %v", s, err)
		}
	}
}

// Recursion through an object or array is fine; the grammar is not left-recursive.
func TestRecursion(t *testing.T) {
	for _, s := range []string{
		`{"type":"object","properties":{"next":{"anyOf":[{"$ref":"#"},{"type":"null"}]}},"required":["next"]}`,
		`{"$defs":{"list":{"type":"array","items":{"$ref":"#/$defs/item"}},"item":{"anyOf":[{"type":"integer"},{"$ref":"#/$defs/list"}]}},"$ref":"#/$defs/list"}`,
		`{"$defs":{"a":{"$ref":"#/$defs/b"},"b":{"type":"array","items":{"$ref":"#/$defs/a"}}},"$ref":"#/$defs/a"}`,
	} {
		g, err := FromSchema([]byte(s))
		if err != nil {
			t.Errorf("FromSchema(%s): %v", s, err)
			continue
		}
		p, err := parseGBNF(g)
		if err != nil {
			t.Fatalf("FromSchema(%s) does not parse: %v\n%s", s, err, g)
		}
		for _, d := range []string{`{"next":null}`, `{"next":{"next":null}}`, `[1,[2,[]]]`, `[[],[[]]]`} {
			p.accepts(d)
		}
		if p.leftRecursive {
			t.Errorf("FromSchema(%s) is left-recursive:\n%s", s, g)
		}
	}
}
