package llamacpp

import (
	"context"
	"crypto/rand"
	"encoding/hex"
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

	// Logprobs: asked for, and how many alternatives; lps are the entries
	// of pending's tokens, each with its bytes' span in pending.
	logprobs bool
	topN     int
	lps      []pendingLogprob

	// Tool calls: mode says whether the output is text or a call, or, under
	// tool_choice auto before its first byte, not yet known. A call's text
	// gathers in call; its arguments are streamed as they become certain.
	mode     outputMode
	call     []byte
	callID   string
	callName string
	argsAt   int // offset of the arguments in call, once the head is parsed
	argsSent int // bytes of the arguments handed out
}

type outputMode int

const (
	modeText outputMode = iota
	modeUndecided
	modeCall
)

// pendingLogprob is the logprob entry of a token whose bytes are
// pending[start:end].
type pendingLogprob struct {
	start, end int
	lp         runtime.TokenLogprob
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

	s.logprobs, s.topN = req.Logprobs, req.TopLogprobs
	// The grammar of a response format or of the tool choice is built, and
	// the continuation checked against it, before anything is decoded.
	var gs llama.Sampler
	if req.Format != nil {
		var err error
		if gs, err = m.formatSampler(req.Format, cont); err != nil {
			return err
		}
	} else if toolsActive(req) {
		g, err := callGrammar(req)
		if err != nil {
			return err
		}
		if gs = llama.SamplerInitGrammar(m.vocab, g, "root"); gs == 0 {
			return &runtime.FieldError{Field: "tools", Msg: "llama.cpp refuses the grammar of the tools' parameters"}
		}
		s.mode = modeCall
		if req.EffectiveToolChoice().Mode == runtime.ToolChoiceAuto {
			s.mode = modeUndecided
		}
		s.callID = newCallID()
	}
	if gs != 0 {
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
	if len(req.LogitBias) > 0 {
		// Ids were checked against the vocabulary by checkSampling;
		// llama.cpp copies the array.
		bias := make([]llama.LogitBias, 0, len(req.LogitBias))
		for id, v := range req.LogitBias {
			bias = append(bias, llama.LogitBias{Token: llama.Token(id), Bias: float32(v)})
		}
		slices.SortFunc(bias, func(a, b llama.LogitBias) int { return int(a.Token) - int(b.Token) })
		llama.SamplerChainAdd(chain, llama.SamplerInitLogitBias(int32(m.nVocab), int32(len(bias)), &bias[0]))
	}
	if req.PresencePenalty != 0 || req.FrequencyPenalty != 0 {
		// Over every token generated (the sampler sees only those it
		// accepts: not the prompt's), repeat penalty off.
		llama.SamplerChainAdd(chain, llama.SamplerInitPenalties(int32(m.nVocab), int32(m.nCtx), 1,
			float32(req.FrequencyPenalty), float32(req.PresencePenalty)))
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
		if s.mode == modeCall {
			if _, _, ok := parseCall(string(s.call)); ok {
				s.finish = runtime.FinishToolCalls
			}
		}
		return nil
	}
	s.budget--
	s.usage.CompletionTokens++
	s.pendTok++
	var lp runtime.TokenLogprob
	if s.logprobs && s.mode != modeCall {
		var err error
		if lp, err = s.logprob(tok); err != nil {
			return err
		}
	}
	piece := s.m.tokenPiece(tok, &s.piece)
	s.next = append(s.next, tok)
	if s.mode == modeUndecided && len(piece) > 0 {
		// The grammar of tool_choice auto allows a call, which starts with
		// "{", or text, which never does.
		s.mode = modeText
		if piece[0] == '{' {
			s.mode = modeCall
			s.lps = s.lps[:0]
		}
	}
	if s.mode == modeCall {
		s.call = append(s.call, piece...)
		return nil
	}
	start := len(s.pending)
	s.pending = append(s.pending, piece...)
	if s.logprobs {
		s.lps = append(s.lps, pendingLogprob{start: start, end: len(s.pending), lp: lp})
	}
	if i := s.stopIndex(); i >= 0 {
		s.pending = s.pending[:i]
		s.finished, s.finish = true, runtime.FinishStop
		// Tokens of the stop sequence are never sent: no entries for them.
		keep := s.lps[:0]
		for _, e := range s.lps {
			if e.start < i {
				e.end = min(e.end, i)
				keep = append(keep, e)
			}
		}
		s.lps = keep
	}
	return nil
}

// tokenPiece is tok's text, in *buf (grown if need be).
func (m *model) tokenPiece(tok llama.Token, buf *[]byte) []byte {
	n := llama.TokenToPiece(m.vocab, tok, *buf, 0, false)
	if n < 0 {
		*buf = make([]byte, -n)
		n = llama.TokenToPiece(m.vocab, tok, *buf, 0, false)
	}
	return (*buf)[:max(n, 0)]
}

// logprob is the entry of tok, sampled from the last decoded position: a
// log-softmax of the model's raw logits there (before temperature,
// penalties, logit_bias and grammar, as vLLM reports by default) and the
// topN likeliest tokens, likeliest first.
func (s *stream) logprob(tok llama.Token) (runtime.TokenLogprob, error) {
	logits, err := llama.GetLogitsIth(s.slot.lctx, -1, s.m.nVocab)
	if err != nil || logits == nil {
		return runtime.TokenLogprob{}, fmt.Errorf("llamacpp: logits of the sampled position: %v", err)
	}
	lse := logSumExp(logits)
	entry := func(t llama.Token) (string, float64, []byte) {
		b := bytesClone(s.m.tokenPiece(t, &s.piece))
		return string(b), float64(logits[t]) - lse, b
	}
	var lp runtime.TokenLogprob
	lp.Token, lp.Logprob, lp.Bytes = entry(tok)
	for _, t := range topTokens(logits, s.topN) {
		var tl runtime.TopLogprob
		tl.Token, tl.Logprob, tl.Bytes = entry(t)
		lp.Top = append(lp.Top, tl)
	}
	return lp, nil
}

// logSumExp is log Σ exp(x), computed stably in float64.
func logSumExp(x []float32) float64 {
	hi := math.Inf(-1)
	for _, v := range x {
		hi = max(hi, float64(v))
	}
	if math.IsInf(hi, 0) {
		return hi
	}
	sum := 0.0
	for _, v := range x {
		sum += math.Exp(float64(v) - hi)
	}
	return hi + math.Log(sum)
}

// topTokens are the ids of the n largest logits, largest first (the lower
// id first among equals).
func topTokens(logits []float32, n int) []llama.Token {
	if n <= 0 {
		return nil
	}
	top := make([]llama.Token, 0, n+1)
	for i, v := range logits {
		if len(top) == n && v <= logits[top[n-1]] {
			continue
		}
		j := len(top)
		for j > 0 && v > logits[top[j-1]] {
			j--
		}
		top = slices.Insert(top, j, llama.Token(i))
		if len(top) > n {
			top = top[:n]
		}
	}
	return top
}

func bytesClone(b []byte) []byte { return append([]byte(nil), b...) }

// newCallID is a fresh tool call id: "call_" and 24 random hex digits.
func newCallID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return "call_" + hex.EncodeToString(b[:])
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
	if s.mode == modeCall {
		return s.emitCall(final)
	}
	n := len(s.pending)
	if !final {
		n -= holdBack(s.pending, s.stops)
	}
	if n <= 0 && !(final && (s.pendTok > 0 || len(s.lps) > 0)) {
		return runtime.Delta{}, false
	}
	n = max(n, 0)
	d := runtime.Delta{Text: string(s.pending[:n]), Tokens: s.pendTok}
	s.pending = append(s.pending[:0], s.pending[n:]...)
	s.pendTok = 0
	// A token goes with the delta that holds its last byte.
	k := 0
	for k < len(s.lps) && s.lps[k].end <= n {
		d.Logprobs = append(d.Logprobs, s.lps[k].lp)
		k++
	}
	s.lps = append(s.lps[:0], s.lps[k:]...)
	for i := range s.lps {
		s.lps[i].start = max(s.lps[i].start-n, 0)
		s.lps[i].end -= n
	}
	return d, true
}

// emitCall hands out the tokens generated since the last delta and what
// has become certain of the call: its id and name once the head is
// written, then its arguments as they grow, less a tail that may be the
// call's closing brace.
func (s *stream) emitCall(final bool) (runtime.Delta, bool) {
	d := runtime.Delta{Tokens: s.pendTok}
	s.pendTok = 0
	var piece runtime.ToolCallDelta
	if s.callName == "" {
		if name, at, ok := callPrefix(string(s.call)); ok {
			s.callName, s.argsAt = name, at
			piece.ID, piece.Name = s.callID, name
		}
	}
	if s.callName != "" {
		args := string(s.call[s.argsAt:])
		switch {
		case !final:
			args = args[:len(args)-argsHoldBack(args)]
		default:
			if _, whole, ok := parseCall(string(s.call)); ok {
				args = whole
			} // else cut short (max_tokens): all of it
		}
		if len(args) > s.argsSent {
			piece.Arguments = args[s.argsSent:]
			s.argsSent = len(args)
		}
	}
	if piece != (runtime.ToolCallDelta{}) {
		d.ToolCalls = []runtime.ToolCallDelta{piece}
	}
	return d, d.Tokens > 0 || d.ToolCalls != nil
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
