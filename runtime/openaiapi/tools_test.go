package openaiapi_test

import (
	"context"
	"encoding/json"
	"io"
	"math"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

// script is a fake runtime.Backend: it records the request it was given,
// refuses what its model does not serve (Model.Serves, as every backend's
// Generate does), and streams scripted deltas.
type script struct {
	model  runtime.Model
	deltas []runtime.Delta
	finish string
	embed  func(runtime.EmbedRequest) (runtime.Embeddings, error)

	mu  sync.Mutex
	got []runtime.Request
}

func (s *script) Models() []runtime.Model { return []runtime.Model{s.model} }
func (s *script) Close() error            { return nil }

func (s *script) Generate(ctx context.Context, req runtime.Request) (runtime.Stream, error) {
	s.mu.Lock()
	s.got = append(s.got, req)
	s.mu.Unlock()
	if req.Model != s.model.ID {
		return nil, runtime.ErrUnknownModel
	}
	if err := s.model.Serves(req); err != nil {
		return nil, err
	}
	finish := s.finish
	if finish == "" {
		finish = runtime.FinishStop
	}
	return &scriptStream{deltas: s.deltas, finish: finish}, nil
}

func (s *script) requests() []runtime.Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]runtime.Request(nil), s.got...)
}

type scriptStream struct {
	deltas []runtime.Delta
	n      int
	finish string
}

func (s *scriptStream) Recv() (runtime.Delta, error) {
	if len(s.deltas) == 0 {
		return runtime.Delta{}, io.EOF
	}
	d := s.deltas[0]
	s.deltas = s.deltas[1:]
	s.n += d.Tokens
	return d, nil
}
func (s *scriptStream) Usage() runtime.Usage {
	return runtime.Usage{PromptTokens: 5, CompletionTokens: s.n}
}
func (s *scriptStream) FinishReason() string { return s.finish }
func (s *scriptStream) Close() error         { return nil }

// everything is a model that declares every capability.
var everything = runtime.Model{ID: "m", ContextLength: 4096, StructuredOutput: true, Tools: true, Logprobs: true, LogitBias: true, Images: true}

const weatherSchema = `{"type":"object","properties":{"city":{"type":"string"}},"required":["city"],"additionalProperties":false}`

// fullChat uses every field a chat request may carry beyond text.
const fullChat = `{"model":"m","messages":[
	{"role":"system","content":"be brief"},
	{"role":"user","content":[{"type":"text","text":"look: "},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA","detail":"low"}},{"type":"text","text":" and "},{"type":"image_url","image_url":{"url":"data:image/jpeg;base64,BBBB"}}]},
	{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},{"index":1,"id":"call_2","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Rome\"}"}}]},
	{"role":"tool","tool_call_id":"call_1","content":"sunny"},
	{"role":"tool","tool_call_id":"call_2","content":[{"type":"text","text":"rain"}]}],
 "tools":[{"type":"function","function":{"name":"get_weather","description":"the weather in a city","parameters":` + weatherSchema + `,"strict":true}},
          {"type":"function","function":{"name":"now"}}],
 "tool_choice":{"type":"function","function":{"name":"get_weather"}},
 "parallel_tool_calls":false,"logprobs":true,"top_logprobs":2,"presence_penalty":0.5,"frequency_penalty":-0.5,
 "logit_bias":{"50256":-100,"7":0,"12":3.5}}`

var fullChatWant = runtime.Request{
	Model: "m",
	Messages: []runtime.Message{
		{Role: "system", Content: "be brief"},
		{Role: "user", Content: "look:  and ", Images: []runtime.Image{
			{URL: "data:image/png;base64,AAAA", Detail: "low", At: 6}, {URL: "data:image/jpeg;base64,BBBB", At: 11}}},
		{Role: "assistant", ToolCalls: []runtime.ToolCall{
			{ID: "call_1", Name: "get_weather", Arguments: `{"city":"Paris"}`}, {ID: "call_2", Name: "get_weather", Arguments: `{"city":"Rome"}`}}},
		{Role: "tool", ToolCallID: "call_1", Content: "sunny"},
		{Role: "tool", ToolCallID: "call_2", Content: "rain"},
	},
	Temperature: 1,
	Tools: []runtime.Tool{
		{Name: "get_weather", Description: "the weather in a city", Parameters: json.RawMessage(weatherSchema), Strict: true},
		{Name: "now"},
	},
	ToolChoice:       runtime.ToolChoice{Mode: runtime.ToolChoiceFunction, Name: "get_weather"},
	SingleToolCall:   true,
	Logprobs:         true,
	TopLogprobs:      2,
	PresencePenalty:  0.5,
	FrequencyPenalty: -0.5,
	LogitBias:        map[int32]float64{50256: -100, 12: 3.5},
}

// goldenTools: the capability fields, decoded into the runtime request.
var goldenTools = []struct {
	body string
	want runtime.Request
}{
	{fullChat, fullChatWant},
	{chatWith(`,"tools":[{"type":"function","function":{"name":"f","parameters":null}}],"tool_choice":"required","parallel_tool_calls":true`),
		runtime.Request{Model: "m", Messages: []runtime.Message{{Role: "user", Content: "hi"}}, Temperature: 1,
			Tools: []runtime.Tool{{Name: "f"}}, ToolChoice: runtime.ToolChoice{Mode: runtime.ToolChoiceRequired}}},
	{chatWith(`,"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"none"`),
		runtime.Request{Model: "m", Messages: []runtime.Message{{Role: "user", Content: "hi"}}, Temperature: 1,
			Tools: []runtime.Tool{{Name: "f"}}, ToolChoice: runtime.ToolChoice{Mode: runtime.ToolChoiceNone}}},
	// Without tools, "auto" and "none" are the default and parallel_tool_calls asks for nothing.
	{chatWith(`,"tools":[],"tool_choice":"auto","parallel_tool_calls":false`),
		runtime.Request{Model: "m", Messages: []runtime.Message{{Role: "user", Content: "hi"}}, Temperature: 1}},
	{chatWith(`,"logprobs":true`),
		runtime.Request{Model: "m", Messages: []runtime.Message{{Role: "user", Content: "hi"}}, Temperature: 1, Logprobs: true}},
	{chatWith(`,"logit_bias":{"0":1,"2147483647":-1}`),
		runtime.Request{Model: "m", Messages: []runtime.Message{{Role: "user", Content: "hi"}}, Temperature: 1,
			LogitBias: map[int32]float64{0: 1, 2147483647: -1}}},
	// An image alone, and a schema written loosely (compacted as the gateway forwards it).
	{`{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/webp;base64,AA==","detail":"high"}}]}],
	  "tools":[{"type":"function","function":{"name":"f","parameters": { "type" : "object" }}}]}`,
		runtime.Request{Model: "m", Messages: []runtime.Message{{Role: "user", Images: []runtime.Image{{URL: "data:image/webp;base64,AA==", Detail: "high"}}}},
			Temperature: 1, Tools: []runtime.Tool{{Name: "f", Parameters: json.RawMessage(`{"type":"object"}`)}}}},
}

func TestDecodeTools(t *testing.T) {
	for _, g := range goldenTools {
		_, got, err := openaiapi.DecodeChatRequest(strings.NewReader(g.body))
		if err != nil || !reflect.DeepEqual(got, g.want) {
			t.Errorf("DecodeChatRequest(%s)\n = %+v, %v\nwant %+v", g.body, got, err, g.want)
		}
	}
	// The completion endpoint honours the penalties and logit_bias.
	_, got, err := openaiapi.DecodeCompletionRequest(strings.NewReader(completionWith(`,"presence_penalty":1,"frequency_penalty":2,"logit_bias":{"3":-4}`)))
	want := runtime.Request{Model: "m", Prompt: "hi", Temperature: 1, PresencePenalty: 1, FrequencyPenalty: 2, LogitBias: map[int32]float64{3: -4}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("completion with penalties = %+v, %v; want %+v", got, err, want)
	}
}

// A request with every capability reaches the backend as decoded; a model
// that lacks one refuses the request with a 400 naming the field.
func TestCapabilitiesOverHTTP(t *testing.T) {
	b := &script{model: everything, deltas: []runtime.Delta{{Text: "ok", Tokens: 1}}}
	srv := httptest.NewServer(openaiapi.NewHandler(b))
	defer srv.Close()
	resp := post(t, srv.URL+"/v1/chat/completions", fullChat)
	if resp.StatusCode != 200 {
		t.Fatalf("full request: %d", resp.StatusCode)
	}
	if got := b.requests(); len(got) != 1 || !reflect.DeepEqual(got[0], fullChatWant) {
		t.Errorf("backend was given %+v; want %+v", got, fullChatWant)
	}
	image := `{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AA=="}}]}]}`
	for _, tc := range []struct {
		lacks func(*runtime.Model)
		body  string
		param string
	}{
		{func(m *runtime.Model) { m.Tools = false }, chatWith(`,"tools":[{"type":"function","function":{"name":"f"}}]`), "tools"},
		{func(m *runtime.Model) { m.Tools = false }, fullChat, "tools"},
		{func(m *runtime.Model) { m.Tools = false }, `{"model":"m","messages":[{"role":"user","content":"x"},{"role":"tool","tool_call_id":"c","content":"y"}]}`, "messages[1].role"},
		{func(m *runtime.Model) { m.Logprobs = false }, chatWith(`,"logprobs":true`), "logprobs"},
		{func(m *runtime.Model) { m.LogitBias = false }, chatWith(`,"logit_bias":{"1":1}`), "logit_bias"},
		{func(m *runtime.Model) { m.LogitBias = false }, completionWith(`,"logit_bias":{"1":1}`), "logit_bias"},
		{func(m *runtime.Model) { m.Images = false }, image, "messages[0].content"},
		{func(m *runtime.Model) { m.StructuredOutput = false }, chatWith(`,"response_format":{"type":"json_object"}`), "response_format"},
	} {
		m := everything
		tc.lacks(&m)
		b := &script{model: m}
		srv := httptest.NewServer(openaiapi.NewHandler(b))
		path := "/v1/chat/completions"
		if strings.Contains(tc.body, `"prompt"`) {
			path = "/v1/completions"
		}
		resp := post(t, srv.URL+path, tc.body)
		e := decode[openaiapi.ErrorResponse](t, resp.Body)
		if resp.StatusCode != 400 || e.Error.Type != "invalid_request_error" || e.Error.Param == nil || *e.Error.Param != tc.param {
			t.Errorf("%.60s on a model without the capability: %d %+v; want a 400 naming %s", tc.body, resp.StatusCode, e.Error, tc.param)
		}
		srv.Close()
	}
	// A zero logit bias asks for nothing, so even a model without logit_bias serves it.
	m := everything
	m.LogitBias = false
	b = &script{model: m}
	srv2 := httptest.NewServer(openaiapi.NewHandler(b))
	defer srv2.Close()
	if resp := post(t, srv2.URL+"/v1/chat/completions", chatWith(`,"logit_bias":{"50256":0}`)); resp.StatusCode != 200 {
		t.Errorf("zero logit_bias: %d; want 200", resp.StatusCode)
	}
}

// toolDeltas stream two calls, the first in three pieces.
var toolDeltas = []runtime.Delta{
	{ToolCalls: []runtime.ToolCallDelta{{Index: 0, ID: "call_a", Name: "get_weather"}}, Tokens: 2},
	{ToolCalls: []runtime.ToolCallDelta{{Index: 0, Arguments: `{"city":`}}, Tokens: 2},
	{ToolCalls: []runtime.ToolCallDelta{{Index: 0, Arguments: `"Paris"}`}, {Index: 1, ID: "call_b", Name: "now", Arguments: "{}"}}, Tokens: 3},
}

var toolCallsWant = []any{
	map[string]any{"id": "call_a", "type": "function", "function": map[string]any{"name": "get_weather", "arguments": `{"city":"Paris"}`}},
	map[string]any{"id": "call_b", "type": "function", "function": map[string]any{"name": "now", "arguments": "{}"}},
}

func chatAnswer(t *testing.T, b runtime.Backend, body string) map[string]any {
	t.Helper()
	srv := httptest.NewServer(openaiapi.NewHandler(b))
	defer srv.Close()
	resp := post(t, srv.URL+"/v1/chat/completions", body)
	ans := decode[map[string]any](t, resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("%s: %d %v", body, resp.StatusCode, ans)
	}
	return ans
}

// chatChunks answers body streamed, and returns each chunk as a generic map.
func chatChunks(t *testing.T, b runtime.Backend, body string) []map[string]any {
	t.Helper()
	srv := httptest.NewServer(openaiapi.NewHandler(b))
	defer srv.Close()
	resp := post(t, srv.URL+"/v1/chat/completions", body)
	data, done := events(t, resp.Body)
	if resp.StatusCode != 200 || !done {
		t.Fatalf("%s: %d, [DONE] %v", body, resp.StatusCode, done)
	}
	var out []map[string]any
	for _, d := range data {
		var m map[string]any
		if err := json.Unmarshal(d, &m); err != nil {
			t.Fatalf("chunk %s: %v", d, err)
		}
		out = append(out, m)
	}
	return out
}

func choice0(t *testing.T, m map[string]any) map[string]any {
	t.Helper()
	cs, _ := m["choices"].([]any)
	if len(cs) != 1 {
		t.Fatalf("choices of %v", m)
	}
	return cs[0].(map[string]any)
}

// hasNull reports whether m holds key with the value null.
func hasNull(m map[string]any, key string) bool {
	v, ok := m[key]
	return ok && v == nil
}

func TestToolCallsAnswer(t *testing.T) {
	tools := chatWith(`,"tools":[{"type":"function","function":{"name":"get_weather"}},{"type":"function","function":{"name":"now"}}]`)
	b := &script{model: everything, deltas: toolDeltas, finish: runtime.FinishToolCalls}

	t.Run("whole", func(t *testing.T) {
		c := choice0(t, chatAnswer(t, b, tools))
		msg := c["message"].(map[string]any)
		if msg["role"] != "assistant" || !hasNull(msg, "content") || !hasNull(msg, "refusal") || !reflect.DeepEqual(msg["tool_calls"], toolCallsWant) {
			t.Errorf("message = %v; want content null, refusal null, tool_calls %v", msg, toolCallsWant)
		}
		if c["finish_reason"] != "tool_calls" || !hasNull(c, "logprobs") {
			t.Errorf("choice = %v; want finish_reason tool_calls, logprobs null", c)
		}
	})

	t.Run("streamed", func(t *testing.T) {
		chunks := chatChunks(t, b, strings.TrimSuffix(tools, "}")+`,"stream":true}`)
		// Assemble the calls as the openai npm SDK's stream helper does,
		// and check each piece's keys: id, type and name in the first piece
		// of a call only.
		calls := map[float64]map[string]any{}
		var finish any
		for i, ch := range chunks {
			c := choice0(t, ch)
			if f := c["finish_reason"]; f != nil {
				finish = f
			}
			delta := c["delta"].(map[string]any)
			if i > 0 && delta["content"] != nil {
				t.Errorf("chunk %d has content: %v", i, delta)
			}
			pieces, _ := delta["tool_calls"].([]any)
			for _, p := range pieces {
				p := p.(map[string]any)
				idx := p["index"].(float64)
				fn := p["function"].(map[string]any)
				call, seen := calls[idx]
				if !seen {
					if p["id"] == nil || p["type"] != "function" || fn["name"] == nil {
						t.Errorf("first piece of call %v: %v; want id, type and function.name", idx, p)
					}
					call = map[string]any{"id": p["id"], "type": p["type"], "function": map[string]any{"name": fn["name"], "arguments": ""}}
					calls[idx] = call
				} else if _, ok := p["id"]; ok || p["type"] != nil || fn["name"] != nil {
					t.Errorf("later piece of call %v repeats id, type or name: %v", idx, p)
				}
				f := call["function"].(map[string]any)
				f["arguments"] = f["arguments"].(string) + fn["arguments"].(string)
			}
		}
		got := []any{calls[0], calls[1]}
		if finish != "tool_calls" || len(calls) != 2 || !reflect.DeepEqual(got, toolCallsWant) {
			t.Errorf("streamed calls %v, finish %v; want %v, tool_calls", got, finish, toolCallsWant)
		}
	})
}

func TestRefusalAnswer(t *testing.T) {
	b := &script{model: everything, deltas: []runtime.Delta{{Refusal: "I can't ", Tokens: 2}, {Refusal: "help with that.", Tokens: 3}}}
	msg := choice0(t, chatAnswer(t, b, chatWith("")))["message"].(map[string]any)
	if !hasNull(msg, "content") || msg["refusal"] != "I can't help with that." {
		t.Errorf("message = %v; want content null and the refusal", msg)
	}
	var refusal string
	for _, ch := range chatChunks(t, b, chatWith(`,"stream":true`)) {
		if cs := ch["choices"].([]any); len(cs) == 1 {
			if r, ok := cs[0].(map[string]any)["delta"].(map[string]any)["refusal"].(string); ok {
				refusal += r
			}
		}
	}
	if refusal != "I can't help with that." {
		t.Errorf("streamed refusal %q", refusal)
	}
	// Text answers keep "refusal": null beside their content.
	b = &script{model: everything, deltas: []runtime.Delta{{Text: "hi", Tokens: 1}}}
	msg = choice0(t, chatAnswer(t, b, chatWith("")))["message"].(map[string]any)
	if msg["content"] != "hi" || !hasNull(msg, "refusal") {
		t.Errorf("message = %v; want content hi, refusal null", msg)
	}
	if _, ok := msg["tool_calls"]; ok {
		t.Errorf("message = %v has tool_calls", msg)
	}
}

func TestLogprobsAnswer(t *testing.T) {
	b := &script{model: everything, deltas: []runtime.Delta{
		{Text: "Hi", Tokens: 1, Logprobs: []runtime.TokenLogprob{{Token: "Hi", Logprob: -0.25,
			Top: []runtime.TopLogprob{{Token: "Hi", Logprob: -0.25}, {Token: "Hey", Logprob: -1.5, Bytes: []byte("Hey")}}}}},
		{Text: "\u00e9", Tokens: 2, Logprobs: []runtime.TokenLogprob{
			{Token: "\ufffd", Logprob: math.Inf(-1), Bytes: []byte{0xc3}, Top: []runtime.TopLogprob{}},
			{Token: "\ufffd", Logprob: math.NaN(), Bytes: []byte{0xa9}}}},
	}}
	want := []any{
		map[string]any{"token": "Hi", "logprob": -0.25, "bytes": []any{72.0, 105.0}, "top_logprobs": []any{
			map[string]any{"token": "Hi", "logprob": -0.25, "bytes": []any{72.0, 105.0}},
			map[string]any{"token": "Hey", "logprob": -1.5, "bytes": []any{72.0, 101.0, 121.0}}}},
		map[string]any{"token": "\ufffd", "logprob": -9999.0, "bytes": []any{195.0}, "top_logprobs": []any{}},
		map[string]any{"token": "\ufffd", "logprob": -9999.0, "bytes": []any{169.0}, "top_logprobs": []any{}},
	}
	body := chatWith(`,"logprobs":true,"top_logprobs":2`)
	c := choice0(t, chatAnswer(t, b, body))
	lp, _ := c["logprobs"].(map[string]any)
	if !reflect.DeepEqual(lp["content"], want) || !hasNull(lp, "refusal") {
		t.Errorf("logprobs = %v; want content %v, refusal null", c["logprobs"], want)
	}
	var streamed []any
	for i, ch := range chatChunks(t, b, strings.TrimSuffix(body, "}")+`,"stream":true}`) {
		c := choice0(t, ch)
		if lp, ok := c["logprobs"].(map[string]any); ok {
			if !hasNull(lp, "refusal") {
				t.Errorf("chunk %d logprobs %v; want refusal null", i, lp)
			}
			streamed = append(streamed, lp["content"].([]any)...)
		} else if !hasNull(c, "logprobs") {
			t.Errorf("chunk %d: %v; want logprobs an object or null", i, c)
		}
	}
	if !reflect.DeepEqual(streamed, want) {
		t.Errorf("streamed logprobs %v; want %v", streamed, want)
	}
	// Asked for, with no tokens: an empty list, not null.
	b = &script{model: everything}
	c = choice0(t, chatAnswer(t, b, body))
	if lp, _ := c["logprobs"].(map[string]any); lp == nil || lp["content"] == nil || len(lp["content"].([]any)) != 0 {
		t.Errorf("logprobs of an empty answer = %v; want {content: []}", c["logprobs"])
	}
}

// The answer's message decodes back (as a client decodes it) and encodes
// as a request's history the decoder takes back.
func TestMessageRoundTrip(t *testing.T) {
	req, rr, err := openaiapi.DecodeChatRequest(strings.NewReader(fullChat))
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	var generic map[string]any
	_ = json.Unmarshal(b, &generic)
	msgs := generic["messages"].([]any)
	if m := msgs[2].(map[string]any); !hasNull(m, "content") {
		t.Errorf("assistant message with tool calls encodes as %v; want content null", m)
	}
	if parts := msgs[1].(map[string]any)["content"].([]any); len(parts) != 4 {
		t.Errorf("user message with images encodes as %v; want 4 parts", parts)
	}
	_, rr2, err := openaiapi.DecodeChatRequest(strings.NewReader(string(b)))
	if err != nil || !reflect.DeepEqual(rr, rr2) {
		t.Errorf("round trip of %s: %+v, %v; want %+v", b, rr2, err, rr)
	}
}
