package service

import (
	"context"
	"slices"

	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

// Models implements runtime.Backend: every model offered in the book, with the
// largest context length offered, and each capability some worker offers (a
// job that uses one goes only to such workers).
func (c *Client) Models() []runtime.Model {
	var out []runtime.Model
	idx := map[string]int{}
	for _, a := range c.book.All() {
		for _, o := range a.Models {
			i, ok := idx[o.ID]
			if !ok {
				idx[o.ID] = len(out)
				out = append(out, o.Model())
				continue
			}
			out[i] = merge(out[i], o.Model())
		}
	}
	return out
}

// merge is what two workers' offers of one model give together: the larger
// context and every capability either has.
func merge(a, b runtime.Model) runtime.Model {
	a.ContextLength = max(a.ContextLength, b.ContextLength)
	if a.Digest != b.Digest {
		a.Digest = "" // workers disagree: no single digest to show
	}
	a.StructuredOutput = a.StructuredOutput || b.StructuredOutput
	a.Tools = a.Tools || b.Tools
	a.Logprobs = a.Logprobs || b.Logprobs
	a.LogitBias = a.LogitBias || b.LogitBias
	a.Images = a.Images || b.Images
	if !a.Embeddings && b.Embeddings {
		a.Embeddings, a.EmbeddingDims = true, b.EmbeddingDims
	}
	return a
}

// ModelSummary is what the book says of one model across its workers.
type ModelSummary struct {
	ID            string
	Workers       int
	ContextLength int
	MinPrice      market.Price // the lowest of each price over the workers
	MaxPrice      market.Price // the highest of each price
	TEE           []tee.Kind   // the kinds offered, by name
	// Offers holds each capability some worker offers (merged as Models does).
	Offers runtime.Model
}

// Summaries lists every model in the book with its worker count, price range and
// TEE kinds, ordered by model ID.
func (c *Client) Summaries() []ModelSummary {
	by := map[string]*ModelSummary{}
	var ids []string
	for _, a := range c.book.All() {
		for _, m := range a.Models {
			s, ok := by[m.ID]
			if !ok {
				s = &ModelSummary{ID: m.ID, MinPrice: m.Price, MaxPrice: m.Price, Offers: m.Model()}
				by[m.ID] = s
				ids = append(ids, m.ID)
			}
			s.Workers++
			s.Offers = merge(s.Offers, m.Model())
			s.ContextLength = max(s.ContextLength, int(m.ContextLength))
			s.MinPrice = market.Price{Prompt: min(s.MinPrice.Prompt, m.Price.Prompt), Completion: min(s.MinPrice.Completion, m.Price.Completion)}
			s.MaxPrice = market.Price{Prompt: max(s.MaxPrice.Prompt, m.Price.Prompt), Completion: max(s.MaxPrice.Completion, m.Price.Completion)}
			if !slices.Contains(s.TEE, a.TEE.Kind) {
				s.TEE = append(s.TEE, a.TEE.Kind)
			}
		}
	}
	slices.Sort(ids)
	out := make([]ModelSummary, 0, len(ids))
	for _, id := range ids {
		s := by[id]
		slices.Sort(s.TEE)
		out = append(out, *s)
	}
	return out
}

// ListModels is the hook of openaiapi.Handler for GET /v1/models: the book's
// models with "workers", "price_nanoton_per_1m" (min and max prompt and
// completion prices), "tee" (the kinds offered; sim is not confidential),
// the capabilities some worker offers (openaiapi.CapabilityFields) and
// "joined" (whether this node follows the model's ads topic; the book also
// holds what the ads of a followed model say of the other models their
// workers sell); then the models only the catalogue names, with "joined":
// false and nothing else: unverified names, whose ads this node does not
// follow until a request asks for one.
func (c *Client) ListModels(context.Context) ([]openaiapi.Model, error) {
	out := []openaiapi.Model{}
	listed := map[string]bool{}
	for _, s := range c.Summaries() {
		listed[s.ID] = true
		out = append(out, openaiapi.Model{ID: s.ID, Object: "model", OwnedBy: "cocoon", ContextLength: s.ContextLength,
			Extra: openaiapi.CapabilityFields(s.Offers, map[string]any{
				"joined":  c.node.Joined(s.ID),
				"workers": s.Workers,
				"tee":     s.TEE, // JSON strings: ["sim"]
				"price_nanoton_per_1m": map[string]any{
					"prompt_min": s.MinPrice.Prompt, "prompt_max": s.MaxPrice.Prompt,
					"completion_min": s.MinPrice.Completion, "completion_max": s.MaxPrice.Completion,
				},
			})})
	}
	for _, id := range c.catalogued() {
		if !listed[id] {
			out = append(out, openaiapi.Model{ID: id, Object: "model", OwnedBy: "cocoon", Extra: map[string]any{"joined": false}})
		}
	}
	return out, nil
}
