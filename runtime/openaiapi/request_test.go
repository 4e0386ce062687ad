package openaiapi_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

func u64(v uint64) *uint64 { return &v }

var goldenChat = []struct {
	body   string
	want   runtime.Request
	status int // 0: accepted
}{
	{`{"model":"m","messages":[{"role":"user","content":"hi"}]}`,
		runtime.Request{Model: "m", Messages: []runtime.Message{{Role: "user", Content: "hi"}}, Temperature: 1}, 0},
	{`{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],"max_tokens":5,"temperature":0,"top_p":0.5,"stop":"\n","seed":-1}`,
		runtime.Request{Model: "m", Messages: []runtime.Message{{Role: "system", Content: "be brief"}, {Role: "user", Content: "ab"}},
			MaxTokens: 5, Temperature: 0, TopP: 0.5, Stop: []string{"\n"}, Seed: u64(1<<64 - 1)}, 0},
	{`{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"Once"}],"continue_final_message":true,"add_generation_prompt":false,"max_completion_tokens":9,"max_tokens":3}`,
		runtime.Request{Model: "m", Messages: []runtime.Message{{Role: "user", Content: "hi"}}, Continuation: "Once", MaxTokens: 9, Temperature: 1}, 0},
	{`{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[],"user":"x"}`,
		runtime.Request{Model: "m", Messages: []runtime.Message{{Role: "user", Content: "hi"}}, Temperature: 1}, 0},
	// A tool the model could call is refused, not dropped (TestRefusedFields).
	{`{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function"}],"user":"x"}`, runtime.Request{}, 400},
	{`{"model":"m","messages":[{"role":"user","content":null}]}`,
		runtime.Request{Model: "m", Messages: []runtime.Message{{Role: "user"}}, Temperature: 1}, 0},
	{`{"model":"m","messages":[]}`, runtime.Request{}, 400},
	{`{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}`, runtime.Request{}, 400},
	{`{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":0}`, runtime.Request{}, 400},
	{`{"model":"m","messages":[{"role":"user","content":"hi"}],"top_p":0}`, runtime.Request{}, 400},
	{`{"model":"m","messages":[{"role":"user","content":"hi"}],"stop":[""]}`, runtime.Request{}, 400},
	{`{"model":"m","messages":[{"role":"user","content":"hi"}],"continue_final_message":true}`, runtime.Request{}, 400},
	{`{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":"yes"}`, runtime.Request{}, 400},
	{`not json`, runtime.Request{}, 400},
	{``, runtime.Request{}, 400},
}

func TestDecodeChatRequestGolden(t *testing.T) {
	for _, g := range goldenChat {
		_, got, err := openaiapi.DecodeChatRequest(strings.NewReader(g.body))
		if g.status != 0 {
			var e *openaiapi.Error
			if !errors.As(err, &e) || e.Status != g.status {
				t.Errorf("DecodeChatRequest(%s) = %v; want status %d", g.body, err, g.status)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, g.want) {
			t.Errorf("DecodeChatRequest(%s) = %+v, %v; want %+v", g.body, got, err, g.want)
		}
	}
}

var goldenCompletion = []string{
	`{"model":"m","prompt":"once upon a time","max_tokens":8,"stop":["\n","."],"stream":true,"stream_options":{"include_usage":true}}`,
	`{"model":"m","prompt":["one"]}`,
	`{"model":"m","prompt":["one","two"]}`,
	`{"model":"m","prompt":[1,2]}`,
	`{"model":"m","prompt":"x","echo":true}`,
	`{"model":"","prompt":"x"}`,
	`{"model":"m","prompt":"x","stop":[]}`, // once decoded to a non-nil empty Stop, which the round trip lost
}

// FuzzDecodeChatRequest: no input panics; every error is a 400 or 413 API
// error; an accepted request passes runtime.Request.Check, and encoding the
// decoded request (as a gateway forwards it: tools, tool calls, images as
// parts) decodes to the same runtime request.
func FuzzDecodeChatRequest(f *testing.F) {
	for _, g := range goldenChat {
		f.Add([]byte(g.body))
	}
	for _, g := range goldenTools {
		f.Add([]byte(g.body))
	}
	for _, tc := range refusedFields {
		if tc.chat {
			f.Add([]byte(tc.body))
		}
	}
	for _, tc := range neutralFields {
		if tc.chat {
			f.Add([]byte(tc.body))
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, rr, err := openaiapi.DecodeChatRequest(strings.NewReader(string(b)))
		if err != nil {
			var e *openaiapi.Error
			if !errors.As(err, &e) || (e.Status != 400 && e.Status != 413) || e.Message == "" {
				t.Fatalf("error %v is not a 400 or 413 API error", err)
			}
			return
		}
		if rr.Model == "" || len(rr.Messages) == 0 || rr.MaxTokens < 0 || rr.Temperature < 0 || rr.Temperature > 2 || len(rr.Stop) > openaiapi.MaxStops {
			t.Fatalf("accepted a bad request: %+v", rr)
		}
		if err := rr.Check(); err != nil {
			t.Fatalf("accepted %+v, which Check refuses: %v", rr, err)
		}
		again, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		_, rr2, err := openaiapi.DecodeChatRequest(strings.NewReader(string(again)))
		if err != nil || !reflect.DeepEqual(rr, rr2) {
			t.Fatalf("round trip of %s: %+v, %v; want %+v", again, rr2, err, rr)
		}
	})
}

// FuzzDecodeCompletionRequest: as FuzzDecodeChatRequest, for /v1/completions.
func FuzzDecodeCompletionRequest(f *testing.F) {
	for _, g := range goldenCompletion {
		f.Add([]byte(g))
	}
	for _, tc := range refusedFields {
		if !tc.chat {
			f.Add([]byte(tc.body))
		}
	}
	for _, tc := range neutralFields {
		if !tc.chat {
			f.Add([]byte(tc.body))
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, rr, err := openaiapi.DecodeCompletionRequest(strings.NewReader(string(b)))
		if err != nil {
			var e *openaiapi.Error
			if !errors.As(err, &e) || e.Status < 400 || e.Status > 499 {
				t.Fatalf("error %v is not a 4xx API error", err)
			}
			return
		}
		if rr.Model == "" || rr.Prompt == "" || len(rr.Messages) != 0 {
			t.Fatalf("accepted a bad request: %+v", rr)
		}
		again, _ := json.Marshal(req)
		_, rr2, err := openaiapi.DecodeCompletionRequest(strings.NewReader(string(again)))
		if err != nil || !reflect.DeepEqual(rr, rr2) {
			t.Fatalf("round trip of %s: %+v, %v; want %+v", again, rr2, err, rr)
		}
	})
}

// Hostile values of every field a request narrows or hands to native code
// are refused with a 400 naming the field; none wraps or reaches a backend.
func TestEdgeRefusesByName(t *testing.T) {
	chat := func(extra string) string {
		return `{"model":"m","messages":[{"role":"user","content":"hi"}]` + extra + `}`
	}
	for _, tc := range []struct{ body, param string }{
		{chat(`,"max_tokens":4294967297`), "max_tokens"},
		{chat(`,"max_tokens":-1`), "max_tokens"},
		{chat(`,"max_tokens":0`), "max_tokens"},
		{chat(`,"max_tokens":1000000000000000000`), "max_tokens"},
		{chat(`,"max_tokens":1e30`), "max_tokens"},
		{chat(`,"max_completion_tokens":4294967297`), "max_completion_tokens"},
		{chat(`,"n":4294967297`), "n"},
		{chat(`,"n":-1`), "n"},
		{chat(`,"seed":18446744073709551616`), "seed"},
		{chat(`,"temperature":1e308`), "temperature"},
		{chat(`,"stop":["a","b","c","d","e"]`), "stop"},
		{chat(`,"stop":"` + strings.Repeat("x", 300) + `"`), "stop[0]"},
		{chat(`,"stop":"a\u0000"`), "stop[0]"},
		{`{"model":"m","messages":[{"role":"user","content":"a\u0000b"}]}`, "messages[0].content"},
		{`{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a\u0000b"}]}]}`, "messages[0].content"},
		{`{"model":"m\u0000","messages":[{"role":"user","content":"hi"}]}`, "model"},
		{`{"model":"` + strings.Repeat("m", 300) + `","messages":[{"role":"user","content":"hi"}]}`, "model"},
		{`{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"a\u0000"}],"continue_final_message":true}`, "continuation"},
	} {
		_, _, err := openaiapi.DecodeChatRequest(strings.NewReader(tc.body))
		var e *openaiapi.Error
		if !errors.As(err, &e) || e.Status != 400 || e.Param != tc.param || !strings.Contains(e.Message, tc.param) {
			t.Errorf("%.80s: %v (param %q); want a 400 naming %s", tc.body, err, func() string {
				if e != nil {
					return e.Param
				}
				return ""
			}(), tc.param)
		}
	}
	for _, tc := range []struct{ body, param string }{
		{`{"model":"m","prompt":"a\u0000b"}`, "prompt"},
		{`{"model":"m","prompt":"hi","max_tokens":4294967297}`, "max_tokens"},
	} {
		_, _, err := openaiapi.DecodeCompletionRequest(strings.NewReader(tc.body))
		var e *openaiapi.Error
		if !errors.As(err, &e) || e.Status != 400 || e.Param != tc.param {
			t.Errorf("%s: %v; want a 400 naming %s", tc.body, err, tc.param)
		}
	}
	// Go's JSON decoder turns invalid UTF-8 into U+FFFD: what reaches the
	// backend is valid text, answered exactly as that text.
	_, rr, err := openaiapi.DecodeChatRequest(strings.NewReader("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\xff\xfeb\"}]}"))
	if err != nil || rr.Messages[0].Content != "a\uFFFD\uFFFDb" {
		t.Errorf("invalid UTF-8: %+v, %v", rr.Messages, err)
	}
}
