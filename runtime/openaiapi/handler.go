package openaiapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/cocoon-network/cocoon/runtime"
)

// Hooks a Backend's streams (and the backend) may implement to shape the
// answer; the gateway's network backend uses them. The handler finds them on
// the stream or on any stream it wraps (runtime.StreamAs).
type (
	// HeaderStream: its headers are set on the response before the first
	// byte, e.g. the worker that serves the job and its TEE kind.
	HeaderStream interface{ Header() http.Header }
	// CostStream: once the stream has ended, the usage object gains
	// "cost_nanoton" with what the request cost.
	CostStream interface{ CostNanoTON() uint64 }
	// ModelLister: a Backend that implements it answers GET /v1/models with
	// these entries (which may carry Extra fields such as prices) instead of
	// ones built from Models().
	ModelLister interface {
		ListModels(ctx context.Context) ([]Model, error)
	}
)

// Handler serves the OpenAI API over a runtime.Backend:
//
//	POST /v1/chat/completions  (stream or not)
//	POST /v1/completions       (stream or not)
//	POST /v1/embeddings        (when the Backend is a runtime.Embedder)
//	GET  /v1/models
//
// Errors have OpenAI's body {"error":{"message","type","param","code"}}: 400
// for malformed JSON or fields, 404 for an unknown model, 408 for a body that
// did not arrive before the server's read deadline, 413 for a body over 4 MiB,
// and for failures on the backend's side what ErrorFor says (502, 503, 504). A streaming answer that
// fails after its first byte ends with an error event and no [DONE].
// Handler is safe for concurrent use; its fields must not change once it serves.
type Handler struct {
	Backend runtime.Backend
	Logger  *slog.Logger     // nil: slog.Default()
	Now     func() time.Time // nil: time.Now
	OwnedBy string           // models' owned_by; "": "cocoon"
}

// NewHandler returns a Handler over b.
func NewHandler(b runtime.Backend) *Handler {
	return &Handler{Backend: b}
}

func (h *Handler) log() *slog.Logger {
	if h.Logger != nil {
		return h.Logger
	}
	return slog.Default()
}

func (h *Handler) now() time.Time {
	if h.Now != nil {
		return h.Now()
	}
	return time.Now()
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := strings.TrimSuffix(r.URL.Path, "/")
	var allow string
	switch path {
	case "/v1/chat/completions", "/v1/completions", "/v1/embeddings":
		allow = http.MethodPost
	case "/v1/models":
		allow = http.MethodGet
	default:
		h.writeError(w, &Error{Status: http.StatusNotFound, Type: "invalid_request_error", Code: "unknown_url",
			Message: "unknown path " + r.URL.Path + " (this server has /v1/chat/completions, /v1/completions, /v1/embeddings and /v1/models)"})
		return
	}
	if r.Method != allow {
		w.Header().Set("Allow", allow)
		h.writeError(w, &Error{Status: http.StatusMethodNotAllowed, Type: "invalid_request_error",
			Message: r.Method + " " + path + " is not allowed; use " + allow})
		return
	}
	switch path {
	case "/v1/models":
		h.models(w, r)
	case "/v1/embeddings":
		h.embeddings(w, r)
	case "/v1/chat/completions":
		body := &bodyReader{r: http.MaxBytesReader(w, r.Body, MaxBodyBytes)}
		req, rr, err := DecodeChatRequest(body)
		if err != nil {
			h.writeError(w, body.errorFor(w, err))
			return
		}
		h.generate(w, r, rr, req.Stream, req.StreamOptions, true)
	case "/v1/completions":
		body := &bodyReader{r: http.MaxBytesReader(w, r.Body, MaxBodyBytes)}
		req, rr, err := DecodeCompletionRequest(body)
		if err != nil {
			h.writeError(w, body.errorFor(w, err))
			return
		}
		h.generate(w, r, rr, req.Stream, req.StreamOptions, false)
	}
}

// bodyReader remembers the error of reading the request body, which the
// decoders report only as text.
type bodyReader struct {
	r   io.Reader
	err error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}

// errorFor is the answer to a request whose decoding failed with err: 408 when
// the body did not arrive in time (the server's read deadline), so that the
// client may retry, else what ErrorFor says.
func (b *bodyReader) errorFor(w http.ResponseWriter, err error) *Error {
	var te interface{ Timeout() bool }
	if errors.As(b.err, &te) && te.Timeout() {
		w.Header().Set("Connection", "close") // the rest of the body is still on the way
		return &Error{Status: http.StatusRequestTimeout, Type: "invalid_request_error", Code: "request_timeout",
			Message: "request body not received in time", Err: b.err}
	}
	return ErrorFor(err)
}

func (h *Handler) models(w http.ResponseWriter, r *http.Request) {
	var list []Model
	if ml, ok := h.Backend.(ModelLister); ok {
		var err error
		if list, err = ml.ListModels(r.Context()); err != nil {
			h.writeError(w, ErrorFor(err))
			return
		}
	} else {
		owner := h.OwnedBy
		if owner == "" {
			owner = "cocoon"
		}
		for _, m := range h.Backend.Models() {
			list = append(list, Model{ID: m.ID, Object: "model", OwnedBy: owner, Digest: m.Digest, ContextLength: m.ContextLength})
		}
	}
	if list == nil {
		list = []Model{}
	}
	h.writeJSON(w, http.StatusOK, ModelList{Object: "list", Data: list})
}

func newID(prefix string) string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// generate runs one request and writes the answer in the chat or completion shape.
func (h *Handler) generate(w http.ResponseWriter, r *http.Request, rr runtime.Request, stream bool, opts *StreamOptions, chat bool) {
	s, err := h.Backend.Generate(r.Context(), rr)
	if err != nil {
		h.writeError(w, ErrorFor(err))
		return
	}
	defer s.Close()
	if hs, ok := runtime.StreamAs[HeaderStream](s); ok {
		for k, vs := range hs.Header() {
			for _, v := range vs {
				w.Header().Add(k, v)
			}
		}
	}
	id, created := newID("cmpl-"), h.now().Unix()
	if chat {
		id = newID("chatcmpl-")
	}
	if !stream {
		h.collect(w, s, rr, id, created, chat)
		return
	}
	h.stream(w, r, s, rr.Model, id, created, chat, opts != nil && opts.IncludeUsage)
}

func usageOf(s runtime.Stream) *Usage {
	u := s.Usage()
	out := &Usage{PromptTokens: u.PromptTokens, CompletionTokens: u.CompletionTokens, TotalTokens: u.PromptTokens + u.CompletionTokens}
	if cs, ok := runtime.StreamAs[CostStream](s); ok {
		c := cs.CostNanoTON()
		out.CostNanoTON = &c
	}
	return out
}

// collect reads the whole stream and answers in one JSON body.
func (h *Handler) collect(w http.ResponseWriter, s runtime.Stream, rr runtime.Request, id string, created int64, chat bool) {
	var text, refusal strings.Builder
	var calls toolCalls
	var lps []TokenLogprob
	for {
		d, err := s.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			h.writeError(w, ErrorFor(err))
			return
		}
		text.WriteString(d.Text)
		refusal.WriteString(d.Refusal)
		calls.add(d.ToolCalls)
		lps = append(lps, logprobsOf(d.Logprobs)...)
	}
	finish := s.FinishReason()
	if !chat {
		h.writeJSON(w, http.StatusOK, Completion{ID: id, Object: "text_completion", Created: created, Model: rr.Model,
			Choices: []CompletionChoice{{Text: text.String(), FinishReason: &finish}}, Usage: usageOf(s)})
		return
	}
	msg := ChatMessage{Role: "assistant", Content: Content(text.String()), ToolCalls: calls.list(), answer: true}
	if refusal.Len() > 0 {
		r := refusal.String()
		msg.Refusal = &r
	}
	choice := ChatChoice{Message: msg, FinishReason: finish}
	if rr.Logprobs {
		choice.Logprobs = &Logprobs{Content: lps}
		if lps == nil {
			choice.Logprobs.Content = []TokenLogprob{}
		}
	}
	h.writeJSON(w, http.StatusOK, ChatCompletion{ID: id, Object: "chat.completion", Created: created, Model: rr.Model,
		Choices: []ChatChoice{choice}, Usage: usageOf(s)})
}

// toolCalls assembles a stream's tool call pieces into whole calls.
type toolCalls struct {
	byIndex map[int]*ToolCall
}

func (tc *toolCalls) add(pieces []runtime.ToolCallDelta) {
	for _, p := range pieces {
		if tc.byIndex == nil {
			tc.byIndex = map[int]*ToolCall{}
		}
		c, ok := tc.byIndex[p.Index]
		if !ok {
			c = &ToolCall{Type: "function"}
			tc.byIndex[p.Index] = c
		}
		if c.ID == "" {
			c.ID = p.ID
		}
		if c.Function.Name == "" {
			c.Function.Name = p.Name
		}
		c.Function.Arguments += p.Arguments
	}
}

// list is the calls in index order; a call whose backend gave no id gets one.
func (tc *toolCalls) list() []ToolCall {
	var out []ToolCall
	for _, i := range slices.Sorted(maps.Keys(tc.byIndex)) {
		c := *tc.byIndex[i]
		if c.ID == "" {
			c.ID = newID("call_")
		}
		out = append(out, c)
	}
	return out
}

// streamedCalls turns a delta's tool call pieces into a chunk's: the first
// piece of a call carries its id, type and name (OpenAI's shape, which the
// SDKs' stream helpers assemble), later ones only arguments.
type streamedCalls map[int]bool

func (seen streamedCalls) pieces(ds []runtime.ToolCallDelta) []ToolCall {
	var out []ToolCall
	for _, d := range ds {
		c := ToolCall{Index: &d.Index, Function: FunctionCall{Arguments: d.Arguments}}
		if !seen[d.Index] {
			seen[d.Index] = true
			c.ID, c.Type, c.Function.Name = d.ID, "function", d.Name
			if c.ID == "" {
				c.ID = newID("call_")
			}
		}
		out = append(out, c)
	}
	return out
}

// logprobsOf converts a delta's logprobs. A log probability is finite in
// JSON: -Inf (and NaN, which no backend should send) become -9999, as
// OpenAI writes a token outside the top 20.
func logprobsOf(lps []runtime.TokenLogprob) []TokenLogprob {
	var out []TokenLogprob
	for _, lp := range lps {
		t := TokenLogprob{Token: lp.Token, Logprob: finite(lp.Logprob), Bytes: byteInts(lp.Bytes, lp.Token), TopLogprobs: []TopLogprob{}}
		for _, top := range lp.Top {
			t.TopLogprobs = append(t.TopLogprobs, TopLogprob{Token: top.Token, Logprob: finite(top.Logprob), Bytes: byteInts(top.Bytes, top.Token)})
		}
		out = append(out, t)
	}
	return out
}

func finite(lp float64) float64 {
	switch {
	case !(lp >= -9999): // NaN too
		return -9999
	case lp > 0:
		return 0
	}
	return lp
}

// byteInts is a token's bytes as OpenAI writes them, a list of integers;
// b nil: the token's text.
func byteInts(b []byte, token string) []int {
	if b == nil {
		b = []byte(token)
	}
	out := make([]int, len(b))
	for i, c := range b {
		out[i] = int(c)
	}
	return out
}

// stream answers with server-sent events.
func (h *Handler) stream(w http.ResponseWriter, r *http.Request, s runtime.Stream, model, id string, created int64, chat, includeUsage bool) {
	hd := w.Header()
	hd.Set("Content-Type", "text/event-stream")
	hd.Set("Cache-Control", "no-cache")
	hd.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	send := func(v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		if err := WriteEvent(w, b); err != nil {
			return err
		}
		return rc.Flush()
	}
	chunk := func(text *string, role string, finish *string) any {
		if chat {
			return ChatCompletionChunk{ID: id, Object: "chat.completion.chunk", Created: created, Model: model,
				Choices: []ChunkChoice{{Delta: ChunkDelta{Role: role, Content: text}, FinishReason: finish}}}
		}
		t := ""
		if text != nil {
			t = *text
		}
		return Completion{ID: id, Object: "text_completion", Created: created, Model: model,
			Choices: []CompletionChoice{{Text: t, FinishReason: finish}}}
	}
	seen := streamedCalls{}
	deltaChunk := func(d runtime.Delta) (any, bool) {
		if !chat {
			return chunk(&d.Text, "", nil), d.Text != ""
		}
		var delta ChunkDelta
		if d.Text != "" {
			delta.Content = &d.Text
		}
		if d.Refusal != "" {
			delta.Refusal = &d.Refusal
		}
		delta.ToolCalls = seen.pieces(d.ToolCalls)
		var lps *Logprobs
		if len(d.Logprobs) > 0 {
			lps = &Logprobs{Content: logprobsOf(d.Logprobs)}
		}
		if delta.Content == nil && delta.Refusal == nil && delta.ToolCalls == nil && lps == nil {
			return nil, false
		}
		return ChatCompletionChunk{ID: id, Object: "chat.completion.chunk", Created: created, Model: model,
			Choices: []ChunkChoice{{Delta: delta, Logprobs: lps}}}, true
	}
	if chat {
		empty := ""
		if err := send(chunk(&empty, "assistant", nil)); err != nil {
			h.log().Debug("stream write", "err", err)
			return
		}
	}
	for {
		d, err := s.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			e := ErrorFor(err)
			if r.Context().Err() == nil {
				h.log().Warn("generation failed mid-stream", "model", model, "status", e.Status, "err", err)
			}
			b, _ := json.Marshal(e.Body())
			_ = WriteEvent(w, b)
			_ = rc.Flush()
			return
		}
		c, ok := deltaChunk(d)
		if !ok {
			continue
		}
		if err := send(c); err != nil {
			h.log().Debug("stream write", "err", err)
			return
		}
	}
	finish := s.FinishReason()
	if chat {
		if err := send(chunk(nil, "", &finish)); err != nil {
			return
		}
	} else {
		empty := ""
		if err := send(chunk(&empty, "", &finish)); err != nil {
			return
		}
	}
	if includeUsage {
		var v any
		if chat {
			v = ChatCompletionChunk{ID: id, Object: "chat.completion.chunk", Created: created, Model: model, Choices: []ChunkChoice{}, Usage: usageOf(s)}
		} else {
			v = Completion{ID: id, Object: "text_completion", Created: created, Model: model, Choices: []CompletionChoice{}, Usage: usageOf(s)}
		}
		if err := send(v); err != nil {
			return
		}
	}
	_ = WriteDone(w)
	_ = rc.Flush()
}

func (h *Handler) writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		h.log().Error("encode answer", "err", err)
		status, b = http.StatusInternalServerError, []byte(`{"error":{"message":"encode answer","type":"server_error","param":null,"code":null}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

func (h *Handler) writeError(w http.ResponseWriter, e *Error) {
	if e.Status >= 500 && e.Status != 499 {
		h.log().Warn("request failed", "status", e.Status, "err", e.Message)
	}
	status := e.Status
	if status == 499 {
		status = http.StatusBadRequest // never sent: the client is gone
	}
	h.writeJSON(w, status, e.Body())
}
