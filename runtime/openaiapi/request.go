package openaiapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/cocoon-network/cocoon/runtime"
)

// MaxBodyBytes caps a request body; larger ones are refused with 413.
const MaxBodyBytes = 4 << 20

// MaxStops is the most stop sequences a request may give (as OpenAI).
const MaxStops = runtime.MaxStops

// decodeJSON reads one JSON object of at most MaxBodyBytes from r into v,
// after check (the allow-list of params.go) has found no key it refuses.
func decodeJSON(r io.Reader, v any, check func([]byte) error) error {
	body, err := io.ReadAll(io.LimitReader(r, MaxBodyBytes+1))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &Error{Status: http.StatusRequestEntityTooLarge, Type: "invalid_request_error", Code: "request_too_large",
				Message: "request body over 4 MiB"}
		}
		return badRequest("", "read request body: %v", err)
	}
	if len(body) > MaxBodyBytes {
		return &Error{Status: http.StatusRequestEntityTooLarge, Type: "invalid_request_error", Code: "request_too_large",
			Message: "request body over 4 MiB"}
	}
	if err := check(body); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return badRequest(te.Field, "%s must be %s, not %s", te.Field, te.Type, te.Value)
		}
		return badRequest("", "request body is not valid JSON: %v", err)
	}
	if dec.More() {
		return badRequest("", "request body holds more than one JSON value")
	}
	return nil
}

// DecodeChatRequest reads and checks a chat completion request and converts
// it to a runtime.Request. Errors are *Error with status 400 or 413; a field
// the network does not honour is refused by name (see params.go), never
// dropped.
func DecodeChatRequest(r io.Reader) (ChatCompletionRequest, runtime.Request, error) {
	var req ChatCompletionRequest
	if err := decodeJSON(r, &req, checkChatFields); err != nil {
		return req, runtime.Request{}, err
	}
	rr, err := req.Runtime()
	return req, rr, err
}

// DecodeCompletionRequest reads and checks a completion request and converts
// it to a runtime.Request, as DecodeChatRequest.
func DecodeCompletionRequest(r io.Reader) (CompletionRequest, runtime.Request, error) {
	var req CompletionRequest
	if err := decodeJSON(r, &req, checkCompletionFields); err != nil {
		return req, runtime.Request{}, err
	}
	rr, err := req.Runtime()
	return req, rr, err
}

type sampling struct {
	maxTokens   *int
	temperature *float64
	topP        *float64
	stop        StopList
	seed        *int64
	n           *int
}

func (s sampling) apply(rr *runtime.Request) error {
	if s.maxTokens != nil {
		if *s.maxTokens < 1 {
			return badRequest("max_tokens", "max_tokens must be at least 1, not %d", *s.maxTokens)
		}
		rr.MaxTokens = *s.maxTokens
	}
	// OpenAI's default temperature is 1.
	rr.Temperature = 1
	if s.temperature != nil {
		if *s.temperature < 0 || *s.temperature > 2 {
			return badRequest("temperature", "temperature must be in [0, 2], not %g", *s.temperature)
		}
		rr.Temperature = *s.temperature
	}
	if s.topP != nil {
		if *s.topP <= 0 || *s.topP > 1 {
			return badRequest("top_p", "top_p must be in (0, 1], not %g", *s.topP)
		}
		rr.TopP = *s.topP
	}
	if len(s.stop) > MaxStops {
		return badRequest("stop", "at most %d stop sequences, not %d", MaxStops, len(s.stop))
	}
	for _, st := range s.stop {
		if st == "" {
			return badRequest("stop", "stop sequences must not be empty")
		}
	}
	rr.Stop = s.stop
	if s.seed != nil {
		v := uint64(*s.seed)
		rr.Seed = &v
	}
	if s.n != nil && *s.n > 1 {
		return refuse("n", "unsupported_value", "n = %d: one choice per request is supported: refused rather than ignored", *s.n)
	}
	if s.n != nil && *s.n < 1 {
		return badRequest("n", "n must be 1, not %d", *s.n)
	}
	return nil
}

// penalties are the sampling fields both endpoints share beyond sampling:
// presence_penalty, frequency_penalty and logit_bias.
type penalties struct {
	presence, frequency *float64
	logitBias           map[string]float64
}

// apply converts them; their ranges are checked by runtime.Request.Check.
func (p penalties) apply(rr *runtime.Request) error {
	if p.presence != nil {
		rr.PresencePenalty = *p.presence
	}
	if p.frequency != nil {
		rr.FrequencyPenalty = *p.frequency
	}
	var err error
	rr.LogitBias, err = logitBias(p.logitBias)
	return err
}

// logitBias converts logit_bias: each key must be a token id written in
// decimal, in int32 range (checked before anything narrows it). A zero
// bias asks for nothing and is dropped, so that {"50256": 0}, which SDKs
// may send, reaches no backend as a capability it must declare.
func logitBias(m map[string]float64) (map[int32]float64, error) {
	if len(m) > runtime.MaxLogitBias {
		return nil, badRequest("logit_bias", "logit_bias has %d entries, at most %d", len(m), runtime.MaxLogitBias)
	}
	var out map[int32]float64
	for _, k := range slices.Sorted(maps.Keys(m)) {
		digits := strings.TrimPrefix(k, "-")
		id, err := strconv.ParseInt(k, 10, 32)
		if digits == "" || strings.Trim(digits, "0123456789") != "" || err != nil {
			return nil, badRequest("logit_bias", "logit_bias key %.32q is not a token id (a decimal integer below 2^31)", k)
		}
		if id < 0 {
			return nil, badRequest("logit_bias", "logit_bias key %s is negative, not a token id", k)
		}
		if _, dup := out[int32(id)]; dup {
			return nil, badRequest("logit_bias", "logit_bias gives token %d twice", id)
		}
		if m[k] == 0 {
			continue
		}
		if out == nil {
			out = map[int32]float64{}
		}
		out[int32(id)] = m[k]
	}
	return out, nil
}

// canonicalJSON is raw JSON (a schema) compacted and HTML-escaped, as
// encoding/json writes a json.RawMessage, so that the request a gateway
// forwards converts to the same bytes; JSON null is no value.
func canonicalJSON(raw json.RawMessage) json.RawMessage {
	var c, e bytes.Buffer
	if json.Compact(&c, raw) != nil {
		return raw // not JSON: the check that follows says so
	}
	if c.String() == "null" {
		return nil
	}
	json.HTMLEscape(&e, c.Bytes())
	return e.Bytes()
}

// check takes the verdict of runtime.Request.Check (or EmbedRequest.Check),
// the rule every edge applies, and turns its refusal into a 400 naming the
// field.
func check(err error) error {
	var fe *runtime.FieldError
	if errors.As(err, &fe) {
		return badRequest(fe.Field, "%s: %s", fe.Field, fe.Msg)
	} else if err != nil {
		return badRequest("", "%v", err)
	}
	return nil
}

// Runtime checks the request and converts it.
func (req ChatCompletionRequest) Runtime() (runtime.Request, error) {
	if req.Model == "" {
		return runtime.Request{}, badRequest("model", "model is required")
	}
	if len(req.Messages) == 0 {
		return runtime.Request{}, badRequest("messages", "messages must hold at least one message")
	}
	if g := req.AddGenerationPrompt; g != nil && *g == req.ContinueFinalMessage {
		// The prompt either continues the last message or opens a new one.
		if *g {
			return runtime.Request{}, badRequest("add_generation_prompt", "add_generation_prompt and continue_final_message cannot both be true")
		}
		return runtime.Request{}, refuse("add_generation_prompt", "unsupported_parameter",
			"add_generation_prompt false is supported only with continue_final_message true: refused rather than ignored")
	}
	rr := runtime.Request{Model: req.Model}
	msgs := req.Messages
	if req.ContinueFinalMessage {
		last := msgs[len(msgs)-1]
		if last.Role != "assistant" || len(last.ToolCalls) > 0 || last.Refusal != nil && *last.Refusal != "" {
			return runtime.Request{}, badRequest("messages", "continue_final_message needs an assistant message last, without tool calls")
		}
		rr.Continuation = string(last.Content)
		msgs = msgs[:len(msgs)-1]
		if len(msgs) == 0 {
			return runtime.Request{}, badRequest("messages", "messages must hold a message before the one to continue")
		}
	}
	for i, m := range msgs {
		switch m.Role {
		case "system", "user", "assistant", "developer", "tool":
		default:
			return runtime.Request{}, badRequest("messages", "messages[%d].role %q is not system, user, assistant, developer or tool", i, m.Role)
		}
		msg := runtime.Message{Role: m.Role, Content: string(m.Content), Images: m.Images, ToolCallID: m.ToolCallID}
		for _, c := range m.ToolCalls {
			msg.ToolCalls = append(msg.ToolCalls, runtime.ToolCall{ID: c.ID, Name: c.Function.Name, Arguments: c.Function.Arguments})
		}
		rr.Messages = append(rr.Messages, msg)
	}
	for _, t := range req.Tools {
		rr.Tools = append(rr.Tools, runtime.Tool{Name: t.Function.Name, Description: t.Function.Description,
			Parameters: canonicalJSON(t.Function.Parameters), Strict: t.Function.Strict != nil && *t.Function.Strict})
	}
	if c := req.ToolChoice; c != nil {
		rr.ToolChoice = runtime.ToolChoice{Mode: c.Mode, Name: c.Name}
		if len(rr.Tools) == 0 && (c.Mode == runtime.ToolChoiceNone || c.Mode == runtime.ToolChoiceAuto) {
			// Without tools, either is the default: text only.
			rr.ToolChoice = runtime.ToolChoice{}
		}
	}
	// parallel_tool_calls false without tools asks for nothing.
	rr.SingleToolCall = req.ParallelToolCalls != nil && !*req.ParallelToolCalls && len(rr.Tools) > 0
	rr.Logprobs = req.Logprobs
	if req.TopLogprobs != nil {
		rr.TopLogprobs = *req.TopLogprobs
	}
	max := req.MaxTokens
	if req.MaxCompletionTokens != nil {
		max = req.MaxCompletionTokens
	}
	err := sampling{max, req.Temperature, req.TopP, req.Stop, req.Seed, req.N}.apply(&rr)
	if err == nil {
		err = penalties{req.PresencePenalty, req.FrequencyPenalty, req.LogitBias}.apply(&rr)
	}
	if err == nil {
		rr.Format, err = req.ResponseFormat.runtime()
	}
	if err == nil {
		err = check(rr.Check())
	}
	if err != nil {
		if e := (*Error)(nil); errors.As(err, &e) && e.Param == "max_tokens" && req.MaxCompletionTokens != nil {
			e.Param = "max_completion_tokens"
			e.Message = strings.Replace(e.Message, "max_tokens", "max_completion_tokens", 1)
		}
		return runtime.Request{}, err
	}
	return rr, nil
}

// runtime converts response_format; its values are checked by
// runtime.Request.Check (the schema by converting it to a grammar).
func (f *ResponseFormat) runtime() (*runtime.ResponseFormat, error) {
	if f == nil {
		return nil, nil
	}
	switch f.Type {
	case "text", runtime.FormatJSONObject:
		if f.JSONSchema != nil {
			return nil, badRequest("response_format.json_schema", "response_format.json_schema is given with type %q", f.Type)
		}
		if f.Type == "text" {
			return nil, nil
		}
		return &runtime.ResponseFormat{Type: f.Type}, nil
	case runtime.FormatJSONSchema:
		js := f.JSONSchema
		if js == nil {
			return nil, badRequest("response_format.json_schema", "response_format.json_schema is required with type json_schema")
		}
		return &runtime.ResponseFormat{Type: f.Type, Name: js.Name, Schema: canonicalJSON(js.Schema), Strict: js.Strict != nil && *js.Strict}, nil
	case "":
		return nil, badRequest("response_format.type", "response_format.type is required")
	}
	return nil, refuse("response_format.type", "unsupported_value",
		"response_format.type %.32q is not supported: text, json_object or json_schema", f.Type)
}

// Runtime checks the request and converts it.
func (req CompletionRequest) Runtime() (runtime.Request, error) {
	if req.Model == "" {
		return runtime.Request{}, badRequest("model", "model is required")
	}
	if req.Prompt == "" {
		return runtime.Request{}, badRequest("prompt", "prompt is required")
	}
	if req.Echo {
		return runtime.Request{}, badRequest("echo", "echo is not supported")
	}
	rr := runtime.Request{Model: req.Model, Prompt: string(req.Prompt)}
	if err := (sampling{req.MaxTokens, req.Temperature, req.TopP, req.Stop, req.Seed, req.N}).apply(&rr); err != nil {
		return runtime.Request{}, err
	}
	if err := (penalties{req.PresencePenalty, req.FrequencyPenalty, req.LogitBias}).apply(&rr); err != nil {
		return runtime.Request{}, err
	}
	if err := check(rr.Check()); err != nil {
		return runtime.Request{}, err
	}
	return rr, nil
}
