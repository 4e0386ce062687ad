package openaiapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
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

	// Extensions understood by vLLM (and sent by the openai backend to resume
	// a generation): the last message is an assistant message to continue.
	ContinueFinalMessage bool  `json:"continue_final_message,omitempty"`
	AddGenerationPrompt  *bool `json:"add_generation_prompt,omitempty"`
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
}

// StreamOptions asks for a last chunk with the usage.
type StreamOptions struct {
	IncludeUsage bool `json:"include_usage"`
	// ContinuousUsageStats is vLLM's extension: every chunk carries the
	// usage so far, so tokens are known per chunk.
	ContinuousUsageStats bool `json:"continuous_usage_stats,omitempty"`
}

// ChatMessage is one message. Content is a string or, on input, an array of
// text parts, which are joined; a message's other fields (name, tool_calls,
// ...) are refused by the decoder unless empty.
type ChatMessage struct {
	Role    string  `json:"role"`
	Content Content `json:"content"`
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
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*p = Prompt(s)
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return fmt.Errorf("prompt must be a string (token arrays are not supported)")
	}
	if len(many) != 1 {
		return fmt.Errorf("prompt must be one string, not an array of %d", len(many))
	}
	*p = Prompt(many[0])
	return nil
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
	FinishReason *string    `json:"finish_reason"`
}

// ChunkDelta is the new part of the message.
type ChunkDelta struct {
	Role    string  `json:"role,omitempty"`
	Content *string `json:"content,omitempty"`
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
