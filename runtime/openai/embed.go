package openai

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"github.com/cocoon-network/cocoon/runtime"
)

// Embed asks the upstream's POST /embeddings for one vector per input, as
// floats. It checks that the answer holds one vector per input (by index),
// each of the model's EmbeddingDims, and usage.prompt_tokens, without which
// the call is refused with runtime.ErrUnbillable. A model that declares no
// embeddings is refused with the *runtime.FieldError of
// Model.ServesEmbeddings before anything is sent. The whole call is bounded
// by ConnectTimeout plus FirstEventTimeout.
func (b *Backend) Embed(ctx context.Context, req runtime.EmbedRequest) (runtime.Embeddings, error) {
	m, ok := b.model(req.Model)
	if !ok {
		return runtime.Embeddings{}, fmt.Errorf("%w: %q", runtime.ErrUnknownModel, req.Model)
	}
	if err := m.ServesEmbeddings(); err != nil {
		return runtime.Embeddings{}, fmt.Errorf("openai backend: %w", err)
	}
	if err := req.Check(); err != nil {
		return runtime.Embeddings{}, fmt.Errorf("openai backend: %w", err)
	}
	return b.embed(ctx, m.ID, req.Inputs, m.EmbeddingDims)
}

// embed runs one embeddings call; dims 0 takes the length of the first
// vector (New's probe).
func (b *Backend) embed(ctx context.Context, model string, inputs []string, dims int) (runtime.Embeddings, error) {
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, b.cfg.ConnectTimeout+b.cfg.FirstEventTimeout)
	defer cancel()
	url := b.base + "/embeddings"
	fail := func(err error) (runtime.Embeddings, error) {
		if parent.Err() != nil {
			return runtime.Embeddings{}, fmt.Errorf("openai backend: %w", parent.Err())
		}
		return runtime.Embeddings{}, upstreamError("POST %s: %w", url, err)
	}
	body, err := json.Marshal(struct {
		Model          string   `json:"model"`
		Input          []string `json:"input"`
		EncodingFormat string   `json:"encoding_format"`
	}{model, inputs, "float"})
	if err != nil {
		return runtime.Embeddings{}, fmt.Errorf("openai backend: %w", err)
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return runtime.Embeddings{}, fmt.Errorf("openai backend: %w", err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	b.auth(hreq)
	resp, err := b.client.Do(hreq)
	if err != nil {
		return fail(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return runtime.Embeddings{}, statusError(url, resp.StatusCode, msg)
	}
	var out struct {
		Data []struct {
			Index     *int      `json:"index"`
			Embedding []float32 `json:"embedding"` // a base64 string (encoding_format ignored) fails here
		} `json:"data"`
		Usage *struct {
			PromptTokens *int `json:"prompt_tokens"`
		} `json:"usage"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, embedAnswerBytes(len(inputs), dims))).Decode(&out); err != nil {
		return fail(fmt.Errorf("not an embeddings answer: %w", err))
	}
	if len(out.Data) != len(inputs) {
		return fail(fmt.Errorf("%d embeddings for %d inputs", len(out.Data), len(inputs)))
	}
	vecs := make([][]float32, len(inputs))
	for i, d := range out.Data {
		switch {
		case d.Index == nil || *d.Index < 0 || *d.Index >= len(inputs):
			return fail(fmt.Errorf("embedding %d has no index in 0..%d", i, len(inputs)-1))
		case vecs[*d.Index] != nil:
			return fail(fmt.Errorf("index %d given twice", *d.Index))
		case dims == 0 && (len(d.Embedding) == 0 || len(d.Embedding) > runtime.MaxEmbeddingDims):
			return fail(fmt.Errorf("an embedding of %d dims, not 1 to %d", len(d.Embedding), runtime.MaxEmbeddingDims))
		case dims == 0:
			dims = len(d.Embedding)
		case len(d.Embedding) != dims:
			return fail(fmt.Errorf("embedding %d has %d dims; model %q has %d", *d.Index, len(d.Embedding), model, dims))
		}
		vecs[*d.Index] = d.Embedding
	}
	if out.Usage == nil || out.Usage.PromptTokens == nil || *out.Usage.PromptTokens < 0 {
		return runtime.Embeddings{}, fmt.Errorf("%w: POST %s answered no usage.prompt_tokens; not billing by guesswork", runtime.ErrUnbillable, url)
	}
	return runtime.Embeddings{Vectors: vecs, PromptTokens: *out.Usage.PromptTokens}, nil
}

// embedAnswerBytes bounds the answer to n inputs of dims (0: unknown):
// at most 32 bytes a float as JSON, and room for the rest.
func embedAnswerBytes(n, dims int) int64 {
	if dims == 0 {
		dims = runtime.MaxEmbeddingDims
	}
	return 1<<20 + int64(n)*(int64(dims)*32+256)
}
