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
	// What the model offers beyond plain text generation. A request that uses
	// a capability the model does not declare is refused by Model.Serves,
	// naming the field, rather than answered as if it had asked for less;
	// every backend's Generate applies that rule.
	//
	// StructuredOutput: it follows a Request's Format (json_object and
	// json_schema).
	StructuredOutput bool
	// Tools: it follows Request.Tools and ToolChoice, answers with
	// Delta.ToolCalls, and reads assistant tool calls and tool results in
	// the messages.
	Tools bool
	// Logprobs: it fills Delta.Logprobs when Request.Logprobs is set.
	Logprobs bool
	// LogitBias: it follows Request.LogitBias.
	LogitBias bool
	// Images: it reads Message.Images.
	Images bool
	// Embeddings: the backend's Embed serves it (the backend is an
	// Embedder); EmbeddingDims is the length of its vectors.
	Embeddings    bool
	EmbeddingDims int
}

// Message is one chat message.
type Message struct {
	Role    string // system, developer, user, assistant, tool
	Content string
	// Images sit in the content (a user message's image_url parts); only a
	// model that declares Images is given one.
	Images []Image `json:",omitempty"`
	// ToolCalls are the calls an assistant message made (its content may be
	// empty then).
	ToolCalls []ToolCall `json:",omitempty"`
	// ToolCallID: a tool message is the result of this call.
	ToolCallID string `json:",omitempty"`
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
	Format *ResponseFormat `json:",omitempty"`
	// Tools the model may call, and whether it must; only a model whose
	// Model.Tools is set is given them.
	Tools      []Tool     `json:",omitempty"`
	ToolChoice ToolChoice `json:",omitzero"`
	// SingleToolCall: the answer makes at most one call (OpenAI's
	// parallel_tool_calls false).
	SingleToolCall bool `json:",omitempty"`
	// Logprobs asks for each content token's log probability, and the
	// TopLogprobs (0 to MaxTopLogprobs) likeliest tokens at each position.
	Logprobs    bool `json:",omitempty"`
	TopLogprobs int  `json:",omitempty"`
	// Penalties in [-2, 2], as OpenAI's presence_penalty and
	// frequency_penalty; 0: none.
	PresencePenalty  float64 `json:",omitempty"`
	FrequencyPenalty float64 `json:",omitempty"`
	// LogitBias adds a bias in [-100, 100] to the logits of token ids of
	// the model's vocabulary (OpenAI's logit_bias); a backend refuses an id
	// outside its vocabulary.
	LogitBias map[int32]float64 `json:",omitempty"`
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
	// ToolCalls are pieces of the answer's tool calls, as OpenAI streams
	// them: the first piece of call Index gives its ID and Name, later
	// pieces append to its Arguments.
	ToolCalls []ToolCallDelta `json:",omitempty"`
	// Logprobs are those of Text's tokens, when the request asked for them.
	Logprobs []TokenLogprob `json:",omitempty"`
	// Refusal is text of the model's refusal (OpenAI's message.refusal),
	// which an upstream may send instead of content.
	Refusal string `json:",omitempty"`
}

// Usage counts tokens with the backend's own tokenizer, never by bytes.
type Usage struct {
	PromptTokens     int
	CompletionTokens int
}

// Finish reasons, as in the OpenAI API.
const (
	FinishStop      = "stop"
	FinishLength    = "length"
	FinishToolCalls = "tool_calls" // the answer is ToolCalls
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

// ErrNoStructuredOutput is what Model.Serves returns for a request with a
// Format on a model that does not declare StructuredOutput.
var ErrNoStructuredOutput = &FieldError{Field: "response_format", Msg: "the model does not offer structured output (json_object, json_schema)"}

// Embedder is a Backend that serves embeddings for the models whose
// Model.Embeddings is set.
type Embedder interface {
	Embed(ctx context.Context, req EmbedRequest) (Embeddings, error)
}

// EmbedRequest is one /v1/embeddings call: a vector for each input.
type EmbedRequest struct {
	Model  string
	Inputs []string
}

// Embeddings is Embed's answer: one vector per input, in order, each of the
// model's EmbeddingDims, and the tokens read (all inputs together), which is
// what the call costs.
type Embeddings struct {
	Vectors      [][]float32
	PromptTokens int
	// CostNanoTON is set by a backend that bought the embeddings on the
	// network (the client's gateway): what they cost.
	CostNanoTON *uint64
}

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
