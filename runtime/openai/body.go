package openai

import (
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

// The bodies sent upstream. They are this package's own, not
// runtime/openaiapi's request types: those are what the network accepts
// from a client, these are what an upstream is sent, and the two differ
// (content parts, tool calls, vLLM's extensions).

// chatRequest is POST {base}/chat/completions.
type chatRequest struct {
	Model            string                    `json:"model"`
	Messages         []chatMessage             `json:"messages"`
	MaxTokens        *int                      `json:"max_tokens,omitempty"`
	Temperature      *float64                  `json:"temperature,omitempty"`
	TopP             *float64                  `json:"top_p,omitempty"`
	Stop             []string                  `json:"stop,omitempty"`
	Seed             *int64                    `json:"seed,omitempty"`
	PresencePenalty  float64                   `json:"presence_penalty,omitempty"`
	FrequencyPenalty float64                   `json:"frequency_penalty,omitempty"`
	LogitBias        map[string]float64        `json:"logit_bias,omitempty"`
	Logprobs         bool                      `json:"logprobs,omitempty"`
	TopLogprobs      int                       `json:"top_logprobs,omitempty"`
	ResponseFormat   *openaiapi.ResponseFormat `json:"response_format,omitempty"`
	Tools            []tool                    `json:"tools,omitempty"`
	ToolChoice       any                       `json:"tool_choice,omitempty"` // "auto", "none", "required" or a toolChoiceFunction
	ParallelToolCall *bool                     `json:"parallel_tool_calls,omitempty"`
	Stream           bool                      `json:"stream"`
	StreamOptions    *openaiapi.StreamOptions  `json:"stream_options,omitempty"`
	// vLLM's extensions, sent to resume a generation: the last message is
	// an assistant message to continue.
	ContinueFinalMessage bool  `json:"continue_final_message,omitempty"`
	AddGenerationPrompt  *bool `json:"add_generation_prompt,omitempty"`
}

// chatMessage is one message; Content is a string, null (an assistant
// message that only calls tools) or []contentPart (a user message with images).
type chatMessage struct {
	Role       string         `json:"role"`
	Content    any            `json:"content"`
	ToolCalls  []toolCallWire `json:"tool_calls,omitempty"`
	ToolCallID string         `json:"tool_call_id,omitempty"`
}

type contentPart struct {
	Type     string    `json:"type"` // "text" or "image_url"
	Text     string    `json:"text,omitempty"`
	ImageURL *imageURL `json:"image_url,omitempty"`
}

type imageURL struct {
	URL    string `json:"url"`
	Detail string `json:"detail,omitempty"`
}

type tool struct {
	Type     string       `json:"type"` // "function"
	Function toolFunction `json:"function"`
}

type toolFunction struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Parameters  json.RawMessage `json:"parameters,omitempty"`
	Strict      bool            `json:"strict,omitempty"`
}

type toolChoiceFunction struct {
	Type     string `json:"type"` // "function"
	Function struct {
		Name string `json:"name"`
	} `json:"function"`
}

// toolCallWire is an assistant message's tool call.
type toolCallWire struct {
	ID       string `json:"id"`
	Type     string `json:"type"` // "function"
	Function struct {
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

// completionRequest is POST {base}/completions.
type completionRequest struct {
	Model            string                   `json:"model"`
	Prompt           string                   `json:"prompt"`
	MaxTokens        *int                     `json:"max_tokens,omitempty"`
	Temperature      *float64                 `json:"temperature,omitempty"`
	TopP             *float64                 `json:"top_p,omitempty"`
	Stop             []string                 `json:"stop,omitempty"`
	Seed             *int64                   `json:"seed,omitempty"`
	PresencePenalty  float64                  `json:"presence_penalty,omitempty"`
	FrequencyPenalty float64                  `json:"frequency_penalty,omitempty"`
	LogitBias        map[string]float64       `json:"logit_bias,omitempty"`
	Stream           bool                     `json:"stream"`
	StreamOptions    *openaiapi.StreamOptions `json:"stream_options,omitempty"`
}

// upstreamBody is the JSON sent upstream, and whether it is a chat. The
// caller has applied Model.Serves: every field here is one the model
// declared.
func upstreamBody(req runtime.Request, continuous bool) ([]byte, bool, error) {
	var maxTok *int
	if req.MaxTokens > 0 {
		maxTok = &req.MaxTokens
	}
	temp := req.Temperature
	var topP *float64
	if req.TopP > 0 {
		topP = &req.TopP
	}
	var seed *int64
	if req.Seed != nil {
		v := int64(*req.Seed)
		seed = &v
	}
	var bias map[string]float64
	if len(req.LogitBias) > 0 {
		bias = make(map[string]float64, len(req.LogitBias))
		for id, b := range req.LogitBias {
			bias[strconv.FormatInt(int64(id), 10)] = b
		}
	}
	opts := &openaiapi.StreamOptions{IncludeUsage: true, ContinuousUsageStats: continuous}
	if len(req.Messages) > 0 {
		c := chatRequest{Model: req.Model, MaxTokens: maxTok, Temperature: &temp, TopP: topP, Stop: req.Stop, Seed: seed,
			PresencePenalty: req.PresencePenalty, FrequencyPenalty: req.FrequencyPenalty, LogitBias: bias,
			Logprobs: req.Logprobs, TopLogprobs: req.TopLogprobs, Stream: true, StreamOptions: opts}
		for _, m := range req.Messages {
			c.Messages = append(c.Messages, message(m))
		}
		if f := req.Format; f != nil {
			c.ResponseFormat = &openaiapi.ResponseFormat{Type: f.Type}
			if f.Type == runtime.FormatJSONSchema {
				c.ResponseFormat.JSONSchema = &openaiapi.JSONSchema{Name: f.Name, Schema: f.Schema}
				if f.Strict {
					c.ResponseFormat.JSONSchema.Strict = &f.Strict
				}
			}
		}
		for _, t := range req.Tools {
			c.Tools = append(c.Tools, tool{Type: "function", Function: toolFunction{Name: t.Name, Description: t.Description,
				Parameters: t.Parameters, Strict: t.Strict}})
		}
		switch tc := req.ToolChoice; tc.Mode {
		case "": // the upstream's default is the same as ours
		case runtime.ToolChoiceFunction:
			f := toolChoiceFunction{Type: "function"}
			f.Function.Name = tc.Name
			c.ToolChoice = f
		default:
			c.ToolChoice = tc.Mode
		}
		if req.SingleToolCall && len(req.Tools) > 0 { // OpenAI refuses parallel_tool_calls without tools
			no := false
			c.ParallelToolCall = &no
		}
		if req.Continuation != "" {
			no := false
			c.Messages = append(c.Messages, chatMessage{Role: "assistant", Content: req.Continuation})
			c.ContinueFinalMessage, c.AddGenerationPrompt = true, &no
		}
		b, err := json.Marshal(c)
		return b, true, err
	}
	if req.Prompt == "" {
		return nil, false, fmt.Errorf("%w: empty prompt", runtime.ErrInvalidRequest)
	}
	// OpenAI's completions take no response_format or tools, and answer
	// logprobs in another shape (token_logprobs), which Delta does not carry.
	switch {
	case req.Format != nil:
		return nil, false, &runtime.FieldError{Field: "response_format", Msg: "given with a prompt: the upstream takes it with messages only"}
	case len(req.Tools) > 0:
		return nil, false, &runtime.FieldError{Field: "tools", Msg: "given with a prompt: the upstream takes them with messages only"}
	case req.Logprobs:
		return nil, false, &runtime.FieldError{Field: "logprobs", Msg: "given with a prompt: this backend forwards logprobs with messages only"}
	}
	c := completionRequest{Model: req.Model, Prompt: req.Prompt + req.Continuation, MaxTokens: maxTok, Temperature: &temp,
		TopP: topP, Stop: req.Stop, Seed: seed, PresencePenalty: req.PresencePenalty, FrequencyPenalty: req.FrequencyPenalty,
		LogitBias: bias, Stream: true, StreamOptions: opts}
	b, err := json.Marshal(c)
	return b, false, err
}

// message is m as the upstream takes it: a user message with images
// becomes content parts, the text split where each image stood.
func message(m runtime.Message) chatMessage {
	out := chatMessage{Role: m.Role, Content: m.Content, ToolCallID: m.ToolCallID}
	for _, c := range m.ToolCalls {
		w := toolCallWire{ID: c.ID, Type: "function"}
		w.Function.Name, w.Function.Arguments = c.Name, c.Arguments
		out.ToolCalls = append(out.ToolCalls, w)
	}
	if len(m.ToolCalls) > 0 && m.Content == "" {
		out.Content = nil // as OpenAI's own clients send a call-only message
	}
	if len(m.Images) > 0 {
		var parts []contentPart
		at := 0
		for _, im := range m.Images {
			// Request.Check holds At within the content and in order;
			// clamp anyway rather than panic on an unchecked request.
			end := min(max(im.At, at), len(m.Content))
			if end > at {
				parts = append(parts, contentPart{Type: "text", Text: m.Content[at:end]})
			}
			at = end
			parts = append(parts, contentPart{Type: "image_url", ImageURL: &imageURL{URL: im.URL, Detail: im.Detail}})
		}
		if at < len(m.Content) {
			parts = append(parts, contentPart{Type: "text", Text: m.Content[at:]})
		}
		out.Content = parts
	}
	return out
}
