package openaiapi

import "github.com/cocoon-network/cocoon/runtime"

// CapabilityFields sets the keys GET /v1/models adds to a model's Extra for what a model offers
// beyond text: "structured_output", "tools", "logprobs", "logit_bias",
// "images", "embeddings" (booleans) and "embedding_dims" with embeddings.
func CapabilityFields(m runtime.Model, into map[string]any) map[string]any {
	if into == nil {
		into = map[string]any{}
	}
	into["structured_output"] = m.StructuredOutput
	into["tools"] = m.Tools
	into["logprobs"] = m.Logprobs
	into["logit_bias"] = m.LogitBias
	into["images"] = m.Images
	into["embeddings"] = m.Embeddings
	delete(into, "embedding_dims")
	if m.Embeddings {
		into["embedding_dims"] = m.EmbeddingDims
	}
	return into
}
