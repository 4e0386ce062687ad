package openai

import (
	"fmt"
	"slices"

	"github.com/cocoon-network/cocoon/runtime"
)

// declared is model id as configured: its capabilities (Config.Capabilities)
// and ctxLen.
func (b *Backend) declared(id string, ctxLen int) runtime.Model {
	c := b.cfg.Capabilities[id]
	return runtime.Model{ID: id, ContextLength: ctxLen,
		StructuredOutput: c.StructuredOutput,
		Tools:            c.Tools, Logprobs: c.Logprobs, LogitBias: c.LogitBias, Images: c.Images,
		Embeddings: c.Embeddings, EmbeddingDims: c.EmbeddingDims}
}

// ollamaCapabilities pairs the capabilities Ollama lists for a model with
// the config keys (runtime.ModelConfig's) that declare them. Ollama says
// nothing of structured output, logprobs or logit_bias.
var ollamaCapabilities = []struct{ key, ollama string }{
	{"tools", "tools"},
	{"images", "vision"},
	{"embeddings", "embedding"},
}

// CapabilityError says that the upstream lists a model's capabilities
// (Ollama's /api/show) and lacks one the configuration declares. New stops
// rather than serve the model: its ads would promise what every such
// request would fail at.
type CapabilityError struct {
	Model    string
	Key      string // the config key: "tools", "images" or "embeddings"
	Upstream string // the base URL
	Listed   []string
}

func (e *CapabilityError) Error() string {
	return fmt.Sprintf("%s lists capabilities %q for model %q: not %s, which the configuration declares", e.Upstream, e.Listed, e.Model, e.Key)
}

// checkCapabilities holds m's declared capabilities to what Ollama lists.
// What Ollama lists but the configuration does not declare stays off (the
// operator decides what the node sells) and is logged.
func (b *Backend) checkCapabilities(m runtime.Model, om ollamaModel) error {
	if om.capabilities == nil {
		return nil // an Ollama before 0.6.4 does not say
	}
	for _, c := range ollamaCapabilities {
		declared := map[string]bool{"tools": m.Tools, "images": m.Images, "embeddings": m.Embeddings}[c.key]
		listed := slices.Contains(om.capabilities, c.ollama)
		switch {
		case declared && !listed:
			return &CapabilityError{Model: m.ID, Key: c.key, Upstream: b.base, Listed: om.capabilities}
		case listed && !declared:
			b.log.Info("the upstream offers a capability the configuration does not declare; not serving it", "model", m.ID, "key", c.key)
		}
	}
	return nil
}
