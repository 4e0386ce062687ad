package llamacpp

import (
	"context"
	"fmt"
	"math"
	"sync/atomic"

	"github.com/hybridgroup/yzma/pkg/llama"

	"github.com/cocoon-network/cocoon/runtime"
)

var _ runtime.Embedder = (*Backend)(nil)

// Embed returns one vector per input, each L2-normalised (as OpenAI's are)
// and of the model's EmbeddingDims, and the tokens of all inputs.
//
// Every input is checked before any is computed. They are then computed one
// at a time, on the model's embeddings context (its own, made by the first
// Embed, so generations go on meanwhile): Embed calls on one model take
// turns, ctx is honoured between inputs and, through llama.cpp's abort
// callback, inside one; Close stops an Embed in progress and waits for it.
func (b *Backend) Embed(ctx context.Context, req runtime.EmbedRequest) (runtime.Embeddings, error) {
	select {
	case <-b.closing:
		return runtime.Embeddings{}, runtime.ErrClosed
	default:
	}
	m, ok := b.models[req.Model]
	if !ok {
		return runtime.Embeddings{}, fmt.Errorf("%w: %q", runtime.ErrUnknownModel, req.Model)
	}
	if err := m.info.ServesEmbeddings(); err != nil {
		return runtime.Embeddings{}, err
	}
	switch {
	case len(req.Inputs) == 0:
		return runtime.Embeddings{}, &runtime.FieldError{Field: "input", Msg: "no inputs"}
	case len(req.Inputs) > runtime.MaxEmbedInputs:
		return runtime.Embeddings{}, &runtime.FieldError{Field: "input", Msg: fmt.Sprintf("%d inputs, at most %d", len(req.Inputs), runtime.MaxEmbedInputs)}
	}
	// Everything native happens under embedMu, after the closing check:
	// Close frees the model (its vocabulary too) once it holds embedMu, and
	// a tokenizer running beside it aborted the process.
	m.embedMu.Lock()
	defer m.embedMu.Unlock()
	select {
	case <-b.closing: // Close may have freed the context while we waited
		return runtime.Embeddings{}, runtime.ErrClosed
	default:
	}
	var out runtime.Embeddings
	toks := make([][]llama.Token, len(req.Inputs))
	for i, in := range req.Inputs {
		field := fmt.Sprintf("input[%d]", i)
		if in == "" {
			return runtime.Embeddings{}, &runtime.FieldError{Field: field, Msg: "empty"}
		}
		toks[i] = llama.Tokenize(m.vocab, in, true, false)
		if n := len(toks[i]); n > m.nCtx {
			return runtime.Embeddings{}, &runtime.FieldError{Field: field, Msg: fmt.Sprintf("%d tokens, the context of %s holds %d", n, m.info.ID, m.nCtx)}
		}
		out.PromptTokens += len(toks[i])
	}

	if m.embed == nil {
		if err := m.newEmbedContext(); err != nil {
			return runtime.Embeddings{}, err
		}
	}
	var abort atomic.Bool
	m.embedCur.Store(&abort)
	defer m.embedCur.Store(nil)
	stop := context.AfterFunc(ctx, func() { abort.Store(true) })
	defer stop()

	lctx := m.embed.lctx
	mem, err := llama.GetMemory(lctx)
	if err != nil {
		return runtime.Embeddings{}, fmt.Errorf("llamacpp: memory of the embeddings context: %w", err)
	}
	dims := m.info.EmbeddingDims
	for i, t := range toks {
		if err := ctx.Err(); err != nil {
			return runtime.Embeddings{}, fmt.Errorf("embeddings: %w", err)
		}
		if err := llama.MemoryClear(mem, true); err != nil {
			return runtime.Embeddings{}, fmt.Errorf("llamacpp: clear the embeddings context: %w", err)
		}
		rc, err := llama.Decode(lctx, llama.BatchGetOne(t))
		switch {
		case err != nil:
			return runtime.Embeddings{}, fmt.Errorf("llamacpp: embed input %d: %w", i, err)
		case rc == 2:
			select {
			case <-b.closing:
				return runtime.Embeddings{}, runtime.ErrClosed
			default:
			}
			if err := ctx.Err(); err != nil {
				return runtime.Embeddings{}, fmt.Errorf("embeddings: %w", err)
			}
			return runtime.Embeddings{}, errAborted
		case rc != 0:
			return runtime.Embeddings{}, fmt.Errorf("llamacpp: embed input %d (%d tokens): llama_decode returned %d", i, len(t), rc)
		}
		v, err := llama.GetEmbeddingsSeq(lctx, 0, int32(dims))
		if err != nil || v == nil {
			return runtime.Embeddings{}, fmt.Errorf("llamacpp: embed input %d: no pooled embedding (%v)", i, err)
		}
		out.Vectors = append(out.Vectors, normalize(v))
	}
	return out, nil
}

// normalize copies v scaled to unit L2 norm (a zero vector stays zero).
func normalize(v []float32) []float32 {
	sum := 0.0
	for _, x := range v {
		sum += float64(x) * float64(x)
	}
	out := make([]float32, len(v))
	norm := math.Sqrt(sum)
	for i, x := range v {
		if norm > 0 {
			out[i] = float32(float64(x) / norm)
		}
	}
	return out
}

// newEmbedContext makes the model's embeddings context: embeddings on,
// the pooling the GGUF states or else mean pooling, and one micro-batch as
// large as the context, since pooling reads all of an input at once.
// m.embedMu is held.
func (m *model) newEmbedContext() error {
	cp := llama.ContextDefaultParams()
	cp.NCtx = uint32(m.nCtx)
	cp.NBatch = uint32(m.nCtx)
	cp.NUbatch = uint32(m.nCtx)
	cp.NSeqMax = 1
	cp.NThreads = int32(m.threads)
	cp.NThreadsBatch = int32(m.threads)
	cp.NoPerf = 1
	cp.Embeddings = 1
	cp.PoolingType = m.pooling()
	lctx, err := llama.InitFromModel(m.m, cp)
	if err != nil {
		return fmt.Errorf("llamacpp: create the embeddings context of %s: %v %s", m.info.ID, err, lib.logs.take())
	}
	s := &slot{lctx: lctx}
	llama.SetAbortCallback(lctx, func() bool {
		f := m.embedCur.Load()
		return f != nil && f.Load()
	})
	m.embed = s
	return nil
}

// pooling is the GGUF's pooling type when it states one other than none
// (llama.cpp then applies it itself), else mean pooling.
func (m *model) pooling() llama.PoolingType {
	arch, _ := llama.ModelMetaValStr(m.m, "general.architecture")
	if v, ok := llama.ModelMetaValStr(m.m, arch+".pooling_type"); ok && v != "" && v != "0" {
		return llama.PoolingTypeUnspecified
	}
	return llama.PoolingTypeMean
}

// freeEmbed stops an Embed in progress, waits for it and frees the
// embeddings context; later Embed calls see the backend closed.
func (m *model) freeEmbed() {
	if f := m.embedCur.Load(); f != nil {
		f.Store(true)
	}
	m.embedMu.Lock()
	defer m.embedMu.Unlock()
	if m.embed != nil {
		llama.Free(m.embed.lctx)
		m.embed = nil
	}
}
