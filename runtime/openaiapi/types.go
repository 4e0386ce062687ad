package openaiapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"strings"

	"github.com/cocoon-network/cocoon/runtime"
)

// ChatCompletionRequest is the body of POST /v1/chat/completions: the fields
// the network honours. The decoder refuses any other field by name unless it
// has a neutral value (params.go); none is dropped.
type ChatCompletionRequest struct {
	Model               string         `json:"model"`
	Messages            []ChatMessage  `json:"messages"`
	MaxTokens           *int           `json:"max_tokens,omitempty"`
	MaxCompletionTokens *int           `json:"max_completion_tokens,omitempty"`
	Temperature         *float64       `json:"temperature,omitempty"`
	TopP                *float64       `json:"top_p,omitempty"`
	Stop                StopList       `json:"stop,omitempty"`
	Seed                *int64         `json:"seed,omitempty"`
	N                   *int           `json:"n,omitempty"`
	Stream              bool           `json:"stream,omitempty"`
	StreamOptions       *StreamOptions `json:"stream_options,omitempty"`
	// ResponseFormat: nil or type "text" is free text.
	ResponseFormat *ResponseFormat `json:"response_format,omitempty"`

	// Tools the model may call; ToolChoice nil is OpenAI's default (auto
	// with tools, else none); ParallelToolCalls false asks for at most one
	// call.
	Tools             []Tool      `json:"tools,omitempty"`
	ToolChoice        *ToolChoice `json:"tool_choice,omitempty"`
	ParallelToolCalls *bool       `json:"parallel_tool_calls,omitempty"`
	// Logprobs asks for each content token's log probability, TopLogprobs
	// (0 to 20) for the likeliest alternatives at each position.
	Logprobs         bool     `json:"logprobs,omitempty"`
	TopLogprobs      *int     `json:"top_logprobs,omitempty"`
	PresencePenalty  *float64 `json:"presence_penalty,omitempty"`
	FrequencyPenalty *float64 `json:"frequency_penalty,omitempty"`
	// LogitBias maps token ids, written as decimal strings, to biases in
	// [-100, 100].
	LogitBias map[string]float64 `json:"logit_bias,omitempty"`

	// Extensions understood by vLLM (and sent by the openai backend to resume
	// a generation): the last message is an assistant message to continue.
	ContinueFinalMessage bool  `json:"continue_final_message,omitempty"`
	AddGenerationPrompt  *bool `json:"add_generation_prompt,omitempty"`
}

// Tool is one entry of a chat request's tools: {"type":"function","function":{...}}.
type Tool struct {
	Type     string      `json:"type"` // "function"
	Function FunctionDef `json:"function"`
}

// FunctionDef is a tool's function.
type FunctionDef struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Parameters  json.RawMessage `json:"parameters,omitempty"` // a JSON Schema
	Strict      *bool           `json:"strict,omitempty"`
}

// ToolChoice is a chat request's tool_choice: "none", "auto", "required",
// or {"type":"function","function":{"name":...}} (Mode "function" and Name).
type ToolChoice struct {
	Mode string // none, auto, required or function
	Name string // Mode function: the function to call
}

func (c ToolChoice) MarshalJSON() ([]byte, error) {
	if c.Mode != "function" {
		return json.Marshal(c.Mode)
	}
	type fn struct {
		Name string `json:"name"`
	}
	return json.Marshal(struct {
		Type     string `json:"type"`
		Function fn     `json:"function"`
	}{"function", fn{c.Name}})
}

func (c *ToolChoice) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		*c = ToolChoice{}
		return json.Unmarshal(b, &c.Mode)
	}
	var o struct {
		Type     string `json:"type"`
		Function struct {
			Name string `json:"name"`
		} `json:"function"`
	}
	if err := json.Unmarshal(b, &o); err != nil {
		return fmt.Errorf(`tool_choice must be "none", "auto", "required" or {"type":"function","function":{"name":...}}`)
	}
	*c = ToolChoice{Mode: o.Type, Name: o.Function.Name}
	return nil
}

// ToolCall is one call of an assistant message (in a request's history, or
// in a non-streamed answer); in a streamed answer's delta, Index says which
// call a piece belongs to, and only a call's first piece has ID, Type and
// Function.Name.
type ToolCall struct {
	Index    *int         `json:"index,omitempty"` // streamed pieces only
	ID       string       `json:"id,omitempty"`
	Type     string       `json:"type,omitempty"` // "function"
	Function FunctionCall `json:"function"`
}

// FunctionCall is a tool call's function: its name and its arguments, a
// JSON text as the model wrote it.
type FunctionCall struct {
	Name      string `json:"name,omitempty"`
	Arguments string `json:"arguments"`
}

// Logprobs is a choice's logprobs: those of the content's tokens.
type Logprobs struct {
	Content []TokenLogprob `json:"content"`
	Refusal []TokenLogprob `json:"refusal"` // always null: a refusal's tokens are not given
}

// TokenLogprob is one token's log probability and the likeliest tokens at
// its position. Bytes are the token's bytes as integers (a token may hold
// part of a UTF-8 character).
type TokenLogprob struct {
	Token       string       `json:"token"`
	Logprob     float64      `json:"logprob"`
	Bytes       []int        `json:"bytes"`
	TopLogprobs []TopLogprob `json:"top_logprobs"`
}

// TopLogprob is one of TokenLogprob.TopLogprobs.
type TopLogprob struct {
	Token   string  `json:"token"`
	Logprob float64 `json:"logprob"`
	Bytes   []int   `json:"bytes"`
}

// ResponseFormat is a chat request's response_format: {"type":"text"},
// {"type":"json_object"} or {"type":"json_schema","json_schema":{...}}.
type ResponseFormat struct {
	Type       string      `json:"type"`
	JSONSchema *JSONSchema `json:"json_schema,omitempty"`
}

// JSONSchema is response_format.json_schema.
type JSONSchema struct {
	Name   string          `json:"name"`
	Schema json.RawMessage `json:"schema,omitempty"`
	Strict *bool           `json:"strict,omitempty"`
}

// CompletionRequest is the body of POST /v1/completions, as ChatCompletionRequest.
type CompletionRequest struct {
	Model         string         `json:"model"`
	Prompt        Prompt         `json:"prompt"`
	MaxTokens     *int           `json:"max_tokens,omitempty"`
	Temperature   *float64       `json:"temperature,omitempty"`
	TopP          *float64       `json:"top_p,omitempty"`
	Stop          StopList       `json:"stop,omitempty"`
	Seed          *int64         `json:"seed,omitempty"`
	N             *int           `json:"n,omitempty"`
	Stream        bool           `json:"stream,omitempty"`
	StreamOptions *StreamOptions `json:"stream_options,omitempty"`
	Echo          bool           `json:"echo,omitempty"`
	// Penalties and logit_bias, as ChatCompletionRequest's.
	PresencePenalty  *float64           `json:"presence_penalty,omitempty"`
	FrequencyPenalty *float64           `json:"frequency_penalty,omitempty"`
	LogitBias        map[string]float64 `json:"logit_bias,omitempty"`
}

// StreamOptions asks for a last chunk with the usage.
type StreamOptions struct {
	IncludeUsage bool `json:"include_usage"`
	// ContinuousUsageStats is vLLM's extension: every chunk carries the
	// usage so far, so tokens are known per chunk.
	ContinuousUsageStats bool `json:"continuous_usage_stats,omitempty"`
}

// ChatMessage is one message, of a request or of an answer. Its content is
// a string, null, or an array of parts: "text" parts, joined into Content,
// and "image_url" parts, which become Images at the byte offset of Content
// where they stood. It encodes the same way: parts when it has images, null
// when it is empty and the message makes tool calls or refuses, else a
// string. The decoder refuses its other fields (name, ...) unless empty.
type ChatMessage struct {
	Role       string          `json:"role"`
	Content    Content         `json:"content"`
	Images     []runtime.Image `json:"-"`
	ToolCalls  []ToolCall      `json:"tool_calls,omitempty"`
	ToolCallID string          `json:"tool_call_id,omitempty"`
	// Refusal is an answer's refusal text; an answer encodes it as null
	// when it has none.
	Refusal *string `json:"refusal,omitempty"`
	answer  bool    // an answer's message: refusal always encoded
}

// ContentPart is one part of a message's content.
type ContentPart struct {
	Type     string    `json:"type"` // text or image_url
	Text     *string   `json:"text,omitempty"`
	ImageURL *ImageURL `json:"image_url,omitempty"`
}

// ImageURL is an image_url part's image: a data: URL (workers fetch
// nothing from the internet) and OpenAI's detail.
type ImageURL struct {
	URL    string `json:"url"`
	Detail string `json:"detail,omitempty"`
}

func (m ChatMessage) MarshalJSON() ([]byte, error) {
	var content any = string(m.Content)
	switch {
	case len(m.Images) > 0:
		var parts []ContentPart
		text := func(s string) {
			if s != "" {
				parts = append(parts, ContentPart{Type: "text", Text: &s})
			}
		}
		at := 0
		for _, im := range m.Images {
			if im.At < at || im.At > len(m.Content) {
				return nil, fmt.Errorf("image at %d outside the content or before the previous one", im.At)
			}
			text(string(m.Content[at:im.At]))
			at = im.At
			parts = append(parts, ContentPart{Type: "image_url", ImageURL: &ImageURL{URL: im.URL, Detail: im.Detail}})
		}
		text(string(m.Content[at:]))
		content = parts
	case m.Content == "" && (len(m.ToolCalls) > 0 || m.Refusal != nil && *m.Refusal != ""):
		content = nil
	}
	var refusal any
	if m.Refusal != nil {
		refusal = *m.Refusal
	}
	type wire struct {
		Role       string     `json:"role"`
		Content    any        `json:"content"`
		Refusal    any        `json:"refusal,omitempty"`
		ToolCalls  []ToolCall `json:"tool_calls,omitempty"`
		ToolCallID string     `json:"tool_call_id,omitempty"`
	}
	if m.answer {
		type answer struct {
			Role      string     `json:"role"`
			Content   any        `json:"content"`
			Refusal   any        `json:"refusal"`
			ToolCalls []ToolCall `json:"tool_calls,omitempty"`
		}
		return json.Marshal(answer{m.Role, content, refusal, m.ToolCalls})
	}
	return json.Marshal(wire{m.Role, content, refusal, m.ToolCalls, m.ToolCallID})
}

func (m *ChatMessage) UnmarshalJSON(b []byte) error {
	var w struct {
		Role       string          `json:"role"`
		Content    json.RawMessage `json:"content"`
		ToolCalls  []ToolCall      `json:"tool_calls"`
		ToolCallID string          `json:"tool_call_id"`
		Refusal    *string         `json:"refusal"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*m = ChatMessage{Role: w.Role, ToolCalls: w.ToolCalls, ToolCallID: w.ToolCallID, Refusal: w.Refusal}
	c := bytes.TrimSpace(w.Content)
	if len(c) == 0 || bytes.Equal(c, []byte("null")) {
		return nil
	}
	if c[0] == '"' {
		return json.Unmarshal(c, &m.Content)
	}
	var parts []ContentPart
	if err := json.Unmarshal(c, &parts); err != nil {
		return fmt.Errorf("content must be a string or an array of parts")
	}
	var sb strings.Builder
	for i, p := range parts {
		switch {
		case p.Type == "text":
			if p.Text != nil {
				sb.WriteString(*p.Text)
			}
		case p.Type == "image_url" && p.ImageURL != nil:
			m.Images = append(m.Images, runtime.Image{URL: p.ImageURL.URL, Detail: p.ImageURL.Detail, At: sb.Len()})
		default:
			return fmt.Errorf("content part %d is not a text part or an image_url part", i)
		}
	}
	m.Content = Content(sb.String())
	return nil
}

// Content is a message's text; it decodes from a string, null, or an array of
// {"type":"text","text":...} parts, and encodes as a string.
type Content string

func (c *Content) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if bytes.Equal(b, []byte("null")) {
		*c = ""
		return nil
	}
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*c = Content(s)
		return nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(b, &parts); err != nil {
		return fmt.Errorf("content must be a string or an array of text parts")
	}
	var sb bytes.Buffer
	for i, p := range parts {
		if p.Type != "text" {
			return fmt.Errorf("content part %d has type %q; only text is supported", i, p.Type)
		}
		sb.WriteString(p.Text)
	}
	*c = Content(sb.String())
	return nil
}

// StopList is "stop": a string or an array of strings.
type StopList []string

func (s *StopList) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case bytes.Equal(b, []byte("null")):
		*s = nil
		return nil
	case len(b) > 0 && b[0] == '"':
		var one string
		if err := json.Unmarshal(b, &one); err != nil {
			return err
		}
		*s = StopList{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return fmt.Errorf("stop must be a string or an array of strings")
	}
	if len(many) == 0 {
		many = nil // [] is no stop, as is its absence (omitempty drops it)
	}
	*s = many
	return nil
}

// Prompt is "prompt": a string, or an array holding one string.
type Prompt string

func (p *Prompt) UnmarshalJSON(b []byte) error {
	many, err := stringOrStrings(b)
	if err != nil {
		return fmt.Errorf("prompt must be a string (token arrays are not supported)")
	}
	if len(many) != 1 {
		return fmt.Errorf("prompt must be one string, not an array of %d", len(many))
	}
	*p = Prompt(many[0])
	return nil
}

// stringOrStrings decodes a JSON string as a list of one, or an array of
// strings: the shapes of "prompt", "input" and "stop".
func stringOrStrings(b []byte) ([]string, error) {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return nil, err
		}
		return []string{s}, nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return nil, err
	}
	return many, nil
}

// Usage is the OpenAI usage object; CostNanoTON is cocoon's addition, present
// when the stream says what the request cost.
type Usage struct {
	PromptTokens     int     `json:"prompt_tokens"`
	CompletionTokens int     `json:"completion_tokens"`
	TotalTokens      int     `json:"total_tokens"`
	CostNanoTON      *uint64 `json:"cost_nanoton,omitempty"`
}

// ChatCompletion is the non-streaming answer of /v1/chat/completions.
type ChatCompletion struct {
	ID      string       `json:"id"`
	Object  string       `json:"object"` // "chat.completion"
	Created int64        `json:"created"`
	Model   string       `json:"model"`
	Choices []ChatChoice `json:"choices"`
	Usage   *Usage       `json:"usage,omitempty"`
}

// ChatChoice is one choice of a ChatCompletion.
type ChatChoice struct {
	Index        int         `json:"index"`
	Message      ChatMessage `json:"message"`
	Logprobs     *Logprobs   `json:"logprobs"` // null unless asked for
	FinishReason string      `json:"finish_reason"`
}

// ChatCompletionChunk is one SSE event of a streaming chat completion.
type ChatCompletionChunk struct {
	ID      string        `json:"id"`
	Object  string        `json:"object"` // "chat.completion.chunk"
	Created int64         `json:"created"`
	Model   string        `json:"model"`
	Choices []ChunkChoice `json:"choices"`
	Usage   *Usage        `json:"usage,omitempty"`
}

// ChunkChoice is one choice of a chunk.
type ChunkChoice struct {
	Index        int        `json:"index"`
	Delta        ChunkDelta `json:"delta"`
	Logprobs     *Logprobs  `json:"logprobs"` // those of this chunk's content, when asked for
	FinishReason *string    `json:"finish_reason"`
}

// ChunkDelta is the new part of the message: text, pieces of tool calls
// (ToolCall.Index set), or text of a refusal.
type ChunkDelta struct {
	Role      string     `json:"role,omitempty"`
	Content   *string    `json:"content,omitempty"`
	ToolCalls []ToolCall `json:"tool_calls,omitempty"`
	Refusal   *string    `json:"refusal,omitempty"`
}

// Completion is the answer of /v1/completions, and each SSE event of its stream.
type Completion struct {
	ID      string             `json:"id"`
	Object  string             `json:"object"` // "text_completion"
	Created int64              `json:"created"`
	Model   string             `json:"model"`
	Choices []CompletionChoice `json:"choices"`
	Usage   *Usage             `json:"usage,omitempty"`
}

// CompletionChoice is one choice of a Completion.
type CompletionChoice struct {
	Index        int     `json:"index"`
	Text         string  `json:"text"`
	Logprobs     any     `json:"logprobs"`
	FinishReason *string `json:"finish_reason"`
}

// ModelList is the answer of GET /v1/models.
type ModelList struct {
	Object string  `json:"object"` // "list"
	Data   []Model `json:"data"`
}

// Model is one entry of a ModelList. Digest and ContextLength are cocoon's
// additions; vLLM says max_model_len, which decoding accepts too. Extra holds
// further fields (a gateway's prices, TEE kind), encoded beside the others.
type Model struct {
	ID            string         `json:"id"`
	Object        string         `json:"object"` // "model"
	Created       int64          `json:"created"`
	OwnedBy       string         `json:"owned_by"`
	Digest        string         `json:"digest,omitempty"`
	ContextLength int            `json:"context_length,omitempty"`
	MaxModelLen   int            `json:"max_model_len,omitempty"`
	Extra         map[string]any `json:"-"`
}

func (m Model) MarshalJSON() ([]byte, error) {
	type plain Model
	b, err := json.Marshal(plain(m))
	if err != nil || len(m.Extra) == 0 {
		return b, err
	}
	all := map[string]any{}
	maps.Copy(all, m.Extra)
	var fields map[string]any
	if err := json.Unmarshal(b, &fields); err != nil {
		return nil, err
	}
	maps.Copy(all, fields) // the standard fields win over Extra
	return json.Marshal(all)
}

// ErrorResponse is the body of every error answer, and of an error event in a stream.
type ErrorResponse struct {
	Error ErrorBody `json:"error"`
}

// ErrorBody is the OpenAI error object.
type ErrorBody struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}
