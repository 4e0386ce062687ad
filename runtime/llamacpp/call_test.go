package llamacpp

import (
	"strings"
	"testing"

	"github.com/cocoon-network/cocoon/runtime"
)

var goldenCalls = []struct{ text, name, args string }{
	{`{"name": "now", "arguments": {}}`, "now", `{}`},
	{`{ "name" : "get_weather" , "arguments" : { "city" : "Paris" , "unit" : "c" } } `, "get_weather", `{ "city" : "Paris" , "unit" : "c" }`},
	{"{\"name\":\"a-b_1\",\"arguments\":{\"x\":{\"y\":[1,{}]}}\n}", "a-b_1", `{"x":{"y":[1,{}]}}`},
	{`{"name": "f", "arguments": {"s": "}"}}`, "f", `{"s": "}"}`},
}

func TestParseCall(t *testing.T) {
	for _, g := range goldenCalls {
		name, args, ok := parseCall(g.text)
		if !ok || name != g.name || args != g.args {
			t.Errorf("parseCall(%q) = %q, %q, %v; want %q, %q", g.text, name, args, ok, g.name, g.args)
		}
	}
	for _, bad := range []string{"", "{", `{"name": "f"}`, `{"name": "f", "arguments": {}`, `{"name": "f g", "arguments": {}}`, `{"name": "f", "arguments": {"a"}}`, `hello`} {
		if _, _, ok := parseCall(bad); ok {
			t.Errorf("parseCall(%q) ok", bad)
		}
	}
}

// FuzzParseCall: parseCall never panics and round-trips through formatCall,
// and the arguments streamed from every prefix of a call (less the tail
// that may close the call) are a prefix of its arguments.
func FuzzParseCall(f *testing.F) {
	for _, g := range goldenCalls {
		f.Add(g.text)
	}
	f.Fuzz(func(t *testing.T, text string) {
		name, args, ok := parseCall(text)
		for i := range len(text) + 1 {
			n, at, ok := callPrefix(text[:i])
			if !ok {
				continue
			}
			streamed := text[at:i]
			streamed = streamed[:len(streamed)-argsHoldBack(streamed)]
			if name != "" && (n != name || !strings.HasPrefix(args, streamed)) {
				t.Fatalf("prefix %q streams %q of %s; the whole call has %q of %s", text[:i], streamed, n, args, name)
			}
		}
		if !ok {
			return
		}
		n2, a2, ok := parseCall(formatCall(name, args))
		if !ok || n2 != name || a2 != args {
			t.Fatalf("round trip of %q: %q %q %v; want %q %q", text, n2, a2, ok, name, args)
		}
	})
}

// TestToolMessages: the plain rendering of tools, calls and results (the
// package doc's format).
func TestToolMessages(t *testing.T) {
	req := runtime.Request{
		Tools: []runtime.Tool{{Name: "now", Description: "The time."}},
		Messages: []runtime.Message{
			{Role: "system", Content: "Be brief."},
			{Role: "user", Content: "Time?"},
			{Role: "assistant", ToolCalls: []runtime.ToolCall{{ID: "call_1", Name: "now", Arguments: `{}`}}},
			{Role: "tool", ToolCallID: "call_1", Content: "noon"},
		},
	}
	got := PlainTemplate(toolMessages(req))
	want := "System: Be brief.\n\nYou can call these functions:\n\n" +
		`{"name": "now", "description": "The time.", "parameters": {"type":"object","properties":{}}}` + "\n\n" +
		`To call a function, answer with only a JSON object: {"name": <function name>, "arguments": <arguments object>}. Otherwise answer in plain text.` + "\n\n" +
		"User: Time?\n\n" +
		`Assistant: {"name": "now", "arguments": {}}` + "\n\n" +
		"User: Result of call \"call_1\" to now:\nnoon\n\nAssistant:"
	if got != want {
		t.Fatalf("rendered:\n%s\nwant:\n%s", got, want)
	}
	// tool_choice none: the tools are not described, the history is kept.
	req.ToolChoice = runtime.ToolChoice{Mode: runtime.ToolChoiceNone}
	if got := PlainTemplate(toolMessages(req)); strings.Contains(got, "You can call") || !strings.Contains(got, `"arguments": {}`) {
		t.Fatalf("tool_choice none rendered:\n%s", got)
	}
}
