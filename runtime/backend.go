package runtime

import (
	"context"
	"encoding/json"
	"errors"
)

// Model describes one model a backend serves.
type Model struct {
	ID            string // name clients ask for, e.g. "stories260K"
	Digest        string // "sha256:<hex>" of the weights file, "" when the upstream does not say
	ContextLength int    // tokens
	// StructuredOutput: the backend follows a Request's Format (json_object
	// and json_schema). A backend that does not declare it is never given one:
	// Generate refuses such a request rather than answer it as free text.
	StructuredOutput bool
}

// Message is one chat message.
type Message struct {
	Role    string // system, user, assistant
	Content string
}

// Request is one generation. Either Messages (chat) or Prompt (raw completion) is set.
type Request struct {
	Model       string
	Messages    []Message
	Prompt      string
	MaxTokens   int      // 0: backend default
	Temperature float64  // 0: greedy
	TopP        float64  // 0: 1.0
	Stop        []string // generation ends before any of these
	Seed        *uint64  // nil: random
	// Continuation is text already delivered to the caller for this request (by
	// another worker that failed): the backend resumes after it, and neither bills
	// nor repeats it.
	Continuation string
	// Format asks for structured output; nil: free text. Only a model whose
	// Model.StructuredOutput is set serves it.
	Format *ResponseFormat
}

// Response format types, as in the OpenAI API's response_format.type.
const (
	FormatJSONObject = "json_object" // any JSON object
	FormatJSONSchema = "json_schema" // JSON valid for Schema
)

// ResponseFormat is OpenAI's response_format other than "text": the output
// is one JSON object, or one JSON value valid for a JSON Schema. Check
// holds Schema to what runtime/grammar can follow exactly, so that every
// backend that declares StructuredOutput can guarantee it.
type ResponseFormat struct {
	Type   string          // FormatJSONObject or FormatJSONSchema
	Name   string          // json_schema: the schema's name (letters, digits, _ and -; at most 64)
	Schema json.RawMessage // json_schema: the JSON Schema
	Strict bool            // json_schema: OpenAI's strict; the embedded backend is always strict
}

// Delta is a piece of generated text.
//
// Over a whole stream the Tokens of all deltas add up to
// Usage().CompletionTokens. A delta may carry tokens with empty Text (the
// tokens of a stop sequence, which is not sent; or, for a backend that learns
// the counts only at the end, as the openai backend does, all of them in a
// last delta) or text with Tokens 0.
type Delta struct {
	Text   string
	Tokens int // completion tokens in this delta (from the backend's tokenizer)
}

// Usage counts tokens with the backend's own tokenizer, never by bytes.
type Usage struct {
	PromptTokens     int
	CompletionTokens int
}

// Finish reasons, as in the OpenAI API.
const (
	FinishStop   = "stop"
	FinishLength = "length"
)

// Stream yields the deltas of one generation. Recv returns io.EOF after the last
// delta; Usage and FinishReason are valid after that. Close releases the
// generation's slot and may be called at any time; a Stream is used by one
// goroutine.
type Stream interface {
	Recv() (Delta, error)
	Usage() Usage
	FinishReason() string
	Close() error
}

// Backend runs generations. Implementations are safe for concurrent use.
type Backend interface {
	Models() []Model
	Generate(ctx context.Context, req Request) (Stream, error)
	Close() error
}

// ErrUnknownModel is returned by Generate for a model the backend does not serve.
var ErrUnknownModel = errors.New("runtime: unknown model")

// ErrNoStructuredOutput is returned by Generate for a request with a Format
// on a model that does not declare Model.StructuredOutput. It is an
// ErrInvalidRequest: the caller asked for what the model cannot do.
var ErrNoStructuredOutput = &FieldError{Field: "response_format", Msg: "the model does not offer structured output (json_object, json_schema)"}

// Errors a Backend returns, so that callers (the OpenAI handler, the market) can
// map them to status codes and wire reject codes. Backends wrap them with detail.
var (
	// ErrBusy: every slot is taken and the queue is full.
	ErrBusy = errors.New("runtime: busy")
	// ErrInvalidRequest: the request cannot be served as given (empty prompt,
	// prompt longer than the context, bad sampling parameter).
	ErrInvalidRequest = errors.New("runtime: invalid request")
	// ErrUpstream: an upstream inference server failed, timed out or answered
	// something that is not the OpenAI API.
	ErrUpstream = errors.New("runtime: upstream failed")
	// ErrUnbillable: the upstream did not report token usage, so the generation
	// cannot be billed and is refused rather than metered by guesswork.
	ErrUnbillable = errors.New("runtime: upstream reported no usage")
	// ErrClosed: the backend was closed.
	ErrClosed = errors.New("runtime: backend closed")
)
