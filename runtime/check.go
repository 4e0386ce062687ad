package runtime

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/cocoon-network/cocoon/runtime/grammar"
)

// Limits on a Request, checked by Check. Each is far above what a real
// request needs and far below what could exhaust a node.
const (
	// MaxTokensLimit is the largest max_tokens a request may ask for (2^24).
	// No served model has a context near it, and it fits every integer type
	// the request passes through (the job protocol carries uint32).
	MaxTokensLimit = 1 << 24
	// MaxMessages is the most messages a chat request may hold.
	MaxMessages = 4096
	// MaxTextBytes caps the prompt, the continuation and all messages'
	// content together: 896 KiB, so that a checked request, with the
	// framing of MaxMessages messages, always fits the job protocol's 1 MiB
	// prompt frame (market.DefaultMaxPromptFrame; a market test holds the
	// two together). A request served locally obeys the same rule.
	MaxTextBytes = 896 << 10
	// MaxStops is the most stop sequences a request may give (as OpenAI).
	MaxStops = 4
	// MaxStopBytes caps one stop sequence.
	MaxStopBytes = 256
	// MaxModelIDBytes caps the model id.
	MaxModelIDBytes = 256
	// MaxContextLength bounds the context a backend may report for a model
	// (2^30 tokens): what an upstream says is checked before the ads carry it
	// as uint32.
	MaxContextLength = 1 << 30
	// MaxSchemaBytes caps response_format's JSON Schema (runtime/grammar's
	// own bound), so that it always fits the job protocol's Open frame.
	MaxSchemaBytes = grammar.MaxSchemaBytes
	// MaxFormatNameBytes caps response_format's json_schema.name (as OpenAI).
	MaxFormatNameBytes = 64
)

// Check reports the first thing wrong with req as a *FieldError (which is an
// ErrInvalidRequest) naming the OpenAI field at fault. It is the
// one rule for what may reach a backend, applied at every edge a stranger's
// request crosses: the gateway (runtime/openaiapi), the worker side of the job
// protocol (market) and the engine supervisor (runtime/runner). Text must be
// valid UTF-8 without NUL (native tokenizers take C strings: a NUL cut the
// string or made it a null pointer, which aborted llama.cpp); integers are
// range-checked before anything narrows them; floats must be finite and in
// range (NaN passes every comparison, so each check is written to fail on it).
func (req Request) Check() error {
	bad := func(field, format string, args ...any) error {
		return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	if err := req.CheckParams(); err != nil {
		return err
	}
	switch {
	case len(req.Messages) > 0 && req.Prompt != "":
		return bad("messages", "both messages and prompt given")
	case len(req.Messages) == 0 && req.Prompt == "":
		return bad("messages", "empty: give messages or a prompt")
	case len(req.Messages) > MaxMessages:
		return bad("messages", "%d messages, at most %d", len(req.Messages), MaxMessages)
	}
	size := len(req.Prompt) + len(req.Continuation)
	images, imageBytes := 0, 0
	if err := checkText(req.Prompt); err != nil {
		return bad("prompt", "%v", err)
	}
	if err := checkText(req.Continuation); err != nil {
		return bad("continuation", "%v", err)
	}
	for i, m := range req.Messages {
		switch m.Role {
		case "system", "user", "assistant", "developer", "tool":
		default:
			return bad(fmt.Sprintf("messages[%d].role", i), "%q is not system, user, assistant, developer or tool", truncate(m.Role))
		}
		if err := checkText(m.Content); err != nil {
			return bad(fmt.Sprintf("messages[%d].content", i), "%v", err)
		}
		text, image, err := checkMessageExtras(i, m)
		if err != nil {
			return err
		}
		size += len(m.Content) + text
		images += len(m.Images)
		imageBytes += image
	}
	if size > MaxTextBytes {
		return bad("messages", "%d bytes of text, at most %d", size, MaxTextBytes)
	}
	if images > MaxImages {
		return bad("messages", "%d images, at most %d", images, MaxImages)
	}
	if imageBytes > MaxImageBytes {
		return bad("messages", "%d bytes of images, at most %d", imageBytes, MaxImageBytes)
	}
	return nil
}

// CheckParams is the part of Check that needs no text: the model id and the
// sampling parameters. The worker applies it to a job's Open, before it
// accepts and the prompt arrives.
func (req Request) CheckParams() error {
	bad := func(field, format string, args ...any) error {
		return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	if req.Model == "" {
		return bad("model", "missing")
	}
	if len(req.Model) > MaxModelIDBytes {
		return bad("model", "%d bytes, at most %d", len(req.Model), MaxModelIDBytes)
	}
	if err := checkText(req.Model); err != nil {
		return bad("model", "%v", err)
	}
	switch {
	case req.MaxTokens < 0:
		return bad("max_tokens", "%d is negative", req.MaxTokens)
	case req.MaxTokens > MaxTokensLimit:
		return bad("max_tokens", "%d is above the limit of %d", req.MaxTokens, MaxTokensLimit)
	case !(req.Temperature >= 0 && req.Temperature <= 2):
		return bad("temperature", "%g is outside [0, 2]", req.Temperature)
	case !(req.TopP >= 0 && req.TopP <= 1):
		return bad("top_p", "%g is outside [0, 1]", req.TopP)
	case len(req.Stop) > MaxStops:
		return bad("stop", "%d stop sequences, at most %d", len(req.Stop), MaxStops)
	}
	for i, s := range req.Stop {
		if s == "" {
			return bad(fmt.Sprintf("stop[%d]", i), "empty")
		}
		if len(s) > MaxStopBytes {
			return bad(fmt.Sprintf("stop[%d]", i), "%d bytes, at most %d", len(s), MaxStopBytes)
		}
		if err := checkText(s); err != nil {
			return bad(fmt.Sprintf("stop[%d]", i), "%v", err)
		}
	}
	switch {
	case !(req.PresencePenalty >= -2 && req.PresencePenalty <= 2):
		return bad("presence_penalty", "%g is outside [-2, 2]", req.PresencePenalty)
	case !(req.FrequencyPenalty >= -2 && req.FrequencyPenalty <= 2):
		return bad("frequency_penalty", "%g is outside [-2, 2]", req.FrequencyPenalty)
	case req.TopLogprobs < 0 || req.TopLogprobs > MaxTopLogprobs:
		return bad("top_logprobs", "%d is outside [0, %d]", req.TopLogprobs, MaxTopLogprobs)
	case req.TopLogprobs > 0 && !req.Logprobs:
		return bad("top_logprobs", "given without logprobs")
	case len(req.LogitBias) > MaxLogitBias:
		return bad("logit_bias", "%d entries, at most %d", len(req.LogitBias), MaxLogitBias)
	case req.Prompt != "" && (len(req.Tools) > 0 || req.ToolChoice.Mode != ""):
		return bad("tools", "given for a raw completion")
	}
	for id, b := range req.LogitBias {
		if id < 0 {
			return bad("logit_bias", "token id %d is negative", id)
		}
		if !(b >= -100 && b <= 100) {
			return bad("logit_bias", "bias %g of token %d is outside [-100, 100]", b, id)
		}
	}
	if err := req.checkTools(); err != nil {
		return err
	}
	if req.Format != nil {
		return req.Format.check()
	}
	return nil
}

// check holds a response format to what every backend that declares
// StructuredOutput can follow exactly: a schema runtime/grammar converts.
// The conversion is the check, so that a schema the gateway let through is
// never refused by the engine after a worker accepted the job.
func (f *ResponseFormat) check() error {
	bad := func(field, format string, args ...any) error {
		return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	switch f.Type {
	case FormatJSONObject:
		if f.Name != "" || len(f.Schema) != 0 || f.Strict {
			return bad("response_format.json_schema", "given with type %q", f.Type)
		}
		return nil
	case FormatJSONSchema:
	default:
		return bad("response_format.type", "%q is not json_object or json_schema", truncate(f.Type))
	}
	switch {
	case f.Name == "":
		return bad("response_format.json_schema.name", "missing")
	case len(f.Name) > MaxFormatNameBytes:
		return bad("response_format.json_schema.name", "%d bytes, at most %d", len(f.Name), MaxFormatNameBytes)
	case strings.IndexFunc(f.Name, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-')
	}) >= 0:
		return bad("response_format.json_schema.name", "%q holds a character other than a-z, A-Z, 0-9, _ and -", truncate(f.Name))
	case len(f.Schema) == 0:
		return bad("response_format.json_schema.schema", "missing")
	case len(f.Schema) > MaxSchemaBytes:
		return bad("response_format.json_schema.schema", "%d bytes, at most %d", len(f.Schema), MaxSchemaBytes)
	}
	return checkSchema("response_format.json_schema.schema", f.Schema)
}

// checkSchema holds a JSON Schema (a response format's, a tool's
// parameters) to what runtime/grammar converts. The conversion is the
// check, so that a schema the gateway let through is never refused by the
// engine after a worker accepted the job.
func checkSchema(field string, schema []byte) error {
	if _, err := grammar.FromSchema(schema); err != nil {
		var se *grammar.SchemaError
		if errors.As(err, &se) {
			return &FieldError{Field: field, Msg: strings.TrimPrefix(se.Error(), "grammar: ")}
		}
		return &FieldError{Field: field, Msg: err.Error()}
	}
	return nil
}

// FieldError is a request refused for one field's value. errors.Is(err,
// ErrInvalidRequest) holds for it.
type FieldError struct {
	Field string // as in the OpenAI API: "max_tokens", "messages[2].content"
	Msg   string // what is wrong with it
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("%v: %s: %s", ErrInvalidRequest, e.Field, e.Msg)
}

func (e *FieldError) Unwrap() error { return ErrInvalidRequest }

// errNUL and errUTF8 say why text was refused.
var (
	errNUL  = errors.New("holds a NUL character (U+0000)")
	errUTF8 = errors.New("is not valid UTF-8")
)

func checkText(s string) error {
	if strings.IndexByte(s, 0) >= 0 {
		return errNUL
	}
	if !utf8.ValidString(s) {
		return errUTF8
	}
	return nil
}

// truncate shortens a stranger's string for an error message.
func truncate(s string) string {
	if len(s) <= 32 {
		return s
	}
	return s[:32] + "…"
}
