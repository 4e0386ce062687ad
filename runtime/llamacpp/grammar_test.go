package llamacpp_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/hybridgroup/yzma/pkg/llama"

	"github.com/cocoon-network/cocoon/internal/testmodel"
	"github.com/cocoon-network/cocoon/runtime/grammar"
)

// The grammars of runtime/grammar are for llama.cpp's grammar sampler; these
// tests hand them to it, through yzma as the backend does, on the shared model.

// grammarModel loads the shared model's weights and vocabulary with yzma
// directly (the backend keeps its own unexported); testmodel.Backend loads the
// libraries first.
func grammarModel(t *testing.T) (llama.Model, llama.Vocab) {
	t.Helper()
	testmodel.Backend(t, 1)
	params := llama.ModelDefaultParams()
	params.SetCPUOnly()
	m, err := llama.ModelLoadFromFile(testmodel.ModelPath(t), params)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { llama.ModelFree(m) })
	return m, llama.ModelGetVocab(m)
}

var grammarTools = []grammar.Tool{
	{Name: "get_weather", Parameters: []byte(`{"type":"object","properties":{"city":{"type":"string","maxLength":8},"unit":{"enum":["c","f"]}},"required":["city","unit"],"additionalProperties":false}`)},
	{Name: "now"},
}

// TestGrammarsParseInLlamaCPP: llama.cpp builds a grammar sampler from every
// golden grammar of runtime/grammar, the json_object one and the tool calls,
// and none from a broken grammar.
func TestGrammarsParseInLlamaCPP(t *testing.T) {
	_, vocab := grammarModel(t)
	grammars := map[string]string{"JSONObject": grammar.JSONObject()}
	files, err := filepath.Glob(filepath.Join("..", "grammar", "testdata", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("../grammar/testdata/*.json: %v %v", files, err)
	}
	for _, f := range files {
		schema, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if grammars[f], err = grammar.FromSchema(schema); err != nil {
			t.Fatalf("FromSchema(%s): %v", f, err)
		}
	}
	if grammars["AnyToolCall"], err = grammar.AnyToolCall(grammarTools); err != nil {
		t.Fatal(err)
	}
	if grammars["ToolCall"], err = grammar.ToolCall(grammarTools[0].Name, grammarTools[0].Parameters); err != nil {
		t.Fatal(err)
	}
	// Repetitions at grammar.MaxRepeat: llama.cpp expands each rule by rule
	// and refuses some beyond 2000.
	if grammars["MaxRepeat"], err = grammar.FromSchema([]byte(fmt.Sprintf(
		`{"type":"object","properties":{"a":{"type":"array","minItems":%[1]d,"maxItems":%[1]d,"items":{"type":"string","minLength":%[1]d,"maxLength":%[1]d}},"b":{"type":"array","maxItems":%[1]d,"items":{"type":"string","maxLength":%[1]d}}}}`,
		grammar.MaxRepeat))); err != nil {
		t.Fatal(err)
	}
	for name, g := range grammars {
		s := llama.SamplerInitGrammar(vocab, g, "root")
		if s == 0 {
			t.Errorf("llama.cpp refuses the grammar of %s:\n%s", name, g)
			continue
		}
		llama.SamplerFree(s)
	}
	for _, g := range []string{
		`root ::= undefined-rule`,
		`root ::= "{" ( "a" `,
		`root ::= root "a" | "b"`,
		`other ::= "a"`,
		`root ::= [a-`,
	} {
		if s := llama.SamplerInitGrammar(vocab, g, "root"); s != 0 {
			llama.SamplerFree(s)
			t.Errorf("llama.cpp accepts the broken grammar %q", g)
		}
	}
}

// TestGrammarConstrainedGeneration samples from the shared model (which knows
// nothing of JSON) under a schema's grammar and a tool-call grammar, with
// several seeds: each output is JSON valid for its schema, ended by the model
// once the grammar is complete.
func TestGrammarConstrainedGeneration(t *testing.T) {
	m, vocab := grammarModel(t)
	schema := `{
	  "type": "object",
	  "properties": {
	    "ok": {"type": "boolean"},
	    "color": {"enum": ["red", "green", "blue"]},
	    "count": {"type": "integer"},
	    "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 2},
	    "note": {"type": ["string", "null"], "maxLength": 8}
	  },
	  "required": ["ok", "color", "count", "tags"],
	  "additionalProperties": false
	}`
	g, err := grammar.FromSchema([]byte(schema))
	if err != nil {
		t.Fatal(err)
	}
	tools, err := grammar.AnyToolCall(grammarTools)
	if err != nil {
		t.Fatal(err)
	}
	for seed := range uint32(4) {
		out := generateWithGrammar(t, m, vocab, g, seed)
		if err := validateJSON(schema, out); err != nil {
			t.Errorf("seed %d: %q: %v", seed, out, err)
		}
		call := generateWithGrammar(t, m, vocab, tools, seed)
		var c struct {
			Name      string
			Arguments json.RawMessage
		}
		if err := json.Unmarshal([]byte(call), &c); err != nil {
			t.Errorf("seed %d: tool call %q: %v", seed, call, err)
			continue
		}
		i := slices.IndexFunc(grammarTools, func(tl grammar.Tool) bool { return tl.Name == c.Name })
		if i < 0 {
			t.Errorf("seed %d: tool call %q names no tool", seed, call)
			continue
		}
		params := string(grammarTools[i].Parameters)
		if params == "" {
			params = `{"type":"object","properties":{},"additionalProperties":false}`
		}
		if err := validateJSON(params, string(c.Arguments)); err != nil {
			t.Errorf("seed %d: tool call %q: arguments: %v", seed, call, err)
		}
		t.Logf("seed %d: %s  |  %s", seed, out, call)
	}
}

// generateWithGrammar samples up to 400 tokens after "once upon a time" with
// the grammar, temperature 1, and returns the text, failing t if the model
// has not stopped by then.
func generateWithGrammar(t *testing.T, m llama.Model, vocab llama.Vocab, g string, seed uint32) string {
	t.Helper()
	cp := llama.ContextDefaultParams()
	cp.NCtx, cp.NBatch, cp.NUbatch = 512, 512, 512
	cp.NThreads, cp.NThreadsBatch = 1, 1
	lctx, err := llama.InitFromModel(m, cp)
	if err != nil {
		t.Fatal(err)
	}
	defer llama.Free(lctx)
	gs := llama.SamplerInitGrammar(vocab, g, "root")
	if gs == 0 {
		t.Fatalf("llama.cpp refuses the grammar:\n%s", g)
	}
	chain := llama.SamplerChainInit(llama.SamplerChainDefaultParams())
	defer llama.SamplerFree(chain) // frees the samplers added to it
	llama.SamplerChainAdd(chain, gs)
	llama.SamplerChainAdd(chain, llama.SamplerInitTemp(1))
	llama.SamplerChainAdd(chain, llama.SamplerInitDist(seed))

	toks := llama.Tokenize(vocab, prompt, true, false)
	var out []byte
	piece := make([]byte, 64)
	for range 400 {
		if rc, err := llama.Decode(lctx, llama.BatchGetOne(toks)); err != nil || rc != 0 {
			t.Fatalf("decode: %d %v", rc, err)
		}
		tok := llama.SamplerSample(chain, lctx, -1)
		if llama.VocabIsEOG(vocab, tok) {
			if !utf8.Valid(out) {
				t.Fatalf("output %q is not UTF-8", out)
			}
			return string(out)
		}
		n := llama.TokenToPiece(vocab, tok, piece, 0, false)
		if n < 0 {
			t.Fatalf("token %d: piece of %d bytes", tok, -n)
		}
		out = append(out, piece[:n]...)
		toks = []llama.Token{tok}
	}
	t.Fatalf("no end after 400 tokens: %q", out)
	return ""
}

// validateJSON checks doc against schema for the keywords the schemas above
// use: type, enum, properties, required, additionalProperties false, items,
// maxItems, maxLength.
func validateJSON(schema, doc string) error {
	var s any
	if err := json.Unmarshal([]byte(schema), &s); err != nil {
		return fmt.Errorf("schema: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(doc))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return fmt.Errorf("not JSON: %v", err)
	}
	if dec.More() {
		return fmt.Errorf("data after the JSON value")
	}
	return validate(s.(map[string]any), v, "")
}

func validate(s map[string]any, v any, at string) error {
	if e, ok := s["enum"].([]any); ok {
		for _, x := range e {
			if reflect.DeepEqual(x, v) {
				return nil
			}
		}
		return fmt.Errorf("%s: %v is not in %v", at, v, e)
	}
	if t, ok := s["type"]; ok {
		var types []any
		if l, ok := t.([]any); ok {
			types = l
		} else {
			types = []any{t}
		}
		if !slices.ContainsFunc(types, func(t any) bool { return isType(v, t.(string)) }) {
			return fmt.Errorf("%s: %v is not of type %v", at, v, t)
		}
	}
	switch v := v.(type) {
	case map[string]any:
		props, _ := s["properties"].(map[string]any)
		for k, pv := range v {
			ps, ok := props[k].(map[string]any)
			if !ok {
				if s["additionalProperties"] == false {
					return fmt.Errorf("%s: property %q not allowed", at, k)
				}
				continue
			}
			if err := validate(ps, pv, at+"/"+k); err != nil {
				return err
			}
		}
		req, _ := s["required"].([]any)
		for _, r := range req {
			if _, ok := v[r.(string)]; !ok {
				return fmt.Errorf("%s: %q missing", at, r)
			}
		}
	case []any:
		if max, ok := s["maxItems"].(float64); ok && len(v) > int(max) {
			return fmt.Errorf("%s: %d items, more than %v", at, len(v), max)
		}
		if is, ok := s["items"].(map[string]any); ok {
			for i, x := range v {
				if err := validate(is, x, fmt.Sprintf("%s/%d", at, i)); err != nil {
					return err
				}
			}
		}
	case string:
		if max, ok := s["maxLength"].(float64); ok && utf8.RuneCountInString(v) > int(max) {
			return fmt.Errorf("%s: %q is longer than %v", at, v, max)
		}
	}
	return nil
}

func isType(v any, t string) bool {
	switch v := v.(type) {
	case nil:
		return t == "null"
	case bool:
		return t == "boolean"
	case json.Number:
		_, err := v.Int64()
		return t == "number" || t == "integer" && (err == nil || !bytes.ContainsAny([]byte(v), ".eE"))
	case string:
		return t == "string"
	case []any:
		return t == "array"
	case map[string]any:
		return t == "object"
	}
	return false
}
