// Package llamacpp is the embedded default runtime backend: GGUF models on the
// CPU through llama.cpp, driven from Go by github.com/hybridgroup/yzma (purego,
// no cgo) with the prebuilt libraries of the npm package
// @node-llama-cpp/linux-x64 that `make deps` installs, or their CUDA and
// Vulkan builds (runtime/llamalib), which offload Config.GPULayers layers.
//
// Each model has Parallel llama.cpp contexts (one per concurrent generation: a
// context is not thread-safe); Generate waits for a free one. Generation is
// pulled: each Stream.Recv decodes tokens until it has text to hand out, so a
// slow reader costs no compute and cancellation is checked between tokens and,
// through llama.cpp's abort callback, inside a long prompt decode.
//
// # Tools
//
// llama.cpp's chat-template function knows no tools, so every model gets
// one plain format, written into ordinary messages before the template
// (or PlainTemplate) renders them:
//
//	system:    <the first system message, if any>
//
//	           You can call these functions:
//
//	           {"name": "get_weather", "description": "...", "parameters": {<JSON Schema>}}
//	           ...
//
//	           To call a function, answer with only a JSON object:
//	           {"name": <function name>, "arguments": <arguments object>}.
//	           Otherwise answer in plain text.   (auto; required and a named
//	           function say "You must call ...")
//	assistant: <content>\n{"name": "get_weather", "arguments": {...}}   (one line per call it made)
//	user:      Result of call "call_1" to get_weather:\n<the tool message's content>
//
// A tool result is rendered as a user message because templates differ on
// role "tool" (many refuse it). With tool_choice "none" the tools are not
// described (the model may not call them); calls and results in the history
// still are.
//
// llama.cpp's grammar sampler holds the answer to the choice: "required" to
// grammar.AnyToolCall, a named function to grammar.ToolCall, "auto" to a
// grammar of either such a call or text whose first character is not "{"
// (so the first byte tells which it is). An answer holds at most one call.
// A call is streamed as Delta.ToolCalls: its id ("call_" and random hex) and
// name once its head is written, then its arguments as they grow, less a
// tail that may still be the call's closing brace; every token is billed in
// Delta.Tokens as it is generated. It finishes as "tool_calls" (as "length"
// if max_tokens cut it, with the arguments written so far). Stop sequences
// do not apply inside a call. With tools in play (tool_choice other than
// none), a response_format and a Continuation are refused by name
// (*runtime.FieldError "response_format", "continuation").
//
// # Logprobs, penalties, logit_bias
//
// Logprobs are those of the model's raw distribution at each position: a
// log-softmax of llama_get_logits_ith, before temperature, penalties,
// logit_bias and grammar (vLLM's default). Each delta carries one entry per
// token whose last byte is in its Text; tokens of a stop sequence, never
// sent, and of a tool call have none. presence_penalty and
// frequency_penalty are llama.cpp's penalties sampler over every generated
// token; logit_bias is its logit-bias sampler, and an id outside the
// vocabulary is refused before llama.cpp sees it.
//
// # Embeddings
//
// Embed uses a second llama.cpp context per model, made on first use, with
// embeddings on and the GGUF's pooling type or else mean pooling; inputs
// are computed one at a time and L2-normalised.
package llamacpp

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	goruntime "runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hybridgroup/yzma/pkg/llama"

	"github.com/cocoon-network/cocoon/runtime"
)

// Config configures a Backend.
type Config struct {
	// LibDir holds llama.cpp's shared libraries; empty: $COCOON_LLAMA_LIB.
	LibDir string
	// Models are the GGUF files to serve; an empty ID is the file name without ".gguf".
	Models []runtime.ModelConfig
	// Threads per generation; 0: min(NumCPU, 4). llama.cpp's threads spin-wait,
	// so more threads than idle cores slows everything down.
	Threads int
	// ContextSize in tokens; 0: the model's training context, at most 4096.
	ContextSize int
	// Parallel is the number of concurrent generations per model; 0: 1.
	Parallel int
	// GPULayers is how many layers a GPU build offloads: -1 all, 0 none.
	// The zero value keeps every layer on the CPU.
	GPULayers int
	// Logger receives llama.cpp's log at debug level; nil: slog.Default().
	Logger *slog.Logger
}

// Backend serves GGUF models with llama.cpp. It is safe for concurrent use.
type Backend struct {
	log     *slog.Logger
	models  map[string]*model
	order   []runtime.Model
	closing chan struct{}
	once    sync.Once
}

type model struct {
	info     runtime.Model
	path     string
	m        llama.Model
	vocab    llama.Vocab
	nCtx     int
	nBatch   int
	nVocab   int
	threads  int
	template string // the GGUF's chat template, "" for the plain fallback
	offload  runtime.Offload
	slots    []*slot
	pool     chan *slot

	embedMu sync.Mutex // held by one Embed at a time, and by Close to free embed
	embed   *slot      // the embeddings context, made by the first Embed; nil after Close
	// embedCur is the abort flag of the Embed running, nil when none.
	embedCur atomic.Pointer[atomic.Bool]
}

// slot is one llama.cpp context; it belongs to one generation at a time.
type slot struct {
	lctx llama.Context
	cur  atomic.Pointer[atomic.Bool] // abort flag of the stream using the slot, nil when free
}

// New loads the libraries and every model of cfg. Errors name the file and
// what was wrong with it (missing, not GGUF, truncated, rejected by llama.cpp).
func New(cfg Config) (*Backend, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("subsys", "runtime", "backend", runtime.KindLlamaCPP)
	if err := loadLibrary(cfg.LibDir); err != nil {
		return nil, err
	}
	lib.logs.setLogger(log)
	threads := cfg.Threads
	if threads <= 0 {
		threads = min(goruntime.NumCPU(), 4)
	}
	parallel := max(cfg.Parallel, 1)
	b := &Backend{log: log, models: map[string]*model{}, closing: make(chan struct{})}
	for i, mc := range cfg.Models {
		id := mc.ID
		if id == "" {
			id = runtime.ModelIDFromPath(mc.Path)
		}
		if _, dup := b.models[id]; dup {
			b.Close()
			return nil, fmt.Errorf("load model %d (%s): id %q used twice", i, mc.Path, id)
		}
		m, err := loadModel(mc.Path, id, threads, cfg.ContextSize, parallel, cfg.GPULayers)
		if err != nil {
			b.Close()
			return nil, err
		}
		b.models[id] = m
		b.order = append(b.order, m.info)
		log.Info("model loaded", "model", id, "path", mc.Path, "digest", m.info.Digest,
			"context", m.nCtx, "threads", threads, "parallel", parallel, "chat_template", m.template != "",
			"gpu_layers", fmt.Sprintf("%d/%d", m.offload.GPULayers, m.offload.Layers))
	}
	return b, nil
}

// ggufMagic opens every GGUF file.
var ggufMagic = []byte("GGUF")

// fileDigest checks that path is a GGUF file and returns "sha256:<hex>" of it.
func fileDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	head := make([]byte, 24) // magic, version, tensor count, metadata count
	if _, err := io.ReadFull(f, head); err != nil {
		return "", fmt.Errorf("not a GGUF file: shorter than the %d-byte header", len(head))
	}
	if !bytes.Equal(head[:4], ggufMagic) {
		return "", fmt.Errorf("not a GGUF file (starts with %q, want %q)", head[:4], ggufMagic)
	}
	if v := binary.LittleEndian.Uint32(head[4:8]); v < 2 || v > 3 {
		return "", fmt.Errorf("unsupported GGUF version %d (want 2 or 3)", v)
	}
	h := sha256.New()
	h.Write(head)
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash: %w", err)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// loadMu serializes model loads so that the captured llama.cpp log belongs to one.
var loadMu sync.Mutex

func loadModel(path, id string, threads, ctxSize, parallel, gpuLayers int) (*model, error) {
	digest, err := fileDigest(path)
	if err != nil {
		return nil, fmt.Errorf("load model %s: %w", path, err)
	}
	loadMu.Lock()
	defer loadMu.Unlock()
	lib.logs.take()
	params, offload := modelParams(gpuLayers)
	lm, err := llama.ModelLoadFromFile(path, params)
	if err != nil {
		why := lib.logs.take()
		if why == "" {
			why = "no reason given"
		}
		return nil, fmt.Errorf("load model %s: llama.cpp rejected it (truncated or corrupt?): %s", path, why)
	}
	m := &model{path: path, m: lm, vocab: llama.ModelGetVocab(lm), threads: threads, pool: make(chan *slot, parallel),
		offload: offloadOf(lm, offload)}
	m.nVocab = int(llama.VocabNTokens(m.vocab))
	m.template = llama.ModelChatTemplate(lm, "")
	train := int(llama.ModelNCtxTrain(lm))
	m.nCtx = ctxSize
	if m.nCtx <= 0 {
		m.nCtx = min(train, 4096)
	}
	if m.nCtx <= 0 {
		m.nCtx = 2048
	}
	m.nBatch = min(m.nCtx, 512)
	m.info = runtime.Model{
		ID: id, Digest: digest, ContextLength: m.nCtx,
		StructuredOutput: true, Tools: true, Logprobs: true, LogitBias: true,
		Embeddings: true, EmbeddingDims: int(llama.ModelNEmbd(lm)),
	}
	for range parallel {
		cp := llama.ContextDefaultParams()
		cp.NCtx = uint32(m.nCtx)
		cp.NBatch = uint32(m.nBatch)
		cp.NUbatch = uint32(m.nBatch)
		cp.NSeqMax = 1
		cp.NThreads = int32(threads)
		cp.NThreadsBatch = int32(threads)
		cp.NoPerf = 1
		lctx, err := llama.InitFromModel(lm, cp)
		if err != nil {
			why := lib.logs.take()
			m.free()
			return nil, fmt.Errorf("load model %s: create a context of %d tokens: %v %s", path, m.nCtx, err, why)
		}
		s := &slot{lctx: lctx}
		// One callback per context for its whole life: purego callbacks are
		// never freed, so none is made per request.
		llama.SetAbortCallback(lctx, func() bool {
			f := s.cur.Load()
			return f != nil && f.Load()
		})
		m.slots = append(m.slots, s)
		m.pool <- s
	}
	return m, nil
}

func (m *model) free() {
	m.freeEmbed()
	for _, s := range m.slots {
		llama.Free(s.lctx)
	}
	m.slots = nil
	if m.m != 0 {
		llama.ModelFree(m.m)
		m.m = 0
	}
}

// Models lists the loaded models in configuration order.
func (b *Backend) Models() []runtime.Model {
	return append([]runtime.Model(nil), b.order...)
}

// closeWait bounds how long Close waits for open streams.
const closeWait = 5 * time.Second

// Close stops every generation (their Recv fails with runtime.ErrClosed),
// waits for their streams to end and frees the models. Contexts of streams
// never closed are leaked rather than freed under them.
func (b *Backend) Close() error {
	b.once.Do(func() {
		close(b.closing)
		for _, m := range b.models {
			m.freeEmbed()
			for _, s := range m.slots {
				if f := s.cur.Load(); f != nil {
					f.Store(true)
				}
			}
			// Take every slot back: each stream gives its slot back when it
			// ends. A stream nobody reads or closes would hold its slot for
			// ever; after closeWait its context is leaked, never freed under it.
			timeout := time.After(closeWait)
			got := 0
		wait:
			for got < len(m.slots) {
				select {
				case <-m.pool:
					got++
				case <-timeout:
					break wait
				}
			}
			if got < len(m.slots) {
				b.log.Warn("streams still open at close: leaking the model", "model", m.info.ID, "open", len(m.slots)-got)
				continue
			}
			m.free()
		}
	})
	return nil
}

// CountTokens is the number of tokens model's tokenizer makes of text, as a
// raw prompt (with the beginning-of-sequence token where the model adds one).
func (b *Backend) CountTokens(modelID, text string) (int, error) {
	m, ok := b.models[modelID]
	if !ok {
		return 0, fmt.Errorf("%w: %q", runtime.ErrUnknownModel, modelID)
	}
	return len(llama.Tokenize(m.vocab, text, true, false)), nil
}

// Generate starts one generation: it renders and tokenizes the prompt, decodes
// it (and the continuation, if any) and returns a stream of the new text.
// It waits for a free context of the model, honouring ctx.
func (b *Backend) Generate(ctx context.Context, req runtime.Request) (runtime.Stream, error) {
	select {
	case <-b.closing:
		return nil, runtime.ErrClosed
	default:
	}
	m, ok := b.models[req.Model]
	if !ok {
		return nil, fmt.Errorf("%w: %q", runtime.ErrUnknownModel, req.Model)
	}
	if err := m.info.Serves(req); err != nil {
		return nil, err
	}
	if err := checkParams(req); err != nil {
		return nil, err
	}
	if err := m.checkSampling(req); err != nil {
		return nil, err
	}
	if err := checkTools(req); err != nil {
		return nil, err
	}
	text, special, err := m.render(req)
	if err != nil {
		return nil, err
	}

	var s *slot
	select {
	case s = <-m.pool:
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for a %s context: %w", m.info.ID, ctx.Err())
	case <-b.closing:
		return nil, runtime.ErrClosed
	}
	st := &stream{b: b, m: m, slot: s, ctx: ctx, stops: req.Stop}
	s.cur.Store(&st.abort)
	st.stopAbort = context.AfterFunc(ctx, func() { st.abort.Store(true) })
	if err := st.start(req, text, special); err != nil {
		st.release()
		return nil, err
	}
	return st, nil
}

func checkParams(req runtime.Request) error {
	switch {
	case req.MaxTokens < 0:
		return fmt.Errorf("%w: max_tokens %d is negative", runtime.ErrInvalidRequest, req.MaxTokens)
	case req.Temperature < 0 || req.Temperature > 2:
		return fmt.Errorf("%w: temperature %g is outside [0, 2]", runtime.ErrInvalidRequest, req.Temperature)
	case req.TopP < 0 || req.TopP > 1:
		return fmt.Errorf("%w: top_p %g is outside [0, 1]", runtime.ErrInvalidRequest, req.TopP)
	case len(req.Messages) > 0 && req.Prompt != "":
		return fmt.Errorf("%w: both messages and prompt given", runtime.ErrInvalidRequest)
	case len(req.Messages) == 0 && req.Prompt == "":
		return fmt.Errorf("%w: empty prompt", runtime.ErrInvalidRequest)
	}
	for _, s := range req.Stop {
		if s == "" {
			return fmt.Errorf("%w: empty stop sequence", runtime.ErrInvalidRequest)
		}
	}
	return nil
}

// checkSampling holds the sampling fields to what llama.cpp is given, before
// anything native sees them: a logit_bias id outside the vocabulary would
// be read past the logits.
func (m *model) checkSampling(req runtime.Request) error {
	bad := func(field, format string, args ...any) error {
		return &runtime.FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	switch {
	case req.TopLogprobs < 0 || req.TopLogprobs > runtime.MaxTopLogprobs:
		return bad("top_logprobs", "%d is outside [0, %d]", req.TopLogprobs, runtime.MaxTopLogprobs)
	case req.TopLogprobs > 0 && !req.Logprobs:
		return bad("top_logprobs", "given without logprobs")
	case !(req.PresencePenalty >= -2 && req.PresencePenalty <= 2):
		return bad("presence_penalty", "%g is outside [-2, 2]", req.PresencePenalty)
	case !(req.FrequencyPenalty >= -2 && req.FrequencyPenalty <= 2):
		return bad("frequency_penalty", "%g is outside [-2, 2]", req.FrequencyPenalty)
	case len(req.LogitBias) > runtime.MaxLogitBias:
		return bad("logit_bias", "%d entries, at most %d", len(req.LogitBias), runtime.MaxLogitBias)
	}
	for id, v := range req.LogitBias {
		if id < 0 || int(id) >= m.nVocab {
			return bad("logit_bias", "token id %d is outside the vocabulary of %s (%d tokens)", id, m.info.ID, m.nVocab)
		}
		if !(v >= -100 && v <= 100) {
			return bad("logit_bias", "bias %g of token %d is outside [-100, 100]", v, id)
		}
	}
	return nil
}

// render turns the request into prompt text; special says whether that text
// may hold special tokens to parse (those a chat template writes). A raw prompt
// is plain text: a user cannot smuggle control tokens in through it.
func (m *model) render(req runtime.Request) (text string, special bool, err error) {
	if len(req.Messages) == 0 {
		return req.Prompt, false, nil
	}
	for i, msg := range req.Messages {
		switch msg.Role {
		case "system", "user", "assistant", "developer", "tool":
		default:
			return "", false, fmt.Errorf("%w: messages[%d].role %q unknown", runtime.ErrInvalidRequest, i, msg.Role)
		}
	}
	msgs := toolMessages(req)
	if m.template != "" {
		if out, ok := applyTemplate(m.template, msgs); ok {
			return out, true, nil
		}
		// llama.cpp recognises templates by pattern; one it does not know falls
		// back to the plain template below rather than failing every request.
	}
	return PlainTemplate(msgs), false, nil
}

func applyTemplate(tmpl string, msgs []runtime.Message) (string, bool) {
	chat := make([]llama.ChatMessage, len(msgs))
	size := 0
	for i, msg := range msgs {
		chat[i] = llama.NewChatMessage(msg.Role, msg.Content)
		size += len(msg.Role) + len(msg.Content) + 64
	}
	buf := make([]byte, 2*size+1024)
	n := llama.ChatApplyTemplate(tmpl, chat, true, buf)
	if n > int32(len(buf)) {
		buf = make([]byte, n)
		n = llama.ChatApplyTemplate(tmpl, chat, true, buf)
	}
	goruntime.KeepAlive(chat)
	if n <= 0 || n > int32(len(buf)) {
		return "", false
	}
	return string(buf[:n]), true
}

// PlainTemplate is the chat template of models whose GGUF has none: one
// "Role: content" paragraph per message, then "Assistant:" for the reply.
func PlainTemplate(msgs []runtime.Message) string {
	var sb strings.Builder
	for _, msg := range msgs {
		role := msg.Role
		if role != "" {
			role = strings.ToUpper(role[:1]) + role[1:]
		}
		sb.WriteString(role)
		sb.WriteString(": ")
		sb.WriteString(msg.Content)
		sb.WriteString("\n\n")
	}
	sb.WriteString("Assistant:")
	return sb.String()
}

// randomSeed is the seed of a request that gives none.
func randomSeed() uint32 {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return binary.LittleEndian.Uint32(b[:])
}

var errAborted = errors.New("llamacpp: decode aborted")
