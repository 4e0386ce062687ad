package openaiapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

// chatWith and completionWith are a plain request with extra top-level fields.
func chatWith(extra string) string {
	return `{"model":"m","messages":[{"role":"user","content":"hi"}]` + extra + `}`
}

func completionWith(extra string) string {
	return `{"model":"m","prompt":"hi"` + extra + `}`
}

// chatMessage is a plain request whose one message has extra fields.
func chatMessage(role, extra string) string {
	return `{"model":"m","messages":[{"role":"` + role + `","content":"hi"` + extra + `}]}`
}

// refusedFields: each asks for something the network does not do, and is
// refused with a 400 naming the field, never answered as if it asked for less.
var refusedFields = []struct {
	chat        bool
	body, param string
	code        string
}{
	// Tools other than functions, and the legacy functions API.
	{true, chatWith(`,"tools":[{"type":"custom","custom":{"name":"f"}}]`), "tools[0].type", "unsupported_value"},
	{true, chatWith(`,"tools":[{"type":"function","function":{"name":"f"}},{"type":"web_search"}]`), "tools[1].type", "unsupported_value"},
	{true, chatWith(`,"tools":[{"function":{"name":"f"}}]`), "tools[0].type", ""},
	{true, chatWith(`,"tools":[{"type":"function","function":{"name":"f","extra":1}}]`), "tools[0].function.extra", "unknown_parameter"},
	{true, chatWith(`,"tools":[{"type":"function","function":{"name":"f"},"cache_control":{}}]`), "tools[0].cache_control", "unknown_parameter"},
	{true, chatWith(`,"tool_choice":"any"`), "tool_choice", "unsupported_value"},
	{true, chatWith(`,"tool_choice":{"type":"allowed_tools","allowed_tools":{}}`), "tool_choice.type", "unsupported_value"},
	{true, chatWith(`,"tool_choice":{"type":"function","function":{"name":"f","x":1}}`), "tool_choice.function.x", "unknown_parameter"},
	{true, chatWith(`,"tool_choice":"required"`), "tool_choice", ""},                                                // without tools
	{true, chatWith(`,"tool_choice":{"type":"function","function":{"name":"f"}}`), "tool_choice.function.name", ""}, // not a tool
	{true, chatWith(`,"parallel_tool_calls":"yes"`), "parallel_tool_calls", ""},
	{true, chatWith(`,"functions":[{"name":"f"}]`), "functions", "unsupported_parameter"},
	{true, chatWith(`,"function_call":{"name":"f"}`), "function_call", "unsupported_parameter"},
	{true, chatWith(`,"response_format":{"type":"text","extra":1}`), "response_format.extra", "unknown_parameter"},
	{true, chatWith(`,"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{},"description":"be brief"}}`), "response_format.json_schema.description", "unsupported_parameter"},
	{true, chatWith(`,"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{},"extra":1}}`), "response_format.json_schema.extra", "unknown_parameter"},
	{true, chatWith(`,"response_format":{"type":"xml"}`), "response_format.type", "unsupported_value"},
	{true, chatWith(`,"top_logprobs":3`), "top_logprobs", ""}, // without logprobs
	{true, chatWith(`,"logprobs":true,"top_logprobs":21`), "top_logprobs", ""},
	{true, chatWith(`,"logprobs":true,"top_logprobs":-1`), "top_logprobs", ""},
	{true, chatWith(`,"logprobs":true,"top_logprobs":1.5`), "top_logprobs", ""},
	{true, chatWith(`,"logprobs":"yes"`), "logprobs", ""},
	{true, chatWith(`,"presence_penalty":2.5`), "presence_penalty", ""},
	{true, chatWith(`,"frequency_penalty":-3`), "frequency_penalty", ""},
	{true, chatWith(`,"frequency_penalty":"0"`), "frequency_penalty", ""},
	{true, chatWith(`,"logit_bias":{"x1":5}`), "logit_bias", ""},
	{true, chatWith(`,"logit_bias":{"+1":5}`), "logit_bias", ""},
	{true, chatWith(`,"logit_bias":{"1.0":5}`), "logit_bias", ""},
	{true, chatWith(`,"logit_bias":{"":5}`), "logit_bias", ""},
	{true, chatWith(`,"logit_bias":{"2147483648":5}`), "logit_bias", ""},
	{true, chatWith(`,"logit_bias":{"99999999999999999999":5}`), "logit_bias", ""},
	{true, chatWith(`,"logit_bias":{"-1":5}`), "logit_bias", ""},
	{true, chatWith(`,"logit_bias":{"1":5,"01":5}`), "logit_bias", ""},
	{true, chatWith(`,"logit_bias":{"1":101}`), "logit_bias", ""},
	{true, chatWith(`,"logit_bias":{"1":"5"}`), "logit_bias", ""},
	{true, chatWith(`,"logit_bias":[1]`), "logit_bias", ""},
	{true, chatWith(`,"n":2`), "n", "unsupported_value"},
	{true, chatWith(`,"store":true`), "store", "unsupported_parameter"},
	{true, chatWith(`,"metadata":{"k":"v"}`), "metadata", "unsupported_parameter"},
	{true, chatWith(`,"modalities":["text","audio"]`), "modalities", "unsupported_parameter"},
	{true, chatWith(`,"audio":{"voice":"alloy","format":"wav"}`), "audio", "unsupported_parameter"},
	{true, chatWith(`,"prediction":{"type":"content","content":"x"}`), "prediction", "unsupported_parameter"},
	{true, chatWith(`,"reasoning_effort":"low"`), "reasoning_effort", "unsupported_parameter"},
	{true, chatWith(`,"verbosity":"low"`), "verbosity", "unsupported_parameter"},
	{true, chatWith(`,"service_tier":"flex"`), "service_tier", "unsupported_parameter"},
	{true, chatWith(`,"web_search_options":{}`), "web_search_options", "unsupported_parameter"},
	{true, chatWith(`,"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}`), "stream_options.continuous_usage_stats", "unsupported_parameter"},
	{true, chatWith(`,"stream":true,"stream_options":{"include_obfuscation":true}`), "stream_options.include_obfuscation", "unsupported_parameter"},
	{true, chatWith(`,"add_generation_prompt":false`), "add_generation_prompt", "unsupported_parameter"},
	// Unknown keys, including a known one in the wrong case and vLLM's
	// sampling extensions, are refused too.
	{true, chatWith(`,"top_k":40`), "top_k", "unknown_parameter"},
	{true, chatWith(`,"repetition_penalty":1.1`), "repetition_penalty", "unknown_parameter"},
	{true, chatWith(`,"Tools":[]`), "Tools", "unknown_parameter"},
	{true, chatWith(`,"z":1,"":1,"tools":[{}]`), "", "unknown_parameter"}, // the least key, "" included
	{true, chatWith(`,"` + strings.Repeat("k", 63) + `é":1`), strings.Repeat("k", 63) + "…", "unknown_parameter"},
	{true, chatWith(`,"stream_options":{"include_usage":true,"extra":1}`), "stream_options.extra", "unknown_parameter"},
	// Inside messages: what the prompt cannot hold.
	{true, chatMessage("user", `,"name":"alice"`), "messages[0].name", "unsupported_parameter"},
	{true, chatMessage("assistant", `,"function_call":{"name":"f","arguments":"{}"}`), "messages[0].function_call", "unsupported_parameter"},
	{true, chatMessage("assistant", `,"tool_calls":[{"id":"c1","type":"custom","custom":{"name":"f","input":""}}]`), "messages[0].tool_calls[0].type", "unsupported_value"},
	{true, chatMessage("assistant", `,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}","x":1}}]`), "messages[0].tool_calls[0].function.x", "unknown_parameter"},
	{true, chatMessage("assistant", `,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{"}}]`), "messages[0].tool_calls[0].function.arguments", ""},
	{true, chatMessage("assistant", `,"tool_calls":[{"id":"","type":"function","function":{"name":"f","arguments":"{}"}}]`), "messages[0].tool_calls[0].id", ""},
	{true, chatMessage("assistant", `,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f g","arguments":"{}"}}]`), "messages[0].tool_calls[0].function.name", ""},
	{true, chatMessage("user", `,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]`), "messages[0].tool_calls", ""},
	{true, chatMessage("tool", ``), "messages[0].tool_call_id", ""},
	{true, chatMessage("user", `,"tool_call_id":"c1"`), "messages[0].tool_call_id", ""},
	{true, chatMessage("assistant", `,"refusal":"I can't"`), "messages[0].refusal", "unsupported_parameter"},
	{true, chatMessage("assistant", `,"audio":{"id":"a1"}`), "messages[0].audio", "unsupported_parameter"},
	{true, chatMessage("user", `,"reasoning_content":"hmm"`), "messages[0].reasoning_content", "unknown_parameter"},
	{true, `{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"user","content":"x","name":"bob"}]}`, "messages[1].name", "unsupported_parameter"},
	{true, `{"model":"m","messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{}}]}]}`, "messages[0].content[0].type", "unsupported_value"},
	{true, `{"model":"m","messages":[{"role":"user","content":[{"type":"file","file":{"file_id":"f"}}]}]}`, "messages[0].content[0].type", "unsupported_value"},
	{true, `{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"https://example.com/cat.png"}}]}]}`, "messages[0].content[1].image_url.url", "unsupported_value"},
	{true, `{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"HTTP://example.com/cat.png"}}]}]}`, "messages[0].content[0].image_url.url", "unsupported_value"},
	{true, `{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:,"}}]}]}`, "messages[0].content[0].image_url.url", ""},
	{true, `{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":"data:image/png;base64,AA=="}]}]}`, "messages[0].content[0].image_url", ""},
	{true, `{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AA==","detail":"ultra"}}]}]}`, "messages[0].content.images[0].detail", ""},
	{true, `{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AA==","x":1}}]}]}`, "messages[0].content[0].image_url.x", "unknown_parameter"},
	{true, `{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AA=="},"text":"a"}]}]}`, "messages[0].content[0].text", "unknown_parameter"},
	{true, `{"model":"m","messages":[{"role":"assistant","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AA=="}}]}]}`, "messages[0].content", ""},
	{true, `{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a","cache_control":{"type":"ephemeral"}}]}]}`, "messages[0].content[0].cache_control", "unknown_parameter"},
	{true, `{"model":"m","messages":[{"role":"user","content":[{"text":"a"}]}]}`, "messages[0].content[0].type", ""},

	{false, completionWith(`,"best_of":2`), "best_of", "unsupported_parameter"},
	{false, completionWith(`,"suffix":" the end"`), "suffix", "unsupported_parameter"},
	{false, completionWith(`,"logprobs":0`), "logprobs", "unsupported_parameter"},
	{false, completionWith(`,"logprobs":5`), "logprobs", "unsupported_parameter"},
	{false, completionWith(`,"echo":true`), "echo", "unsupported_parameter"},
	{false, completionWith(`,"presence_penalty":3`), "presence_penalty", ""},
	{false, completionWith(`,"logit_bias":{"a":1}`), "logit_bias", ""},
	{false, completionWith(`,"tools":[]`), "tools", "unknown_parameter"},
	{false, completionWith(`,"messages":[]`), "messages", "unknown_parameter"},
	{false, completionWith(`,"stream":true,"stream_options":{"continuous_usage_stats":true}`), "stream_options.continuous_usage_stats", "unsupported_parameter"},
}

func TestRefusedFields(t *testing.T) {
	for _, tc := range refusedFields {
		var err error
		if tc.chat {
			_, _, err = openaiapi.DecodeChatRequest(strings.NewReader(tc.body))
		} else {
			_, _, err = openaiapi.DecodeCompletionRequest(strings.NewReader(tc.body))
		}
		var e *openaiapi.Error
		if !errors.As(err, &e) || e.Status != 400 || e.Type != "invalid_request_error" || e.Param != tc.param ||
			e.Code != tc.code || !strings.Contains(e.Message, tc.param) {
			t.Errorf("decode %s = %v; want a 400 with param %q, code %q", tc.body, err, tc.param, tc.code)
		}
	}
}

// neutralFields: each field present with a value that asks for nothing beyond
// the default (what SDKs send) is accepted, and the request is the same as
// without it.
var neutralFields = []struct {
	chat bool
	body string
}{
	// LangChain's ChatOpenAI defaults.
	{true, chatWith(`,"presence_penalty":0,"frequency_penalty":0,"n":1,"top_p":1,"temperature":0.7,"stream":false`)},
	{true, chatWith(`,"tools":[],"tool_choice":"none","functions":[],"function_call":"auto","parallel_tool_calls":true`)},
	{true, chatWith(`,"tools":null,"tool_choice":null,"parallel_tool_calls":false,"functions":null,"function_call":"none"`)},
	{true, chatWith(`,"tool_choice":"auto"`)},
	{true, chatWith(`,"response_format":{"type":"text"}`)},
	{true, chatWith(`,"response_format":null`)},
	{true, chatWith(`,"logprobs":false,"top_logprobs":0`)},
	{true, chatWith(`,"logprobs":null,"top_logprobs":null`)},
	{true, chatWith(`,"presence_penalty":0.0,"frequency_penalty":-0`)},
	{true, chatWith(`,"logit_bias":{}`)},
	{true, chatWith(`,"logit_bias":{"50256":0}`)},
	{true, chatWith(`,"store":false,"metadata":{}`)},
	{true, chatWith(`,"modalities":["text"]`)},
	{true, chatWith(`,"modalities":[]`)},
	{true, chatWith(`,"audio":null,"prediction":null,"reasoning_effort":null,"verbosity":null,"web_search_options":null`)},
	{true, chatWith(`,"service_tier":"auto"`)},
	{true, chatWith(`,"service_tier":"default"`)},
	{true, chatWith(`,"user":"user-1234","safety_identifier":"h","prompt_cache_key":"k"`)},
	{true, chatWith(`,"user":null`)},
	{true, chatWith(`,"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":false,"include_obfuscation":false}`)},
	{true, chatWith(`,"stream_options":null`)},
	{true, chatWith(`,"add_generation_prompt":true`)},
	// A message as the SDKs echo an answer back: its empty fields.
	{true, chatMessage("assistant", `,"refusal":null,"tool_calls":[],"function_call":null,"audio":null,"annotations":[],"name":""`)},
	{true, chatMessage("user", `,"tool_call_id":""`)},
	{true, chatMessage("user", `,"name":null`)},

	{false, completionWith(`,"best_of":1,"n":1,"echo":false,"suffix":null,"logprobs":null,"presence_penalty":0,"frequency_penalty":0,"logit_bias":{},"user":"u"`)},
	{false, completionWith(`,"suffix":""`)},
	{false, completionWith(`,"stream":true,"stream_options":{"include_usage":false,"include_obfuscation":null}`)},
}

func TestNeutralFieldsAccepted(t *testing.T) {
	_, chat, err := openaiapi.DecodeChatRequest(strings.NewReader(chatWith("")))
	if err != nil {
		t.Fatal(err)
	}
	_, completion, err := openaiapi.DecodeCompletionRequest(strings.NewReader(completionWith("")))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range neutralFields {
		var got, want runtime.Request
		if tc.chat {
			_, got, err = openaiapi.DecodeChatRequest(strings.NewReader(tc.body))
			want = chat
			if strings.Contains(tc.body, `"assistant"`) || strings.Contains(tc.body, `"tool"`) {
				want = runtime.Request{Model: "m", Messages: []runtime.Message{{Role: got.Messages[0].Role, Content: "hi"}}, Temperature: 1}
			}
		} else {
			_, got, err = openaiapi.DecodeCompletionRequest(strings.NewReader(tc.body))
			want = completion
		}
		if strings.Contains(tc.body, `"temperature":0.7`) {
			want.Temperature, want.TopP = 0.7, 1
		}
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("decode %s = %+v, %v; want %+v", tc.body, got, err, want)
		}
	}
}

// A wrongly typed field that changes no answer is malformed, not unsupported.
func TestInertFieldType(t *testing.T) {
	_, _, err := openaiapi.DecodeChatRequest(strings.NewReader(chatWith(`,"user":5`)))
	var e *openaiapi.Error
	if !errors.As(err, &e) || e.Status != 400 || e.Param != "user" || e.Code != "" {
		t.Errorf(`"user":5: %v; want a 400 naming user`, err)
	}
	_, _, err = openaiapi.DecodeChatRequest(strings.NewReader(chatWith(`,"add_generation_prompt":true,"messages":[{"role":"assistant","content":"x"}],"continue_final_message":true`)))
	if !errors.As(err, &e) || e.Status != 400 || e.Param != "add_generation_prompt" {
		t.Errorf("add_generation_prompt and continue_final_message both true: %v; want a 400 naming add_generation_prompt", err)
	}
}

// Over HTTP a refusal is OpenAI's error body with param and code, and the
// backend is never asked.
func TestRefusalOverHTTP(t *testing.T) {
	f := &countingBackend{}
	srv := httptest.NewServer(openaiapi.NewHandler(f))
	defer srv.Close()
	for _, tc := range []struct{ path, body, param, code string }{
		{"/v1/chat/completions", chatWith(`,"tools":[{"type":"web_search"}],"stream":true`), "tools[0].type", "unsupported_value"},
		{"/v1/chat/completions", chatWith(`,"store":true,"stream":true`), "store", "unsupported_parameter"},
		{"/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://example.com/a.png"}}]}]}`,
			"messages[0].content[0].image_url.url", "unsupported_value"},
		{"/v1/chat/completions", chatWith(`,"response_format":{"type":"json_object","x":1}`), "response_format.x", "unknown_parameter"},
		{"/v1/completions", completionWith(`,"best_of":3`), "best_of", "unsupported_parameter"},
		{"/v1/completions", completionWith(`,"bogus":1`), "bogus", "unknown_parameter"},
	} {
		resp, err := http.Post(srv.URL+tc.path, "application/json", strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var e openaiapi.ErrorResponse
		if err := json.Unmarshal(b, &e); err != nil || resp.StatusCode != 400 || e.Error.Type != "invalid_request_error" ||
			e.Error.Param == nil || *e.Error.Param != tc.param || e.Error.Code == nil || *e.Error.Code != tc.code ||
			!strings.Contains(e.Error.Message, "refused rather than ignored") ||
			strings.Contains(tc.param, "image_url") && !strings.Contains(e.Error.Message, "inline as a data: URL") {
			t.Errorf("POST %s %s: %d %s; want 400 with param %q, code %q", tc.path, tc.body, resp.StatusCode, b, tc.param, tc.code)
		}
	}
	if n := f.n.Load(); n != 0 {
		t.Errorf("the backend was asked %d times; want never", n)
	}
}

// TestResponseFormat: json_object and json_schema become the request's
// Format; a malformed one, or a schema runtime/grammar cannot follow, is a
// 400 naming the field (and the keyword).
func TestResponseFormat(t *testing.T) {
	schema := `{"type":"object","properties":{"x":{"type":"integer"}},"required":["x"],"additionalProperties":false}`
	for _, tc := range []struct {
		body string
		want *runtime.ResponseFormat
	}{
		{chatWith(`,"response_format":{"type":"json_object"}`), &runtime.ResponseFormat{Type: "json_object"}},
		{chatWith(`,"response_format":{"type":"json_schema","json_schema":{"name":"pt","schema":` + schema + `,"strict":true}}`),
			&runtime.ResponseFormat{Type: "json_schema", Name: "pt", Schema: json.RawMessage(schema), Strict: true}},
		{chatWith(`,"response_format":{"type":"json_schema","json_schema":{"name":"pt","schema":` + schema + `,"strict":null,"description":""}}`),
			&runtime.ResponseFormat{Type: "json_schema", Name: "pt", Schema: json.RawMessage(schema)}},
	} {
		_, rr, err := openaiapi.DecodeChatRequest(strings.NewReader(tc.body))
		if err != nil || !reflect.DeepEqual(rr.Format, tc.want) {
			t.Errorf("decode %s: Format %+v, %v; want %+v", tc.body, rr.Format, err, tc.want)
		}
	}
	for _, tc := range []struct{ body, param, says string }{
		{chatWith(`,"response_format":{"type":"json_schema"}`), "response_format.json_schema", "required"},
		{chatWith(`,"response_format":{"type":"json_object","json_schema":{"name":"a","schema":{}}}`), "response_format.json_schema", "json_object"},
		{chatWith(`,"response_format":{"type":"text","json_schema":{"name":"a","schema":{}}}`), "response_format.json_schema", "text"},
		{chatWith(`,"response_format":{}`), "response_format.type", "required"},
		{chatWith(`,"response_format":{"type":"json_schema","json_schema":{"schema":{}}}`), "response_format.json_schema.name", "missing"},
		{chatWith(`,"response_format":{"type":"json_schema","json_schema":{"name":"a"}}`), "response_format.json_schema.schema", "missing"},
		{chatWith(`,"response_format":{"type":"json_schema","json_schema":{"name":"a","schema":{"type":"string","pattern":"^a"}}}`),
			"response_format.json_schema.schema", `"pattern"`},
		{chatWith(`,"response_format":{"type":"json_schema","json_schema":{"name":"a","schema":{"oneOf":[{"type":"string"}]}}}`),
			"response_format.json_schema.schema", `"oneOf"`},
		{chatWith(`,"response_format":{"type":"json_schema","json_schema":{"name":"a","schema":{},"strict":"yes"}}`),
			"response_format.json_schema.strict", "bool"},
	} {
		_, _, err := openaiapi.DecodeChatRequest(strings.NewReader(tc.body))
		var e *openaiapi.Error
		if !errors.As(err, &e) || e.Status != 400 || e.Param != tc.param || !strings.Contains(e.Message, tc.says) {
			t.Errorf("decode %s = %v; want a 400 naming %s and saying %s", tc.body, err, tc.param, tc.says)
		}
	}
}

type countingBackend struct {
	fake
	n atomic.Int32
}

func (c *countingBackend) Generate(ctx context.Context, req runtime.Request) (runtime.Stream, error) {
	c.n.Add(1)
	return c.fake.Generate(ctx, req)
}

// BenchmarkDecodeChatRequest: the allow-list parses the body once more
// before the typed decoder does; bytes/op shows its cost on a small request
// and on one with 512 KiB of text.
func BenchmarkDecodeChatRequest(b *testing.B) {
	for _, bc := range []struct{ name, body string }{
		{"small", chatWith(`,"max_tokens":16,"temperature":0,"presence_penalty":0,"frequency_penalty":0,"n":1,"top_p":1,"user":"u"`)},
		{"512KiB", `{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"` + strings.Repeat("a ", 256<<10) + `"}]}`},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.body)))
			for b.Loop() {
				if _, _, err := openaiapi.DecodeChatRequest(strings.NewReader(bc.body)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
