package llamacpp

import (
	"context"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/hybridgroup/yzma/pkg/llama"

	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/grammar"
)

// stream is one generation on one slot. Recv runs the model; Close may come
// from another goroutine and takes the mutex after raising the abort flag.
type stream struct {
	b         *Backend
	m         *model
	ctx       context.Context
	stopAbort func() bool
	stops     []string
	abort     atomic.Bool // raised by ctx's cancel or Close; read by llama.cpp's abort callback

	mu       sync.Mutex
	slot     *slot // nil once given back
	sampler  llama.Sampler
	nPast    int           // tokens in the KV cache
	next     []llama.Token // sampled, not yet decoded
	budget   int           // tokens this stream may still generate
	pending  []byte        // generated text not yet handed out
	pendTok  int           // tokens behind pending (and not yet counted in a delta)
	usage    runtime.Usage
	finish   string
	finished bool // no more sampling; pending is flushed by Recv
	err      error
	piece    []byte
}

// start tokenizes and decodes the prompt and continuation, and builds the sampler.
func (s *stream) start(req runtime.Request, text string, special bool) error {
	m := s.m
	lctx := s.slot.lctx
	prompt := llama.Tokenize(m.vocab, text, true, special)
	if len(prompt) == 0 {
		return fmt.Errorf("%w: prompt tokenizes to nothing", runtime.ErrInvalidRequest)
	}
	cont := m.continuationTokens(prompt, text, req.Continuation, special)
	if n := len(prompt) + len(cont); n >= m.nCtx {
		return fmt.Errorf("%w: prompt and continuation are %d tokens, the context of %s holds %d", runtime.ErrInvalidRequest, n, m.info.ID, m.nCtx)
	}
	s.usage.PromptTokens = len(prompt)
	s.budget = m.nCtx - len(prompt) - len(cont)
	if req.MaxTokens > 0 {
		// max_tokens counts from the start of the request: the continuation
		// was generated under the same budget.
		s.budget = min(s.budget, req.MaxTokens-len(cont))
	}

	// The grammar of a response format is built, and the continuation
	// checked against it, before anything is decoded.
	var gs llama.Sampler
	if req.Format != nil {
		var err error
		if gs, err = m.formatSampler(req.Format, cont); err != nil {
			return err
		}
		defer func() {
			if s.sampler == 0 { // not handed to the chain
				llama.SamplerFree(gs)
			}
		}()
	}

	mem, err := llama.GetMemory(lctx)
	if err != nil {
		return fmt.Errorf("llamacpp: memory of context: %w", err)
	}
	if err := llama.MemoryClear(mem, true); err != nil {
		return fmt.Errorf("llamacpp: clear context: %w", err)
	}
	if err := s.decode(append(prompt, cont...)); err != nil {
		return err
	}

	seed := randomSeed()
	if req.Seed != nil {
		seed = uint32(*req.Seed ^ *req.Seed>>32)
	}
	chain := llama.SamplerChainInit(llama.SamplerChainDefaultParams())
	if gs != 0 {
		// First, so that temperature and top_p choose among the tokens the
		// grammar allows; the chain frees it.
		llama.SamplerChainAdd(chain, gs)
	}
	if req.Temperature == 0 {
		llama.SamplerChainAdd(chain, llama.SamplerInitGreedy())
	} else {
		if req.TopP > 0 && req.TopP < 1 {
			llama.SamplerChainAdd(chain, llama.SamplerInitTopP(float32(req.TopP), 1))
		}
		llama.SamplerChainAdd(chain, llama.SamplerInitTemp(float32(req.Temperature)))
		llama.SamplerChainAdd(chain, llama.SamplerInitDist(seed))
	}
	s.sampler = chain
	s.piece = make([]byte, 256)
	return nil
}

// formatSampler returns llama.cpp's grammar sampler for a response format,
// advanced over the continuation's tokens (text another worker delivered
// under the same format). A continuation the grammar does not allow is
// refused: llama.cpp aborts on accepting a token its grammar rejects, so each
// one is tried first.
func (m *model) formatSampler(f *runtime.ResponseFormat, cont []llama.Token) (llama.Sampler, error) {
	var g string
	switch f.Type {
	case runtime.FormatJSONObject:
		g = grammar.JSONObject()
	case runtime.FormatJSONSchema:
		var err error
		if g, err = grammar.FromSchema(f.Schema); err != nil {
			return 0, &runtime.FieldError{Field: "response_format.json_schema.schema", Msg: err.Error()}
		}
	default:
		return 0, &runtime.FieldError{Field: "response_format.type", Msg: fmt.Sprintf("%.32q is not json_object or json_schema", f.Type)}
	}
	gs := llama.SamplerInitGrammar(m.vocab, g, "root")
	if gs == 0 {
		return 0, fmt.Errorf("llamacpp: llama.cpp refuses the grammar of response_format %s", f.Type)
	}
	for i, tok := range cont {
		td := llama.TokenData{Id: tok}
		arr := llama.TokenDataArray{Data: &td, Size: 1, Selected: -1}
		llama.SamplerApply(gs, &arr)
		if math.IsInf(float64(td.Logit), -1) {
			llama.SamplerFree(gs)
			return 0, &runtime.FieldError{Field: "continuation", Msg: fmt.Sprintf("token %d does not follow response_format", i)}
		}
		llama.SamplerAccept(gs, tok)
	}
	return gs, nil
}

// continuationTokens tokenizes text already delivered so that it follows the
// prompt tokens exactly as generated tokens would. Tokenizing it alone would
// add SentencePiece's leading space, so the prompt and continuation are
// tokenized together and the prompt's tokens cut off; where the two merge
// across the boundary, the continuation is tokenized after a newline instead
// and the newline's tokens cut off.
func (m *model) continuationTokens(prompt []llama.Token, text, cont string, special bool) []llama.Token {
	if cont == "" {
		return nil
	}
	joint := llama.Tokenize(m.vocab, text+cont, true, special)
	if len(joint) > len(prompt) && slices.Equal(joint[:len(prompt)], prompt) {
		return joint[len(prompt):]
	}
	nl := llama.Tokenize(m.vocab, "\n", false, false)
	withNL := llama.Tokenize(m.vocab, "\n"+cont, false, false)
	if len(withNL) > len(nl) && slices.Equal(withNL[:len(nl)], nl) {
		return withNL[len(nl):]
	}
	return llama.Tokenize(m.vocab, cont, false, false)
}

// decode feeds tokens to the context in batches, checking for cancellation
// between batches (and inside one through the abort callback).
func (s *stream) decode(toks []llama.Token) error {
	for len(toks) > 0 {
		if err := s.interrupted(); err != nil {
			return err
		}
		n := min(len(toks), s.m.nBatch)
		batch := llama.BatchGetOne(toks[:n])
		rc, err := llama.Decode(s.slot.lctx, batch)
		if err != nil {
			return fmt.Errorf("llamacpp: decode: %w", err)
		}
		switch rc {
		case 0:
		case 2:
			if err := s.interrupted(); err != nil {
				return err
			}
			return errAborted
		default:
			return fmt.Errorf("llamacpp: decode %d tokens at position %d: llama_decode returned %d", n, s.nPast, rc)
		}
		s.nPast += n
		toks = toks[n:]
	}
	return nil
}

// interrupted says why the stream must stop now, if it must.
func (s *stream) interrupted() error {
	select {
	case <-s.b.closing:
		return runtime.ErrClosed
	default:
	}
	if err := s.ctx.Err(); err != nil {
		return fmt.Errorf("generation: %w", err)
	}
	if s.abort.Load() {
		// Close raised the flag.
		return fmt.Errorf("generation: %w", errStreamClosed)
	}
	return nil
}

var errStreamClosed = fmt.Errorf("stream closed")

// Recv returns the next piece of text. Text that could be the start of a stop
// sequence, or an incomplete UTF-8 sequence, is held back until it is known.
// The sum of Delta.Tokens equals Usage().CompletionTokens; the last delta may
// carry tokens with empty text (those of a stop sequence, which is not sent).
func (s *stream) Recv() (runtime.Delta, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return runtime.Delta{}, s.err
	}
	for !s.finished {
		if err := s.step(); err != nil {
			s.fail(err)
			return runtime.Delta{}, err
		}
		if d, ok := s.emit(false); ok {
			return d, nil
		}
	}
	if d, ok := s.emit(true); ok {
		return d, nil
	}
	s.err = io.EOF
	s.release()
	return runtime.Delta{}, io.EOF
}

// step decodes the last sampled token and samples the next one.
func (s *stream) step() error {
	if err := s.interrupted(); err != nil {
		return err
	}
	if len(s.next) > 0 {
		if err := s.decode(s.next); err != nil {
			return err
		}
		s.next = s.next[:0]
	}
	if s.budget <= 0 || s.nPast >= s.m.nCtx {
		s.finished, s.finish = true, runtime.FinishLength
		return nil
	}
	tok := llama.SamplerSample(s.sampler, s.slot.lctx, -1)
	if llama.VocabIsEOG(s.m.vocab, tok) {
		s.finished, s.finish = true, runtime.FinishStop
		return nil
	}
	s.budget--
	s.usage.CompletionTokens++
	s.pendTok++
	n := llama.TokenToPiece(s.m.vocab, tok, s.piece, 0, false)
	if n < 0 {
		s.piece = make([]byte, -n)
		n = llama.TokenToPiece(s.m.vocab, tok, s.piece, 0, false)
	}
	if n > 0 {
		s.pending = append(s.pending, s.piece[:n]...)
	}
	s.next = append(s.next, tok)
	if i := s.stopIndex(); i >= 0 {
		s.pending = s.pending[:i]
		s.finished, s.finish = true, runtime.FinishStop
	}
	return nil
}

// stopIndex is the offset of the earliest stop sequence in pending, or -1.
func (s *stream) stopIndex() int {
	first := -1
	for _, stop := range s.stops {
		if i := strings.Index(string(s.pending), stop); i >= 0 && (first < 0 || i < first) {
			first = i
		}
	}
	return first
}

// emit hands out pending text, keeping back what may still become a stop
// sequence or complete a UTF-8 character unless final.
func (s *stream) emit(final bool) (runtime.Delta, bool) {
	n := len(s.pending)
	if !final {
		n -= holdBack(s.pending, s.stops)
	}
	if n <= 0 && !(final && s.pendTok > 0) {
		return runtime.Delta{}, false
	}
	n = max(n, 0)
	d := runtime.Delta{Text: string(s.pending[:n]), Tokens: s.pendTok}
	s.pending = append(s.pending[:0], s.pending[n:]...)
	s.pendTok = 0
	return d, true
}

// holdBack is how many trailing bytes of p must wait: the longest suffix that
// is a proper prefix of a stop sequence, or an incomplete UTF-8 character.
func holdBack(p []byte, stops []string) int {
	hold := 0
	for _, stop := range stops {
		for k := min(len(stop)-1, len(p)); k > hold; k-- {
			if string(p[len(p)-k:]) == stop[:k] {
				hold = k
				break
			}
		}
	}
	// An incomplete multi-byte character at the end.
	for k := 1; k <= 3 && k <= len(p); k++ {
		c := p[len(p)-k]
		if c < 0x80 {
			break
		}
		if utf8.RuneStart(c) {
			if !utf8.FullRune(p[len(p)-k:]) {
				hold = max(hold, k)
			}
			break
		}
	}
	return hold
}

func (s *stream) fail(err error) {
	s.err = err
	s.release()
}

// release gives the slot back; the mutex is held.
func (s *stream) release() {
	if s.slot == nil {
		return
	}
	if s.sampler != 0 {
		llama.SamplerFree(s.sampler)
		s.sampler = 0
	}
	s.stopAbort()
	sl := s.slot
	s.slot = nil
	sl.cur.Store(nil)
	s.m.pool <- sl
}

func (s *stream) Usage() runtime.Usage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.usage
}

func (s *stream) FinishReason() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.finish
}

// Close ends the generation and gives its context back. It may be called from
// any goroutine, also while Recv runs: the abort flag makes Recv return first.
func (s *stream) Close() error {
	s.abort.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = fmt.Errorf("generation: %w", errStreamClosed)
	}
	s.release()
	return nil
}
