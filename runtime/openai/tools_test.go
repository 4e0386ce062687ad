package openai_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/openai"
)

// fakeUpstream answers GET /v1/models with vllmModels, replays a transcript
// to every POST to /v1/chat/completions, and keeps the body of every POST.
type fakeUpstream struct {
	*httptest.Server
	mu    sync.Mutex
	got   map[string][][]byte // by path
	reply []byte
}

func newFakeUpstream(t *testing.T, transcript string) *fakeUpstream {
	t.Helper()
	u := &fakeUpstream{got: map[string][][]byte{}}
	if transcript != "" {
		b, err := os.ReadFile(filepath.Join("testdata", transcript))
		if err != nil {
			t.Fatal(err)
		}
		u.reply = b
	}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.URL.Path == "/v1/models" {
			io.WriteString(w, vllmModels)
			return
		}
		b, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		u.got[r.URL.Path] = append(u.got[r.URL.Path], b)
		u.mu.Unlock()
		if r.URL.Path != "/v1/chat/completions" {
			http.Error(w, `{"detail":"Not Found"}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
		w.Write(u.reply)
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *fakeUpstream) bodies(path string) [][]byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.got[path])
}

// posts counts the generation and embeddings requests (not /api/show).
func (u *fakeUpstream) posts() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.got["/v1/chat/completions"]) + len(u.got["/v1/completions"]) + len(u.got["/v1/embeddings"])
}

// everything declares every capability of the chat API for vllmModel.
var everything = map[string]runtime.Model{vllmModel: {StructuredOutput: true, Tools: true, Logprobs: true, LogitBias: true, Images: true}}

const (
	png1 = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
	png2 = "data:image/jpeg;base64,/9j/4AAQSkZJRgABAQAAAQABAAD/2w=="
)

const weatherSchema = `{"type":"object","properties":{"city":{"type":"string"},"unit":{"enum":["celsius","fahrenheit"]}},"required":["city"]}`

// fullRequest uses every field the chat API forwards.
func fullRequest() runtime.Request {
	return runtime.Request{
		Model: vllmModel,
		Messages: []runtime.Message{
			{Role: "system", Content: "You are terse."},
			{Role: "user", Content: "Compare these: and this one?", Images: []runtime.Image{{URL: png1, Detail: "low", At: 0}, {URL: png2, At: 15}}},
			{Role: "assistant", ToolCalls: []runtime.ToolCall{{ID: "call_1", Name: "get_weather", Arguments: `{"city": "Paris"}`}}},
			{Role: "tool", ToolCallID: "call_1", Content: `{"temp": 21}`},
			{Role: "user", Content: "And in London?"},
		},
		MaxTokens: 64, Temperature: 0.5, TopP: 0.9, Stop: []string{"END"}, Seed: ptr(uint64(42)),
		Format: &runtime.ResponseFormat{Type: runtime.FormatJSONSchema, Name: "answer", Schema: json.RawMessage(`{"type":"object"}`), Strict: true},
		Tools: []runtime.Tool{
			{Name: "get_weather", Description: "The weather in a city.", Parameters: json.RawMessage(weatherSchema), Strict: true},
			{Name: "get_time"},
		},
		ToolChoice:     runtime.ToolChoice{Mode: runtime.ToolChoiceFunction, Name: "get_weather"},
		SingleToolCall: true,
		Logprobs:       true, TopLogprobs: 3,
		PresencePenalty: 0.5, FrequencyPenalty: -1.25,
		LogitBias: map[int32]float64{128009: -100, 15: 2.5},
	}
}

// fullRequestJSON is what the upstream must receive for fullRequest.
const fullRequestJSON = `{
	"model": "meta-llama/Llama-3.1-8B-Instruct",
	"messages": [
		{"role": "system", "content": "You are terse."},
		{"role": "user", "content": [
			{"type": "image_url", "image_url": {"url": "` + png1 + `", "detail": "low"}},
			{"type": "text", "text": "Compare these: "},
			{"type": "image_url", "image_url": {"url": "` + png2 + `"}},
			{"type": "text", "text": "and this one?"}]},
		{"role": "assistant", "content": null, "tool_calls": [
			{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
		{"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
		{"role": "user", "content": "And in London?"}],
	"max_tokens": 64, "temperature": 0.5, "top_p": 0.9, "stop": ["END"], "seed": 42,
	"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": true}},
	"tools": [
		{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.", "parameters": ` + weatherSchema + `, "strict": true}},
		{"type": "function", "function": {"name": "get_time"}}],
	"tool_choice": {"type": "function", "function": {"name": "get_weather"}},
	"parallel_tool_calls": false,
	"logprobs": true, "top_logprobs": 3,
	"presence_penalty": 0.5, "frequency_penalty": -1.25,
	"logit_bias": {"128009": -100, "15": 2.5},
	"stream": true, "stream_options": {"include_usage": true}
}`

// TestRequestForwardedIntact: a request using every field the chat API
// offers reaches an upstream that declared them all exactly as OpenAI's
// API spells it, field by field.
func TestRequestForwardedIntact(t *testing.T) {
	u := newFakeUpstream(t, "vllm_chat_tool_call.sse")
	b, err := openai.New(context.Background(), openai.Config{BaseURL: u.URL, Capabilities: everything})
	if err != nil {
		t.Fatal(err)
	}
	want := runtime.Model{ID: vllmModel, ContextLength: 8192, StructuredOutput: true, Tools: true, Logprobs: true, LogitBias: true, Images: true}
	if m := b.Models(); len(m) != 1 || m[0] != want {
		t.Fatalf("Models() = %+v; want %+v", m, want)
	}
	req := fullRequest()
	if err := req.Check(); err != nil {
		t.Fatalf("the test's request: %v", err)
	}
	if _, err := drain(t, b, req); err != nil {
		t.Fatal(err)
	}
	got := u.bodies("/v1/chat/completions")
	if len(got) != 1 {
		t.Fatalf("upstream got %d requests; want 1", len(got))
	}
	compareJSON(t, got[0], []byte(fullRequestJSON))

	// The other tool choices are strings; parallel_tool_calls is left to
	// the upstream unless the request limits the calls.
	for mode, wantChoice := range map[string]string{runtime.ToolChoiceAuto: `"auto"`, runtime.ToolChoiceNone: `"none"`, runtime.ToolChoiceRequired: `"required"`, "": ``} {
		req := runtime.Request{Model: vllmModel, Messages: []runtime.Message{{Role: "user", Content: "hi"}},
			Tools: []runtime.Tool{{Name: "f"}}, ToolChoice: runtime.ToolChoice{Mode: mode}}
		if _, err := drain(t, b, req); err != nil {
			t.Fatal(err)
		}
		got := u.bodies("/v1/chat/completions")
		var sent map[string]json.RawMessage
		if err := json.Unmarshal(got[len(got)-1], &sent); err != nil {
			t.Fatal(err)
		}
		if string(sent["tool_choice"]) != wantChoice || sent["parallel_tool_calls"] != nil {
			t.Errorf("mode %q: sent tool_choice %s, parallel_tool_calls %s; want %s and none", mode, sent["tool_choice"], sent["parallel_tool_calls"], wantChoice)
		}
		for _, k := range []string{"logprobs", "top_logprobs", "presence_penalty", "frequency_penalty", "logit_bias", "response_format"} {
			if sent[k] != nil {
				t.Errorf("mode %q: sent %s = %s; want it omitted", mode, k, sent[k])
			}
		}
	}
}

// compareJSON fails for each top-level field of got that differs from want.
func compareJSON(t *testing.T, got, want []byte) {
	t.Helper()
	var g, w map[string]any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("sent %s: %v", got, err)
	}
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatalf("the test's JSON: %v", err)
	}
	keys := map[string]bool{}
	for k := range g {
		keys[k] = true
	}
	for k := range w {
		keys[k] = true
	}
	sorted := make([]string, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	for _, k := range sorted {
		if !reflect.DeepEqual(g[k], w[k]) {
			gj, _ := json.Marshal(g[k])
			wj, _ := json.Marshal(w[k])
			t.Errorf("upstream got %s = %s; want %s", k, gj, wj)
		}
	}
}

// call is a tool call reassembled from deltas.
type call struct{ id, name, args string }

type toolResult struct {
	result
	calls    []call
	logprobs []runtime.TokenLogprob
	refusal  string
}

// drainAll reads a generation to its end, reassembling tool calls as an
// OpenAI client does.
func drainAll(t *testing.T, b runtime.Backend, req runtime.Request) (toolResult, error) {
	t.Helper()
	s, err := b.Generate(context.Background(), req)
	if err != nil {
		return toolResult{}, err
	}
	defer s.Close()
	var r toolResult
	for {
		d, err := s.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return r, err
		}
		r.text += d.Text
		r.tokens += d.Tokens
		r.refusal += d.Refusal
		r.logprobs = append(r.logprobs, d.Logprobs...)
		for _, tc := range d.ToolCalls {
			switch {
			case tc.Index == len(r.calls):
				if tc.ID == "" || tc.Name == "" {
					t.Fatalf("first piece of call %d has no id or name: %+v", tc.Index, tc)
				}
				r.calls = append(r.calls, call{tc.ID, tc.Name, tc.Arguments})
			case tc.Index < len(r.calls):
				if tc.ID != "" || tc.Name != "" {
					t.Errorf("later piece of call %d repeats id or name: %+v", tc.Index, tc)
				}
				r.calls[tc.Index].args += tc.Arguments
			default:
				t.Fatalf("piece of call %d after %d calls", tc.Index, len(r.calls))
			}
		}
	}
	r.usage, r.finish = s.Usage(), s.FinishReason()
	return r, nil
}

// TestRecordedVLLMToolCalls: vLLM's streamed tool calls (one, two in
// parallel) and logprobs come back as deltas that reassemble to the
// original calls, with finish reason tool_calls and the usage billed.
func TestRecordedVLLMToolCalls(t *testing.T) {
	chat := runtime.Request{Model: vllmModel, Messages: []runtime.Message{{Role: "user", Content: "Weather in Paris?"}},
		Tools: []runtime.Tool{{Name: "get_weather"}, {Name: "get_time"}}}
	withLogprobs := runtime.Request{Model: vllmModel, Messages: []runtime.Message{{Role: "user", Content: "Greet."}}, Logprobs: true, TopLogprobs: 2}
	top := func(tl ...any) []runtime.TopLogprob {
		var out []runtime.TopLogprob
		for i := 0; i < len(tl); i += 2 {
			out = append(out, runtime.TopLogprob{Token: tl[i].(string), Logprob: tl[i+1].(float64), Bytes: []byte(tl[i].(string))})
		}
		return out
	}
	for _, tc := range []struct {
		file     string
		req      runtime.Request
		text     string
		calls    []call
		logprobs []runtime.TokenLogprob
		usage    runtime.Usage
		finish   string
	}{
		{file: "vllm_chat_tool_call.sse", req: chat,
			calls:  []call{{"chatcmpl-tool-3e8f1b7c2a5d4e6f9b0c1d2e3f4a5b6c", "get_weather", `{"city": "Paris", "unit": "celsius"}`}},
			usage:  runtime.Usage{PromptTokens: 212, CompletionTokens: 23},
			finish: runtime.FinishToolCalls},
		{file: "vllm_chat_parallel_tool_calls.sse", req: chat,
			calls: []call{
				{"chatcmpl-tool-1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f", "get_weather", `{"city": "Paris"}`},
				{"chatcmpl-tool-9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c", "get_time", `{"timezone": "Europe/Paris"}`}},
			usage:  runtime.Usage{PromptTokens: 251, CompletionTokens: 41},
			finish: runtime.FinishToolCalls},
		{file: "vllm_chat_logprobs.sse", req: withLogprobs, text: "Hello, worldé",
			logprobs: []runtime.TokenLogprob{
				{Token: "Hello", Logprob: -0.0123, Bytes: []byte("Hello"), Top: top("Hello", -0.0123, "Hi", -4.51)},
				{Token: ",", Logprob: -0.2, Bytes: []byte(","), Top: top(",", -0.2, "!", -1.75)},
				{Token: " world", Logprob: -1.0625, Bytes: []byte(" world"), Top: top(" world", -1.0625, " there", -0.9)},
				{Token: "é", Logprob: -3.5, Bytes: []byte("é"), Top: top("é", -3.5, "e", -0.5)}},
			usage:  runtime.Usage{PromptTokens: 12, CompletionTokens: 4},
			finish: runtime.FinishStop},
	} {
		t.Run(tc.file, func(t *testing.T) {
			u := newFakeUpstream(t, tc.file)
			b, err := openai.New(context.Background(), openai.Config{BaseURL: u.URL, Capabilities: everything})
			if err != nil {
				t.Fatal(err)
			}
			r, err := drainAll(t, b, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if r.text != tc.text || !slices.Equal(r.calls, tc.calls) || r.finish != tc.finish || r.usage != tc.usage || r.tokens != tc.usage.CompletionTokens {
				t.Errorf("got text %q, calls %+v, finish %q, usage %+v, %d tokens in deltas;\nwant %q, %+v, %q, %+v",
					r.text, r.calls, r.finish, r.usage, r.tokens, tc.text, tc.calls, tc.finish, tc.usage)
			}
			if !reflect.DeepEqual(r.logprobs, tc.logprobs) {
				t.Errorf("logprobs %+v;\nwant %+v", r.logprobs, tc.logprobs)
			}
		})
	}
}

// TestUndeclaredRefused: a model that declared nothing is sent no field it
// did not offer; each request is refused with a FieldError naming the
// field, and the upstream receives nothing.
func TestUndeclaredRefused(t *testing.T) {
	u := newFakeUpstream(t, "vllm_chat_stream.sse")
	b, err := openai.New(context.Background(), openai.Config{BaseURL: u.URL})
	if err != nil {
		t.Fatal(err)
	}
	if m := b.Models(); len(m) != 1 || m[0] != (runtime.Model{ID: vllmModel, ContextLength: 8192}) {
		t.Fatalf("Models() = %+v; want no capabilities", m)
	}
	user := []runtime.Message{{Role: "user", Content: "hi"}}
	for _, tc := range []struct {
		field string
		req   runtime.Request
	}{
		{"tools", runtime.Request{Messages: user, Tools: []runtime.Tool{{Name: "f"}}}},
		{"tool_choice", runtime.Request{Messages: user, ToolChoice: runtime.ToolChoice{Mode: runtime.ToolChoiceRequired}}},
		{"messages[1].tool_calls", runtime.Request{Messages: append(slices.Clone(user), runtime.Message{Role: "assistant",
			ToolCalls: []runtime.ToolCall{{ID: "c", Name: "f", Arguments: "{}"}}})}},
		{"messages[1].role", runtime.Request{Messages: append(slices.Clone(user), runtime.Message{Role: "tool", ToolCallID: "c", Content: "1"})}},
		{"logprobs", runtime.Request{Messages: user, Logprobs: true}},
		{"logit_bias", runtime.Request{Messages: user, LogitBias: map[int32]float64{1: 1}}},
		{"messages[0].content", runtime.Request{Messages: []runtime.Message{{Role: "user", Content: "see", Images: []runtime.Image{{URL: png1}}}}}},
		{"response_format", runtime.Request{Messages: user, Format: &runtime.ResponseFormat{Type: runtime.FormatJSONObject}}},
	} {
		tc.req.Model = vllmModel
		_, err := drainAll(t, b, tc.req)
		var fe *runtime.FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field || !errors.Is(err, runtime.ErrInvalidRequest) {
			t.Errorf("%s to a model without it: %v; want a FieldError naming %s", tc.field, err, tc.field)
		}
	}
	// A raw completion takes no logprobs here, even from a model that has them.
	full, err := openai.New(context.Background(), openai.Config{BaseURL: u.URL, Capabilities: everything})
	if err != nil {
		t.Fatal(err)
	}
	_, err = drainAll(t, full, runtime.Request{Model: vllmModel, Prompt: "hi", Logprobs: true})
	if fe := (*runtime.FieldError)(nil); !errors.As(err, &fe) || fe.Field != "logprobs" {
		t.Errorf("logprobs with a prompt: %v; want a FieldError naming logprobs", err)
	}
	if n := u.posts(); n != 0 {
		t.Errorf("upstream got %d requests; want none", n)
	}
}

// TestMalformedToolCallsAreUpstreamErrors: a tool call the upstream botches
// fails the stream with ErrUpstream, bills nothing, and never panics.
func TestMalformedToolCallsAreUpstreamErrors(t *testing.T) {
	const head = `data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}` + "\n\n"
	first := `{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}`
	for _, tc := range []struct {
		name, calls, want string
	}{
		{"index out of order", `[{"index":1,"id":"call_1","function":{"name":"f","arguments":""}}]`, "index 1 after 0 calls"},
		{"huge index", `[{"index":99999999999999999999,"id":"c","function":{"name":"f"}}]`, "not a completion chunk"},
		{"negative index", `[{"index":-1,"id":"c","function":{"name":"f"}}]`, "index -1"},
		{"no id first", `[{"index":0,"type":"function","function":{"name":"f","arguments":"{}"}}]`, "without an id"},
		{"no name first", `[{"index":0,"id":"c","function":{"arguments":"{}"}}]`, "without a function name"},
		{"bad name", `[{"index":0,"id":"c","function":{"name":"a b"}}]`, "without a function name"},
		{"object arguments", `[{"index":0,"id":"c","function":{"name":"f","arguments":{"a":1}}}]`, "arguments are not a string"},
		{"other type", `[{"index":0,"id":"c","type":"code","function":{"name":"f"}}]`, "not function"},
		{"id changes", `[` + first + `,{"index":0,"id":"call_2","function":{"arguments":"{}"}}]`, "then"},
		{"name changes", `[` + first + `,{"index":0,"function":{"name":"g","arguments":"{}"}}]`, "then"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := head + `data: {"choices":[{"index":0,"delta":{"tool_calls":` + tc.calls + `},"finish_reason":null}]}` + "\n\n" +
				`data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}` + "\n\ndata: [DONE]\n\n"
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/v1/models" {
					io.WriteString(w, vllmModels)
					return
				}
				w.Header().Set("Content-Type", "text/event-stream")
				io.WriteString(w, body)
			}))
			defer srv.Close()
			b, err := openai.New(context.Background(), openai.Config{BaseURL: srv.URL, Capabilities: everything})
			if err != nil {
				t.Fatal(err)
			}
			s, err := b.Generate(context.Background(), runtime.Request{Model: vllmModel, Messages: []runtime.Message{{Role: "user", Content: "hi"}},
				Tools: []runtime.Tool{{Name: "f"}}})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			for err == nil {
				_, err = s.Recv()
			}
			if !errors.Is(err, runtime.ErrUpstream) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Recv = %v; want ErrUpstream with %q", err, tc.want)
			}
			if s.Usage() != (runtime.Usage{}) || s.FinishReason() != "" {
				t.Errorf("after the error: usage %+v, finish %q; want nothing billed", s.Usage(), s.FinishReason())
			}
		})
	}
}
