// Package openai is the runtime backend for any OpenAI-compatible inference
// server (vLLM, llama.cpp's llama-server, Ollama, SGLang), reached by base URL
// with an optional API key. Every generation streams from the upstream over
// SSE with stream_options.include_usage, whether or not the caller streams.
//
// Billing: usage comes from the upstream's own tokenizer. An upstream that
// ends a stream without a usage object is refused with runtime.ErrUnbillable:
// nothing is metered by guesswork.
//
// Timeouts are per phase, so that a hanging upstream becomes an error: the
// TCP connect, the first event (the upstream may queue and prefill), and the
// idle time between two events.
//
// Context length: every served model needs one (the ads carry it). It comes
// from GET /models (context_length; vLLM and SGLang: max_model_len;
// llama-server: meta.n_ctx_train). Where that gives none, Ollama's native
// POST /api/show {"model": id} is asked, at the server root (the base URL
// less its /v1): model_info's <arch>.context_length, lowered to the
// Modelfile's num_ctx when one is set. Config.ContextLengths fills what the
// upstream leaves out; where both say, the smaller is served, since neither
// the model nor the operator's server setting can be exceeded. A model with
// no source stops New with a *ContextLengthError.
//
// Capabilities: a model offers only what Config.Capabilities declares for
// it (runtime.Model's flags), since no OpenAI-compatible server says what it
// follows and one that ignores a field answers as if it had not been asked.
// Generate applies runtime.Model.Serves first: a request using anything
// undeclared is refused with a *runtime.FieldError naming the field, and the
// upstream is sent nothing. What is declared is forwarded as OpenAI's chat
// API spells it:
//
//	StructuredOutput  response_format (json_object; json_schema: name, schema, strict)
//	Tools             tools [{type:function, function:{name, description, parameters, strict}}],
//	                  tool_choice ("auto" | "none" | "required" | {type:function, function:{name}}),
//	                  parallel_tool_calls false (SingleToolCall, with tools only),
//	                  assistant tool_calls [{id, type:function, function:{name, arguments}}]
//	                  (content null when empty), tool messages' tool_call_id
//	Logprobs          logprobs, top_logprobs (chat only: completions answer another shape)
//	LogitBias         logit_bias {"<token id>": bias}, in the upstream's vocabulary
//	Images            a user message's content as parts: text split where each image
//	                  stood, {type:image_url, image_url:{url (data:), detail}}
//	(always)          model, messages, max_tokens, temperature, top_p, stop, seed,
//	                  presence_penalty and frequency_penalty (0: omitted),
//	                  stream true, stream_options.include_usage
//
// The stream's delta.tool_calls come back as runtime.Delta.ToolCalls (the
// first piece of call i with its id and name, later pieces its arguments;
// a whole call in one piece, or the id and name repeated, are read alike),
// choices[0].logprobs.content as Delta.Logprobs, delta.refusal as
// Delta.Refusal, and finish_reason (tool_calls too) as given. A malformed
// call (index out of order, no id or name on its first piece, arguments not
// a string, more than runtime.MaxToolCalls calls or runtime.MaxTextBytes of
// arguments) fails the stream with runtime.ErrUpstream.
//
// Where the upstream lists a model's capabilities (Ollama's /api/show:
// tools, vision, embedding), a declared one it lacks stops New with a
// *CapabilityError; one it lists but the configuration does not declare
// stays off.
//
// Embeddings: Backend is a runtime.Embedder for models that declare
// Embeddings: POST /embeddings with encoding_format float, the vectors put
// in input order by index and held to EmbeddingDims (asked at start with one
// embeddings call when not configured), billed by usage.prompt_tokens
// (absent: runtime.ErrUnbillable).
package openai

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

// Config configures a Backend.
type Config struct {
	// BaseURL is the API root, e.g. "http://127.0.0.1:8000/v1" (a URL without
	// a path gets "/v1").
	BaseURL string
	// APIKey is sent as a bearer token; empty: none.
	APIKey string
	// Models restricts the served models to these ids; empty: all the upstream lists.
	Models []string
	// ContextLengths gives models' context lengths in tokens, by id, for
	// upstreams that do not say them or run with less than they say (see the
	// package doc). Each must be 1 to runtime.MaxContextLength.
	ContextLengths map[string]int
	// Capabilities declares, by model id, what the upstream offers for a
	// model beyond text: runtime.Model's StructuredOutput, Tools, Logprobs,
	// LogitBias, Images, Embeddings and EmbeddingDims (its other fields are
	// not read). A model offers only what is declared here (see the package
	// doc): a request using anything else is refused before it is sent.
	Capabilities map[string]runtime.Model
	// ConnectTimeout bounds the TCP (and TLS) connect; 0: 10 s.
	ConnectTimeout time.Duration
	// FirstEventTimeout bounds the wait for the response headers and the first
	// event; 0: 120 s.
	FirstEventTimeout time.Duration
	// IdleTimeout bounds the gap between two events; 0: 60 s.
	IdleTimeout time.Duration
	// Client, if set, is used as is (its transport's timeouts apply instead of
	// ConnectTimeout).
	Client *http.Client
	// ContinuousUsage asks the upstream for usage in every chunk (vLLM's
	// stream_options.continuous_usage_stats), so that each delta carries its
	// tokens; servers that reject unknown options must leave it off. Without
	// it the last delta carries all the completion tokens.
	ContinuousUsage bool
	// Logger: nil is slog.Default().
	Logger *slog.Logger
}

// Backend is an upstream OpenAI-compatible server. It is safe for concurrent use.
type Backend struct {
	cfg    Config
	base   string
	client *http.Client
	log    *slog.Logger

	mu     sync.Mutex
	models []runtime.Model
}

// New checks the upstream by listing its models (GET /v1/models) within ctx.
func New(ctx context.Context, cfg Config) (*Backend, error) {
	for id, n := range cfg.ContextLengths {
		if n <= 0 || n > runtime.MaxContextLength {
			return nil, fmt.Errorf("openai backend: context length %d of model %q is outside 1..%d", n, id, runtime.MaxContextLength)
		}
	}
	for id, m := range cfg.Capabilities {
		switch {
		case m.EmbeddingDims < 0 || m.EmbeddingDims > runtime.MaxEmbeddingDims:
			return nil, fmt.Errorf("openai backend: embedding dims %d of model %q are outside 1..%d", m.EmbeddingDims, id, runtime.MaxEmbeddingDims)
		case m.EmbeddingDims > 0 && !m.Embeddings:
			return nil, fmt.Errorf("openai backend: embedding dims given for model %q, which declares no embeddings", id)
		}
	}
	base := strings.TrimRight(cfg.BaseURL, "/")
	if !strings.HasPrefix(base, "http://") && !strings.HasPrefix(base, "https://") {
		return nil, fmt.Errorf("openai backend: base URL %q is not http(s)", cfg.BaseURL)
	}
	if rest := base[strings.Index(base, "//")+2:]; !strings.Contains(rest, "/") {
		base += "/v1"
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if cfg.FirstEventTimeout <= 0 {
		cfg.FirstEventTimeout = 120 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 60 * time.Second
	}
	client := cfg.Client
	if client == nil {
		d := &net.Dialer{Timeout: cfg.ConnectTimeout, KeepAlive: 30 * time.Second}
		client = &http.Client{Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           d.DialContext,
			TLSHandshakeTimeout:   cfg.ConnectTimeout,
			ResponseHeaderTimeout: cfg.FirstEventTimeout,
			MaxIdleConnsPerHost:   64,
			IdleConnTimeout:       90 * time.Second,
		}}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	b := &Backend{cfg: cfg, base: base, client: client, log: log.With("subsys", "runtime", "backend", runtime.KindOpenAI, "upstream", base)}
	if err := b.Refresh(ctx); err != nil {
		return nil, err
	}
	return b, nil
}

// upstreamError wraps runtime.ErrUpstream with what failed.
func upstreamError(format string, args ...any) error {
	return fmt.Errorf("%w: %w", runtime.ErrUpstream, fmt.Errorf(format, args...))
}

// Refresh lists the upstream's models again.
func (b *Backend) Refresh(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.ConnectTimeout+b.cfg.FirstEventTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.base+"/models", nil)
	if err != nil {
		return fmt.Errorf("openai backend: %w", err)
	}
	b.auth(req)
	resp, err := b.client.Do(req)
	if err != nil {
		return upstreamError("list models at %s: %w", b.base, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return upstreamError("list models at %s: %w", b.base, err)
	}
	if resp.StatusCode != http.StatusOK {
		return upstreamError("list models at %s: %s", b.base, statusMessage(resp.StatusCode, body))
	}
	var list struct {
		Data []struct {
			ID            string `json:"id"`
			MaxModelLen   int    `json:"max_model_len"`  // vLLM
			ContextLength int    `json:"context_length"` // cocoon, others
			Meta          struct {
				NCtxTrain int `json:"n_ctx_train"` // llama-server
			} `json:"meta"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		return upstreamError("list models at %s: not an OpenAI model list: %w", b.base, err)
	}
	var models []runtime.Model
	for _, m := range list.Data {
		if len(b.cfg.Models) > 0 && !slices.Contains(b.cfg.Models, m.ID) {
			continue
		}
		ctxLen := m.ContextLength
		if ctxLen == 0 {
			ctxLen = m.MaxModelLen
		}
		if ctxLen == 0 {
			ctxLen = m.Meta.NCtxTrain
		}
		if err := checkContextLength(b.base+"/models", m.ID, ctxLen); err != nil {
			return err
		}
		models = append(models, b.declared(m.ID, ctxLen))
	}
	for _, want := range b.cfg.Models {
		if !slices.ContainsFunc(models, func(m runtime.Model) bool { return m.ID == want }) {
			return upstreamError("%s does not serve model %q", b.base, want)
		}
	}
	// What /models left out, and what the upstream says of the declared
	// capabilities: ask Ollama's native API, until one probe fails (the
	// upstream is then not Ollama, and each probe would fail alike).
	root, probe := nativeRoot(b.base)
	for i := range models {
		m := &models[i]
		from := "GET " + b.base + "/models"
		if (m.ContextLength == 0 || m.Tools || m.Images || m.Embeddings) && probe {
			show, err := b.ollamaShow(ctx, root, m.ID)
			switch {
			case errors.Is(err, runtime.ErrUpstream):
				return err
			case err != nil:
				b.log.Debug("no model description from the native API", "model", m.ID, "err", err)
				probe = !errors.Is(err, errNotOllama)
			default:
				if err := b.checkCapabilities(*m, show); err != nil {
					return err
				}
				if m.ContextLength == 0 {
					from = "POST " + root + "/api/show"
					m.ContextLength = b.ollamaContextLength(m.ID, show)
				}
			}
		}
		n, err := b.settleContextLength(m.ID, m.ContextLength, from)
		if err != nil {
			return err
		}
		m.ContextLength = n
		if m.Embeddings && m.EmbeddingDims == 0 {
			// One embedding says the length of them all; Embed checks
			// every later one against it.
			e, err := b.embed(ctx, m.ID, []string{"cocoon embedding dimensions"}, 0)
			if err != nil {
				return fmt.Errorf("ask model %q for its embedding dims: %w", m.ID, err)
			}
			m.EmbeddingDims = len(e.Vectors[0])
			b.log.Info("model embedding dims", "model", m.ID, "embedding_dims", m.EmbeddingDims, "from", "POST "+b.base+"/embeddings")
		}
	}
	b.mu.Lock()
	b.models = models
	b.mu.Unlock()
	return nil
}

// ContextLengthError says that no source gave a served model's context length:
// the upstream neither lists it at GET /models nor answers POST /api/show
// with it, and Config.ContextLengths lacks it.
type ContextLengthError struct {
	Model    string
	Upstream string // the base URL
}

func (e *ContextLengthError) Error() string {
	return fmt.Sprintf("%s reports no context length for model %q", e.Upstream, e.Model)
}

// checkContextLength refuses a context length the ads cannot carry.
func checkContextLength(from, model string, n int) error {
	if n < 0 || n > runtime.MaxContextLength {
		return upstreamError("%s says model %q has a context of %d tokens, outside 0..%d", from, model, n, runtime.MaxContextLength)
	}
	return nil
}

// settleContextLength is the context length served for model, given what the
// upstream said (0: nothing) and the configured one.
func (b *Backend) settleContextLength(model string, upstream int, from string) (int, error) {
	configured := b.cfg.ContextLengths[model]
	switch {
	case upstream == 0 && configured == 0:
		return 0, &ContextLengthError{Model: model, Upstream: b.base}
	case upstream == 0:
		b.log.Info("model context length", "model", model, "context_length", configured, "from", "config")
		return configured, nil
	case configured == 0 || configured == upstream:
		b.log.Info("model context length", "model", model, "context_length", upstream, "from", from)
		return upstream, nil
	}
	n := min(upstream, configured)
	b.log.Info("model context length: the configured and the upstream's differ, serving the smaller", "model", model,
		"context_length", n, "configured", configured, "reported", upstream, "from", from)
	return n, nil
}

// nativeRoot is the server root of an OpenAI base URL, where native APIs such
// as Ollama's /api/show live: the base less its final /v1. A base that does not
// end in /v1 (a proxy's own path) has no root that can be guessed: ok is false.
func nativeRoot(base string) (root string, ok bool) {
	return strings.CutSuffix(base, "/v1") // New gave base a path: root keeps its host
}

// errNotOllama: the upstream does not answer POST /api/show as Ollama does.
var errNotOllama = errors.New("no Ollama API")

// probeTimeout bounds one native-API probe: it reads the model's metadata
// only, and a server that is not Ollama answers at once (404) or not at all.
const probeTimeout = 5 * time.Second

// ollamaModel is what Ollama's POST /api/show says of a model.
type ollamaModel struct {
	trained int // model_info's <general.architecture>.context_length; 0: not said
	numCtx  int // the Modelfile's num_ctx parameter; 0: not set
	// capabilities: "completion", "tools", "vision", "embedding", "insert",
	// "thinking" (Ollama 0.6.4, April 2025, on); nil: not said.
	capabilities []string
}

// ollamaShow asks Ollama's POST /api/show for model's description. An
// error wrapping runtime.ErrUpstream is an answer from Ollama that is out of
// bounds; one wrapping errNotOllama means the upstream does not answer as
// Ollama does.
func (b *Backend) ollamaShow(ctx context.Context, root, model string) (ollamaModel, error) {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	body, _ := json.Marshal(map[string]string{"model": model}) // model_info: Ollama 0.1.45 (June 2024) on
	url := root + "/api/show"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return ollamaModel{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	b.auth(req)
	resp, err := b.client.Do(req)
	if err != nil {
		return ollamaModel{}, fmt.Errorf("%w: %w", errNotOllama, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return ollamaModel{}, fmt.Errorf("%w: POST %s: %s", errNotOllama, url, statusMessage(resp.StatusCode, msg))
	}
	var show struct {
		Parameters   string                     `json:"parameters"`
		ModelInfo    map[string]json.RawMessage `json:"model_info"`
		Capabilities []string                   `json:"capabilities"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&show); err != nil {
		return ollamaModel{}, fmt.Errorf("%w: POST %s: not a model description: %w", errNotOllama, url, err)
	}
	om := ollamaModel{capabilities: show.Capabilities}
	var arch string
	json.Unmarshal(show.ModelInfo["general.architecture"], &arch)
	if err := json.Unmarshal(show.ModelInfo[arch+".context_length"], &om.trained); err != nil || arch == "" {
		om.trained = 0
		b.log.Debug("no context length from the native API", "model", model,
			"err", fmt.Sprintf("POST %s: model_info of %q has no %s.context_length", url, model, arch))
	}
	if err := checkContextLength(url, model, om.trained); err != nil {
		return ollamaModel{}, err
	}
	for line := range strings.Lines(show.Parameters) { // "num_ctx    8192\n"
		if f := strings.Fields(line); len(f) == 2 && f[0] == "num_ctx" {
			if c, err := strconv.Atoi(f[1]); err == nil && c > 0 {
				om.numCtx = c
			}
		}
	}
	return om, nil
}

// ollamaContextLength is the context Ollama runs model with: the trained
// one, lowered to the Modelfile's num_ctx when that is set (0: Ollama did
// not say).
func (b *Backend) ollamaContextLength(model string, om ollamaModel) int {
	switch {
	case om.trained == 0:
		return 0
	case om.numCtx > 0:
		return min(om.trained, om.numCtx)
	}
	if b.cfg.ContextLengths[model] == 0 {
		b.log.Warn("Ollama does not report the context it runs this model with (num_ctx: OLLAMA_CONTEXT_LENGTH, else a default by version and VRAM) and cuts longer prompts; advertising the trained context: set context_length in its [[runtime.models]] to that num_ctx",
			"model", model, "context_length", om.trained)
	}
	return om.trained
}

// Models returns the models found by the last New or Refresh. The upstream
// does not say the weights' digest, so Digest is empty.
func (b *Backend) Models() []runtime.Model {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.models)
}

// model is the served model id.
func (b *Backend) model(id string) (runtime.Model, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := slices.IndexFunc(b.models, func(m runtime.Model) bool { return m.ID == id })
	if i < 0 {
		return runtime.Model{}, false
	}
	return b.models[i], true
}

// Close releases idle connections.
func (b *Backend) Close() error {
	b.client.CloseIdleConnections()
	return nil
}

func (b *Backend) auth(req *http.Request) {
	if b.cfg.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+b.cfg.APIKey)
	}
}

// statusMessage renders an upstream's error answer.
func statusMessage(status int, body []byte) string {
	msg := errorMessage(body)
	if msg == "" {
		msg = strings.TrimSpace(string(body))
		if len(msg) > 200 {
			msg = msg[:200] + "..."
		}
	}
	return fmt.Sprintf("HTTP %d: %s", status, msg)
}

// errorMessage finds the message of an OpenAI error body
// ({"error":{"message":...}}), vLLM's ({"object":"error","message":...}) or
// a bare {"error":"..."}; "" when data is none of these.
func errorMessage(data []byte) string {
	var e struct {
		Object  string          `json:"object"`
		Error   json.RawMessage `json:"error"`
		Message string          `json:"message"`
	}
	if json.Unmarshal(data, &e) != nil {
		return ""
	}
	var eb struct {
		Message string `json:"message"` // code may be a string (OpenAI) or a number (vLLM)
	}
	var s string
	switch {
	case len(e.Error) > 0 && e.Error[0] == '{' && json.Unmarshal(e.Error, &eb) == nil:
		if eb.Message == "" {
			return "error without a message"
		}
		return eb.Message
	case len(e.Error) > 0 && json.Unmarshal(e.Error, &s) == nil && s != "":
		return s
	case e.Object == "error":
		if e.Message == "" {
			return "error without a message"
		}
		return e.Message
	}
	return ""
}

// upstreamStatusError keeps the upstream's status where it is the client's
// fault (400), so that the handler answers the same.
type upstreamStatusError struct {
	status int
	err    error
}

func (e *upstreamStatusError) Error() string   { return e.err.Error() }
func (e *upstreamStatusError) Unwrap() error   { return e.err }
func (e *upstreamStatusError) HTTPStatus() int { return e.status }

// statusError is the error for an upstream's answer with a status other
// than 200 to POST url: a runtime error the caller can map to its own.
func statusError(url string, status int, body []byte) error {
	err := upstreamError("POST %s: %s", url, statusMessage(status, body))
	switch status {
	case http.StatusBadRequest, http.StatusUnprocessableEntity:
		return &upstreamStatusError{http.StatusBadRequest, fmt.Errorf("%w (%w)", runtime.ErrInvalidRequest, err)}
	case http.StatusNotFound:
		return fmt.Errorf("%w (%w)", runtime.ErrUnknownModel, err)
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		return fmt.Errorf("%w (%w)", runtime.ErrBusy, err)
	}
	return err
}

// Generate sends the request upstream as a streaming chat or text completion.
// A continuation is sent as prompt + continuation for completions, and as a
// final assistant message with vLLM's continue_final_message for chats
// (servers without that extension start a new reply instead). max_tokens is
// passed on unchanged. A request using what its model does not declare is
// refused with the *runtime.FieldError of Model.Serves before anything is
// sent.
func (b *Backend) Generate(ctx context.Context, req runtime.Request) (runtime.Stream, error) {
	m, ok := b.model(req.Model)
	if !ok {
		return nil, fmt.Errorf("%w: %q", runtime.ErrUnknownModel, req.Model)
	}
	if err := m.Serves(req); err != nil {
		return nil, fmt.Errorf("openai backend: %w", err)
	}
	body, chat, err := upstreamBody(req, b.cfg.ContinuousUsage)
	if err != nil {
		return nil, err
	}
	path := b.base + "/completions"
	if chat {
		path = b.base + "/chat/completions"
	}
	// The watchdog cancels the request when a phase overruns; the cause says which.
	rctx, cancel := context.WithCancelCause(ctx)
	s := &stream{dec: decoder{chat: chat, url: path}, cancel: cancel, ctx: rctx, parent: ctx, idle: b.cfg.IdleTimeout, url: path}
	s.watch = time.AfterFunc(b.cfg.FirstEventTimeout, func() {
		if s.streaming.Load() {
			cancel(upstreamError("%s sent no event for %v: %w", path, b.cfg.IdleTimeout, context.DeadlineExceeded))
			return
		}
		cancel(upstreamError("no event from %s within %v: %w", path, b.cfg.FirstEventTimeout, context.DeadlineExceeded))
	})
	hreq, err := http.NewRequestWithContext(rctx, http.MethodPost, path, bytes.NewReader(body))
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("openai backend: %w", err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Accept", "text/event-stream")
	b.auth(hreq)
	resp, err := b.client.Do(hreq)
	if err != nil {
		s.Close()
		return nil, s.wrap(fmt.Errorf("POST %s: %w", path, err))
	}
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		s.Close()
		return nil, statusError(path, resp.StatusCode, msg)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		resp.Body.Close()
		s.Close()
		return nil, upstreamError("POST %s: answer is %q, not an event stream", path, ct)
	}
	s.body = resp.Body
	s.events = openaiapi.NewEventReader(resp.Body, 0)
	return s, nil
}
