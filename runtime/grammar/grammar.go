package grammar

import (
	"fmt"
	"strconv"
	"strings"
)

// Limits on what a stranger may send and on what comes out.
const (
	// MaxSchemaBytes bounds one schema (one tool's parameters).
	MaxSchemaBytes = 64 << 10
	// MaxNesting bounds how deep the schema's JSON nests.
	MaxNesting = 64
	// MaxDepth bounds how deep schemas nest inside schemas, counting each
	// $ref followed.
	MaxDepth = 100
	// MaxRepeat bounds minLength, maxLength, minItems and maxItems: each
	// becomes a GBNF repetition {m,n} that llama.cpp expands rule by rule.
	// Its parser reads a count above 2000 as no bound at all (a grammar that
	// would break maxItems) and refuses an optional list of about 2000
	// ("(x ("," x){0,1999})?"), as seen with the libraries `make deps` installs.
	MaxRepeat = 1000
	// MaxTools bounds AnyToolCall's functions (OpenAI's own limit).
	MaxTools = 128
	// MaxGrammarBytes bounds the grammar written.
	MaxGrammarBytes = 1 << 20
)

// SchemaError is why a schema was refused: the keyword at fault, if one is,
// and where, as a JSON pointer into the schema.
type SchemaError struct {
	Pointer string // "" is the schema itself; otherwise "/properties/a" and the like
	Keyword string // "" when no one keyword is at fault (invalid JSON, size, nesting)
	Reason  string
}

func (e *SchemaError) Error() string {
	switch {
	case e.Keyword != "":
		return fmt.Sprintf("grammar: %q at #%s: %s", e.Keyword, e.Pointer, e.Reason)
	case e.Pointer != "":
		return fmt.Sprintf("grammar: schema at #%s: %s", e.Pointer, e.Reason)
	}
	return "grammar: schema: " + e.Reason
}

// FromSchema returns a GBNF grammar, start rule "root", whose sentences are
// JSON documents valid for the JSON Schema schema (see the package doc for
// the keywords understood). It refuses, with a *SchemaError, any schema it
// cannot follow exactly.
func FromSchema(schema []byte) (string, error) {
	root, err := decode(schema)
	if err != nil {
		return "", err
	}
	c := newConverter()
	if _, err := c.document(&doc{root: root}, "", "root"); err != nil {
		return "", err
	}
	return c.finish()
}

var jsonObject = func() string {
	g, err := FromSchema([]byte(`{"type":"object"}`))
	if err != nil {
		panic(err)
	}
	return g
}()

// JSONObject returns the grammar of any JSON object: response_format
// json_object.
func JSONObject() string { return jsonObject }

// Tool is a function the model may call: its name and the JSON Schema of its
// arguments (OpenAI's function.parameters; nil: it takes none, so its
// arguments are the empty object).
type Tool struct {
	Name       string
	Parameters []byte
}

// ToolCall returns the grammar of one call of function name:
//
//	{"name": "<name>", "arguments": <JSON valid for params>}
//
// the object that tool-calling chat templates (Hermes, Qwen, Mistral) have the
// model write, and what tool_choice {"type": "function", ...} forces.
func ToolCall(name string, params []byte) (string, error) {
	return AnyToolCall([]Tool{{Name: name, Parameters: params}})
}

// AnyToolCall returns the grammar of one call of any of tools, in ToolCall's
// shape: "name" comes first, so the model picks the function before it
// writes arguments, which then follow that function's schema. This is
// tool_choice "required". Names must be OpenAI function names
// ([a-zA-Z0-9_-]{1,64}) and distinct.
func AnyToolCall(tools []Tool) (string, error) {
	switch {
	case len(tools) == 0:
		return "", &SchemaError{Reason: "no tools"}
	case len(tools) > MaxTools:
		return "", &SchemaError{Reason: fmt.Sprintf("%d tools, above the limit of %d", len(tools), MaxTools)}
	}
	c := newConverter()
	c.rules.claimName("root")
	seen := map[string]bool{}
	calls := make([]string, len(tools))
	for i, t := range tools {
		if !validToolName(t.Name) {
			return "", &SchemaError{Reason: fmt.Sprintf("tool %d: name %q is not [a-zA-Z0-9_-]{1,64}", i, t.Name)}
		}
		if seen[t.Name] {
			return "", &SchemaError{Reason: fmt.Sprintf("tool %d: name %q given twice", i, t.Name)}
		}
		seen[t.Name] = true
		params := t.Parameters
		if len(params) == 0 {
			params = []byte(`{"type":"object","properties":{}}`)
		}
		root, err := decode(params)
		if err != nil {
			return "", fmt.Errorf("tool %q parameters: %w", t.Name, err)
		}
		args, err := c.document(&doc{key: strconv.Itoa(i), root: root}, t.Name, child(t.Name, "args"))
		if err != nil {
			return "", fmt.Errorf("tool %q parameters: %w", t.Name, err)
		}
		calls[i] = c.rules.add(child(t.Name, "call"), `"{" space "\"name\"" space ":" space `+
			literal(string(appendJSONString(nil, t.Name)))+` space "," space "\"arguments\"" space ":" space `+args+` "}" space`)
	}
	c.rules.set("root", strings.Join(calls, " | "))
	return c.finish()
}

func validToolName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}
