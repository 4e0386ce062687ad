package llamacpp_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/hybridgroup/yzma/pkg/llama"

	"github.com/cocoon-network/cocoon/internal/testmodel"
	"github.com/cocoon-network/cocoon/runtime"
)

const weatherSchema = `{"type":"object","properties":{"city":{"type":"string","maxLength":12},"unit":{"enum":["c","f"]}},"required":["city","unit"],"additionalProperties":false}`

var testTools = []runtime.Tool{
	{Name: "get_weather", Description: "The weather in a city.", Parameters: json.RawMessage(weatherSchema)},
	{Name: "now", Description: "The time."},
}

var weatherQuestion = []runtime.Message{{Role: "user", Content: "What is the weather in Paris?"}}

// calls gathers the streamed tool calls of r as OpenAI clients do: the first
// piece of an index names the call, later ones append to its arguments.
func calls(t *testing.T, r result) []runtime.ToolCall {
	t.Helper()
	var out []runtime.ToolCall
	for _, d := range r.deltas {
		for _, p := range d.ToolCalls {
			if p.Index == len(out) {
				if p.ID == "" || p.Name == "" {
					t.Fatalf("first piece of call %d lacks id or name: %+v", p.Index, p)
				}
				out = append(out, runtime.ToolCall{ID: p.ID, Name: p.Name})
			} else if p.Index != len(out)-1 || p.ID != "" || p.Name != "" {
				t.Fatalf("piece %+v after %d calls", p, len(out))
			}
			out[p.Index].Arguments += p.Arguments
		}
	}
	return out
}

// checkBilling: the deltas' tokens add up to the usage.
func checkBilling(t *testing.T, r result) {
	t.Helper()
	if r.tokens() != r.usage.CompletionTokens {
		t.Fatalf("deltas carry %d tokens, usage says %d", r.tokens(), r.usage.CompletionTokens)
	}
}

// checkCall: r is one call of a tool of tools, with arguments valid for its
// schema, finished as tool_calls.
func checkCall(t *testing.T, r result, tools []runtime.Tool) runtime.ToolCall {
	t.Helper()
	checkBilling(t, r)
	cs := calls(t, r)
	if r.finish != runtime.FinishToolCalls || len(cs) != 1 || r.text != "" {
		t.Fatalf("finish %q, calls %+v, text %q; want one call, tool_calls, no text", r.finish, cs, r.text)
	}
	c := cs[0]
	if !strings.HasPrefix(c.ID, "call_") || len(c.ID) < 16 {
		t.Errorf("call id %q; want call_ and random hex", c.ID)
	}
	for _, tool := range tools {
		if tool.Name != c.Name {
			continue
		}
		schema := string(tool.Parameters)
		if schema == "" {
			schema = `{"type":"object","properties":{},"additionalProperties":false}`
		}
		if err := validateJSON(schema, c.Arguments); err != nil {
			t.Fatalf("arguments %q of %s: %v", c.Arguments, c.Name, err)
		}
		return c
	}
	t.Fatalf("call of %q, not one of the tools", c.Name)
	return c
}

func TestToolChoiceRequired(t *testing.T) {
	b := testmodel.Backend(t, 1)
	for s := range uint64(6) {
		req := runtime.Request{Messages: weatherQuestion, Tools: testTools, ToolChoice: runtime.ToolChoice{Mode: runtime.ToolChoiceRequired},
			MaxTokens: 200, Temperature: 1, Seed: seed(s)}
		r := generate(t, b, req)
		c := checkCall(t, r, testTools)
		// Billing is progressive: tokens come while the call is written,
		// not all at its end.
		withTokens := 0
		for _, d := range r.deltas {
			if d.Tokens > 0 {
				withTokens++
			}
		}
		if withTokens < r.usage.CompletionTokens/2 {
			t.Errorf("%d tokens came in %d deltas; want them as generated", r.usage.CompletionTokens, withTokens)
		}
		t.Logf("seed %d: %s(%s) in %d tokens", s, c.Name, c.Arguments, r.usage.CompletionTokens)
	}
}

func TestToolChoiceFunction(t *testing.T) {
	b := testmodel.Backend(t, 1)
	for _, name := range []string{"get_weather", "now"} {
		req := runtime.Request{Messages: weatherQuestion, Tools: testTools, ToolChoice: runtime.ToolChoice{Mode: runtime.ToolChoiceFunction, Name: name},
			MaxTokens: 200, Temperature: 0.8, Seed: seed(7)}
		c := checkCall(t, generate(t, b, req), testTools)
		if c.Name != name {
			t.Fatalf("tool_choice %s called %s", name, c.Name)
		}
	}
}

// TestToolChoiceAuto: each answer is either text (never starting with "{")
// or one valid call.
func TestToolChoiceAuto(t *testing.T) {
	b := testmodel.Backend(t, 1)
	texts, nCalls := 0, 0
	for s := range uint64(12) {
		req := runtime.Request{Messages: weatherQuestion, Tools: testTools, MaxTokens: 120, Temperature: 1.2, Seed: seed(s)}
		r := generate(t, b, req)
		checkBilling(t, r)
		if len(calls(t, r)) > 0 {
			checkCall(t, r, testTools)
			nCalls++
			continue
		}
		if r.text == "" || strings.HasPrefix(r.text, "{") || r.finish == runtime.FinishToolCalls {
			t.Fatalf("seed %d: text %q, finish %q", s, r.text, r.finish)
		}
		texts++
	}
	t.Logf("auto: %d texts, %d calls", texts, nCalls)
	// A first token "{" is forced to check the call branch of auto.
	req := runtime.Request{Messages: weatherQuestion, Tools: testTools, MaxTokens: 200, LogitBias: map[int32]float64{pieceID(t, "{"): 100}}
	checkCall(t, generate(t, b, req), testTools)
}

// pieceID is the id of a token whose text is piece in the shared model's
// vocabulary.
func pieceID(t *testing.T, piece string) int32 {
	t.Helper()
	return pieceIDs(t, piece)[0]
}

// pieceIDs are the ids of all tokens whose text is piece.
func pieceIDs(t *testing.T, piece string) []int32 {
	t.Helper()
	_, vocab := grammarModel(t)
	buf := make([]byte, 64)
	var ids []int32
	for id := range llama.VocabNTokens(vocab) {
		if n := llama.TokenToPiece(vocab, llama.Token(id), buf, 0, false); n > 0 && string(buf[:n]) == piece {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		t.Fatalf("no token %q in the vocabulary", piece)
	}
	return ids
}

func TestToolResultTurn(t *testing.T) {
	b := testmodel.Backend(t, 1)
	msgs := []runtime.Message{
		weatherQuestion[0],
		{Role: "assistant", ToolCalls: []runtime.ToolCall{{ID: "call_1", Name: "get_weather", Arguments: `{"city":"Paris","unit":"c"}`}}},
		{Role: "tool", ToolCallID: "call_1", Content: "sunny, 21 degrees"},
	}
	for _, choice := range []string{runtime.ToolChoiceAuto, runtime.ToolChoiceNone} {
		r := generate(t, b, runtime.Request{Messages: msgs, Tools: testTools, ToolChoice: runtime.ToolChoice{Mode: choice}, MaxTokens: 40, Temperature: 0.8, Seed: seed(3)})
		checkBilling(t, r)
		if r.usage.CompletionTokens == 0 || r.usage.PromptTokens < 40 {
			t.Fatalf("%s: usage %+v", choice, r.usage)
		}
		if cs := calls(t, r); len(cs) > 0 {
			checkCall(t, r, testTools)
		} else if r.text == "" {
			t.Fatalf("%s: no answer", choice)
		}
	}
}

// TestToolsRefusals: what the backend does not combine with tools is
// refused by name.
func TestToolsRefusals(t *testing.T) {
	b := testmodel.Backend(t, 1)
	format := &runtime.ResponseFormat{Type: runtime.FormatJSONObject}
	for _, c := range []struct {
		req   runtime.Request
		field string
	}{
		{runtime.Request{Messages: weatherQuestion, Tools: testTools, Format: format}, "response_format"},
		{runtime.Request{Messages: weatherQuestion, Tools: testTools, Continuation: `{"name"`}, "continuation"},
		{runtime.Request{Messages: weatherQuestion, Tools: testTools, LogitBias: map[int32]float64{512: 1}}, "logit_bias"},
		{runtime.Request{Messages: weatherQuestion, Tools: testTools, LogitBias: map[int32]float64{-1: 1}}, "logit_bias"},
		{runtime.Request{Messages: weatherQuestion, Logprobs: true, TopLogprobs: 21}, "top_logprobs"},
		{runtime.Request{Messages: weatherQuestion, PresencePenalty: 2.5}, "presence_penalty"},
		{runtime.Request{Messages: weatherQuestion, Tools: testTools, ToolChoice: runtime.ToolChoice{Mode: runtime.ToolChoiceNone}, Logprobs: true, TopLogprobs: 3}, ""},
	} {
		c.req.Model = testmodel.ModelID
		c.req.MaxTokens = 4
		s, err := b.Generate(t.Context(), c.req)
		if c.field == "" {
			if err != nil {
				t.Fatalf("%+v: %v", c.req, err)
			}
			s.Close()
			continue
		}
		var fe *runtime.FieldError
		if !errors.As(err, &fe) || fe.Field != c.field || !errors.Is(err, runtime.ErrInvalidRequest) {
			if s != nil {
				s.Close()
			}
			t.Fatalf("%+v: err %v; want a field error naming %s", c.req, err, c.field)
		}
	}
	// tool_choice none with a format: the tools are not used, the format is.
	format = &runtime.ResponseFormat{Type: runtime.FormatJSONSchema, Name: "ok", Schema: json.RawMessage(`{"type":"object","properties":{"ok":{"type":"boolean"}},"required":["ok"],"additionalProperties":false}`)}
	r := generate(t, b, runtime.Request{Messages: weatherQuestion, Tools: testTools, ToolChoice: runtime.ToolChoice{Mode: runtime.ToolChoiceNone}, Format: format, MaxTokens: 100})
	if !json.Valid([]byte(r.text)) || len(calls(t, r)) != 0 {
		t.Fatalf("tool_choice none, json_object: %q", r.text)
	}
}

// TestToolCallCutShort: max_tokens inside a call ends with length, the
// tokens billed, and a call whose arguments are what was written.
func TestToolCallCutShort(t *testing.T) {
	b := testmodel.Backend(t, 1)
	r := generate(t, b, runtime.Request{Messages: weatherQuestion, Tools: testTools, ToolChoice: runtime.ToolChoice{Mode: runtime.ToolChoiceFunction, Name: "get_weather"}, MaxTokens: 40})
	checkBilling(t, r)
	if r.finish != runtime.FinishLength || r.usage.CompletionTokens != 40 {
		t.Fatalf("finish %q, usage %+v", r.finish, r.usage)
	}
	cs := calls(t, r)
	if len(cs) != 1 || cs[0].Name != "get_weather" || !strings.HasPrefix(cs[0].Arguments, "{") {
		t.Fatalf("calls %+v", cs)
	}
}
