package openai

import (
	"encoding/json"
	"fmt"

	"github.com/cocoon-network/cocoon/runtime"
)

// A streamed chunk, as vLLM sends it (the fields read here):
//
//	{"choices":[{"index":0,
//	  "delta":{"content":"…","refusal":null,
//	           "tool_calls":[{"index":0,"id":"chatcmpl-tool-…","type":"function",
//	                          "function":{"name":"get_weather","arguments":"{\"ci"}}]},
//	  "logprobs":{"content":[{"token":"…","logprob":-0.1,"bytes":[72],
//	                          "top_logprobs":[{"token":"…","logprob":-0.1,"bytes":[72]}]}]},
//	  "finish_reason":null}],
//	 "usage":{"prompt_tokens":21,"completion_tokens":16}}
//
// The first fragment of tool call i carries its id and name; later ones
// append to its arguments (and may repeat the id, type and name, as SGLang
// does, or send them null). A server may send a whole call in one fragment.

// chunk is what either kind of streaming answer holds that matters here.
type chunk struct {
	Choices []struct {
		Text  string `json:"text"` // completions
		Delta struct {
			Content   *string         `json:"content"`
			Refusal   *string         `json:"refusal"`
			ToolCalls []toolCallChunk `json:"tool_calls"`
		} `json:"delta"` // chat
		Logprobs *struct {
			Content []tokenLogprob `json:"content"`
		} `json:"logprobs"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens     *int `json:"prompt_tokens"`
		CompletionTokens *int `json:"completion_tokens"`
	} `json:"usage"`
}

type toolCallChunk struct {
	Index    *int   `json:"index"`
	ID       string `json:"id"`
	Type     string `json:"type"`
	Function struct {
		Name      string          `json:"name"`
		Arguments json.RawMessage `json:"arguments"` // a string; anything else is refused
	} `json:"function"`
}

type tokenLogprob struct {
	Token       string  `json:"token"`
	Logprob     float64 `json:"logprob"`
	Bytes       []int   `json:"bytes"`
	TopLogprobs []struct {
		Token   string  `json:"token"`
		Logprob float64 `json:"logprob"`
		Bytes   []int   `json:"bytes"`
	} `json:"top_logprobs"`
}

// maxToolArgumentBytes caps the arguments of all of an answer's tool calls
// together: what a request can carry back as its call history.
const maxToolArgumentBytes = runtime.MaxTextBytes

// decoder turns one upstream answer's chunks into deltas, keeping what a
// chunk depends on: the tool calls begun, the usage, the finish reason.
type decoder struct {
	chat     bool
	url      string
	calls    []struct{ id, name string }
	argBytes int
	usage    runtime.Usage
	gotUsage bool
	finish   string
}

// chunk decodes one chunk into a delta (Tokens left 0). Its errors wrap
// runtime.ErrUpstream, or runtime.ErrUnbillable for a usage without counts.
func (d *decoder) chunk(data []byte) (runtime.Delta, error) {
	var c chunk
	if err := json.Unmarshal(data, &c); err != nil {
		return runtime.Delta{}, upstreamError("%s sent an event that is not a completion chunk: %w", d.url, err)
	}
	if c.Usage != nil {
		if c.Usage.PromptTokens == nil || c.Usage.CompletionTokens == nil || *c.Usage.PromptTokens < 0 || *c.Usage.CompletionTokens < 0 {
			return runtime.Delta{}, fmt.Errorf("%w: %s sent an incomplete usage object", runtime.ErrUnbillable, d.url)
		}
		if *c.Usage.CompletionTokens < d.usage.CompletionTokens {
			return runtime.Delta{}, upstreamError("%s sent a usage going backwards (%d completion tokens after %d)", d.url, *c.Usage.CompletionTokens, d.usage.CompletionTokens)
		}
		d.usage = runtime.Usage{PromptTokens: *c.Usage.PromptTokens, CompletionTokens: *c.Usage.CompletionTokens}
		d.gotUsage = true
	}
	var out runtime.Delta
	for _, ch := range c.Choices {
		if ch.FinishReason != nil && *ch.FinishReason != "" {
			d.finish = *ch.FinishReason
		}
		if !d.chat {
			out.Text += ch.Text
			continue
		}
		if ch.Delta.Content != nil {
			out.Text += *ch.Delta.Content
		}
		if ch.Delta.Refusal != nil {
			out.Refusal += *ch.Delta.Refusal
		}
		for _, tc := range ch.Delta.ToolCalls {
			td, err := d.toolCall(tc)
			if err != nil {
				return runtime.Delta{}, upstreamError("%s sent a malformed tool call: %w", d.url, err)
			}
			if td.ID != "" || td.Arguments != "" {
				out.ToolCalls = append(out.ToolCalls, td)
			}
		}
		if ch.Logprobs != nil {
			for _, lp := range ch.Logprobs.Content {
				tl, err := logprob(lp)
				if err != nil {
					return runtime.Delta{}, upstreamError("%s sent malformed logprobs: %w", d.url, err)
				}
				out.Logprobs = append(out.Logprobs, tl)
			}
		}
	}
	return out, nil
}

// toolCall folds one fragment into the calls so far and returns its delta:
// ID and Name for a call's first fragment, Arguments appended.
func (d *decoder) toolCall(tc toolCallChunk) (runtime.ToolCallDelta, error) {
	var args string
	if len(tc.Function.Arguments) > 0 && string(tc.Function.Arguments) != "null" {
		if err := json.Unmarshal(tc.Function.Arguments, &args); err != nil {
			return runtime.ToolCallDelta{}, fmt.Errorf("arguments are not a string: %w", err)
		}
	}
	if tc.Type != "" && tc.Type != "function" {
		return runtime.ToolCallDelta{}, fmt.Errorf("type %.40q, not function", tc.Type)
	}
	i := len(d.calls)
	switch {
	case tc.Index != nil:
		i = *tc.Index
	case i > 0 && (tc.ID == "" || tc.ID == d.calls[i-1].id):
		// No index (servers before the field): a fragment without a new
		// id continues the last call.
		i--
	}
	switch {
	case i < 0 || i > len(d.calls):
		return runtime.ToolCallDelta{}, fmt.Errorf("index %d after %d calls", i, len(d.calls))
	case i >= runtime.MaxToolCalls:
		return runtime.ToolCallDelta{}, fmt.Errorf("more than %d calls", runtime.MaxToolCalls)
	}
	d.argBytes += len(args)
	if d.argBytes > maxToolArgumentBytes {
		return runtime.ToolCallDelta{}, fmt.Errorf("arguments over %d bytes", maxToolArgumentBytes)
	}
	if i == len(d.calls) {
		switch {
		case tc.ID == "" || len(tc.ID) > runtime.MaxToolCallIDBytes:
			return runtime.ToolCallDelta{}, fmt.Errorf("call %d begins without an id of 1 to %d bytes", i, runtime.MaxToolCallIDBytes)
		case !runtime.ToolName(tc.Function.Name):
			return runtime.ToolCallDelta{}, fmt.Errorf("call %d begins without a function name of [a-zA-Z0-9_-]{1,64} (%.70q)", i, tc.Function.Name)
		}
		d.calls = append(d.calls, struct{ id, name string }{tc.ID, tc.Function.Name})
		return runtime.ToolCallDelta{Index: i, ID: tc.ID, Name: tc.Function.Name, Arguments: args}, nil
	}
	switch c := d.calls[i]; {
	case tc.ID != "" && tc.ID != c.id:
		return runtime.ToolCallDelta{}, fmt.Errorf("call %d has id %.70q, then %.70q", i, c.id, tc.ID)
	case tc.Function.Name != "" && tc.Function.Name != c.name:
		return runtime.ToolCallDelta{}, fmt.Errorf("call %d names %q, then %.70q", i, c.name, tc.Function.Name)
	}
	return runtime.ToolCallDelta{Index: i, Arguments: args}, nil
}

// logprob is lp checked: bytes are bytes, and no more alternatives than a
// request may ask for.
func logprob(lp tokenLogprob) (runtime.TokenLogprob, error) {
	if len(lp.TopLogprobs) > runtime.MaxTopLogprobs {
		return runtime.TokenLogprob{}, fmt.Errorf("%d top logprobs, at most %d", len(lp.TopLogprobs), runtime.MaxTopLogprobs)
	}
	b, err := tokenBytes(lp.Bytes)
	if err != nil {
		return runtime.TokenLogprob{}, err
	}
	out := runtime.TokenLogprob{Token: lp.Token, Logprob: lp.Logprob, Bytes: b}
	for _, t := range lp.TopLogprobs {
		b, err := tokenBytes(t.Bytes)
		if err != nil {
			return runtime.TokenLogprob{}, err
		}
		out.Top = append(out.Top, runtime.TopLogprob{Token: t.Token, Logprob: t.Logprob, Bytes: b})
	}
	return out, nil
}

// tokenBytes is OpenAI's bytes (an array of integers) as bytes.
func tokenBytes(v []int) ([]byte, error) {
	if v == nil {
		return nil, nil
	}
	b := make([]byte, len(v))
	for i, x := range v {
		if x < 0 || x > 255 {
			return nil, fmt.Errorf("byte %d is %d", i, x)
		}
		b[i] = byte(x)
	}
	return b, nil
}
