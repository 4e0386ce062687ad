package openaiapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
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
	if s.n != nil && *s.n != 1 {
		return badRequest("n", "only n = 1 is supported, not %d", *s.n)
	}
	return nil
}

// check applies runtime.Request.Check, the rule every edge applies, and
// turns its refusal into a 400 naming the field.
func check(rr runtime.Request) error {
	var fe *runtime.FieldError
	if err := rr.Check(); errors.As(err, &fe) {
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
		if last.Role != "assistant" {
			return runtime.Request{}, badRequest("messages", "continue_final_message needs an assistant message last")
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
		rr.Messages = append(rr.Messages, runtime.Message{Role: m.Role, Content: string(m.Content)})
	}
	max := req.MaxTokens
	if req.MaxCompletionTokens != nil {
		max = req.MaxCompletionTokens
	}
	err := sampling{max, req.Temperature, req.TopP, req.Stop, req.Seed, req.N}.apply(&rr)
	if err == nil {
		rr.Format, err = req.ResponseFormat.runtime()
	}
	if err == nil {
		err = check(rr)
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
		return &runtime.ResponseFormat{Type: f.Type, Name: js.Name, Schema: js.Schema, Strict: js.Strict != nil && *js.Strict}, nil
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
	if err := check(rr); err != nil {
		return runtime.Request{}, err
	}
	return rr, nil
}
