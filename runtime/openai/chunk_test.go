package openai

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"

	"github.com/cocoon-network/cocoon/runtime"
)

// TestToolCallShapes: servers differ in how they stream a call; each shape
// decodes to the same deltas (the first piece with id and name, later
// pieces arguments only).
func TestToolCallShapes(t *testing.T) {
	whole := []runtime.ToolCallDelta{{Index: 0, ID: "call_1", Name: "f", Arguments: `{"a":1}`}}
	split := []runtime.ToolCallDelta{{Index: 0, ID: "call_1", Name: "f"}, {Index: 0, Arguments: `{"a":`}, {Index: 0, Arguments: `1}`}}
	for _, tc := range []struct {
		name   string
		chunks []string
		want   []runtime.ToolCallDelta
	}{
		{"whole call in one chunk (Ollama)", []string{
			`{"choices":[{"index":0,"delta":{"role":"assistant","content":"","tool_calls":[{"id":"call_1","index":0,"type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},"finish_reason":null}]}`,
		}, whole},
		{"name and id repeated (SGLang)", []string{
			`{"choices":[{"index":0,"delta":{"tool_calls":[{"id":"call_1","index":0,"type":"function","function":{"name":"f","arguments":""}}]}}]}`,
			`{"choices":[{"index":0,"delta":{"tool_calls":[{"id":"call_1","index":0,"type":"function","function":{"name":"f","arguments":"{\"a\":"}}]}}]}`,
			`{"choices":[{"index":0,"delta":{"tool_calls":[{"id":null,"index":0,"type":null,"function":{"name":null,"arguments":"1}"}}]}}]}`,
		}, split},
		{"no index", []string{
			`{"choices":[{"index":0,"delta":{"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]}}]}`,
			`{"choices":[{"index":0,"delta":{"tool_calls":[{"function":{"arguments":"{\"a\":"}}]}}]}`,
			`{"choices":[{"index":0,"delta":{"tool_calls":[{"id":"call_1","function":{"arguments":"1}"}}]}}]}`,
		}, split},
		{"arguments null", []string{
			`{"choices":[{"index":0,"delta":{"tool_calls":[{"id":"call_1","index":0,"type":"function","function":{"name":"f","arguments":null}}]}}]}`,
			`{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":"}}]}}]}`,
			`{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]}}]}`,
		}, split},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := decoder{chat: true, url: "test"}
			var got []runtime.ToolCallDelta
			for _, c := range tc.chunks {
				delta, err := d.chunk([]byte(c))
				if err != nil {
					t.Fatalf("chunk(%s): %v", c, err)
				}
				got = append(got, delta.ToolCalls...)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("deltas %+v; want %+v", got, tc.want)
			}
		})
	}
}

// TestToolCallLimits: more calls than a message may hold, or arguments
// beyond what a request can carry back, fail the stream.
func TestToolCallLimits(t *testing.T) {
	d := decoder{chat: true, url: "test"}
	for i := range runtime.MaxToolCalls {
		c := []byte(`{"choices":[{"delta":{"tool_calls":[{"index":` + strconv.Itoa(i) + `,"id":"c` + strconv.Itoa(i) + `","function":{"name":"f","arguments":"{}"}}]}}]}`)
		if _, err := d.chunk(c); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	c := []byte(`{"choices":[{"delta":{"tool_calls":[{"index":128,"id":"x","function":{"name":"f"}}]}}]}`)
	if _, err := d.chunk(c); !errors.Is(err, runtime.ErrUpstream) {
		t.Errorf("call %d: %v; want ErrUpstream", runtime.MaxToolCalls, err)
	}
	d = decoder{chat: true, url: "test"}
	big := bytes.Repeat([]byte("a"), maxToolArgumentBytes/2+1)
	if _, err := d.chunk([]byte(`{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c","function":{"name":"f","arguments":"` + string(big) + `"}}]}}]}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := d.chunk([]byte(`{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"` + string(big) + `"}}]}}]}`)); !errors.Is(err, runtime.ErrUpstream) {
		t.Errorf("arguments over %d bytes: %v; want ErrUpstream", maxToolArgumentBytes, err)
	}
}

// FuzzChunk: whatever an upstream sends, the decoder returns a delta or an
// upstream (or unbillable) error, never panics, and what it hands out is
// what the runtime promises: a call's first piece has an id and a name,
// pieces come in order, and logprobs' alternatives are bounded.
func FuzzChunk(f *testing.F) {
	for _, file := range []string{"vllm_chat_tool_call.sse", "vllm_chat_parallel_tool_calls.sse", "vllm_chat_logprobs.sse", "vllm_chat_stream.sse"} {
		b, err := os.ReadFile(filepath.Join("testdata", file))
		if err != nil {
			f.Fatal(err)
		}
		for line := range bytes.Lines(b) {
			if data, ok := bytes.CutPrefix(bytes.TrimSpace(line), []byte("data: ")); ok && !bytes.Equal(data, []byte("[DONE]")) {
				f.Add(data, true)
			}
		}
	}
	f.Add([]byte(`{"choices":[{"delta":{"tool_calls":[{"index":1,"id":"c","function":{"name":"f","arguments":{"a":1}}}]},"logprobs":{"content":[{"token":"a","logprob":-1,"bytes":[300]}]}}]}`), true)
	f.Add([]byte(`{"choices":[{"text":"x","finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1}}`), false)
	f.Fuzz(func(t *testing.T, data []byte, chat bool) {
		d := decoder{chat: chat, url: "fuzz"}
		// Twice: the second sees the calls the first began.
		for range 2 {
			delta, err := d.chunk(data)
			if err != nil {
				if !errors.Is(err, runtime.ErrUpstream) && !errors.Is(err, runtime.ErrUnbillable) {
					t.Fatalf("chunk(%q) = %v; want ErrUpstream or ErrUnbillable", data, err)
				}
				return
			}
			for _, tc := range delta.ToolCalls {
				if tc.Index < 0 || tc.Index >= len(d.calls) || tc.Index >= runtime.MaxToolCalls {
					t.Fatalf("delta for call %d of %d", tc.Index, len(d.calls))
				}
				if (tc.ID != "") != (tc.Name != "") || tc.ID != "" && !runtime.ToolName(tc.Name) {
					t.Fatalf("delta %+v: id and name go together, and the name is a function name", tc)
				}
			}
			for _, lp := range delta.Logprobs {
				if len(lp.Top) > runtime.MaxTopLogprobs {
					t.Fatalf("%d alternatives", len(lp.Top))
				}
			}
			if d.argBytes > maxToolArgumentBytes {
				t.Fatalf("%d argument bytes", d.argBytes)
			}
		}
	})
}
