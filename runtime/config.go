package runtime

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
)

// Backend kinds of Config.Backend.
const (
	KindLlamaCPP = "llamacpp" // the embedded default: GGUF files on the CPU
	KindOpenAI   = "openai"   // any OpenAI-compatible server by URL
)

// Config is the node's [runtime] section. The zero value is the embedded
// llama.cpp backend with no models (a client-only node serves none).
// Package runtime/backends builds a Backend from it.
type Config struct {
	// Backend is "llamacpp" (default when empty) or "openai".
	Backend string `toml:"backend"`
	// Models to serve. llamacpp: path of each GGUF file, id defaults to the file
	// name without ".gguf". openai: ids (path empty), restricting and naming
	// what the upstream serves, each with an optional context_length and the
	// capabilities it declares; empty means every model of GET /v1/models,
	// offering text only.
	Models []ModelConfig `toml:"models"`
	// LibDir holds llama.cpp's shared libraries; empty: $COCOON_LLAMA_LIB,
	// else the builds `cocoon runtime install` put in the datadir or the
	// shared cache (runtime/llamalib.Choose).
	LibDir string `toml:"lib_dir"`
	// Llama forces a build of llama.cpp among the installed ones: "cpu",
	// "cuda" or "vulkan"; empty or "auto": CUDA when an NVIDIA driver is
	// present, else Vulkan when a Vulkan loader is, else the CPU. A GPU build
	// that fails to load falls back to the CPU build.
	Llama string `toml:"llama"`
	// GPULayers is how many of a model's layers a GPU build of llama.cpp
	// offloads: -1 (or absent) all, 0 none. The CPU build ignores it.
	GPULayers *int `toml:"gpu_layers"`
	// DataDir is the node's datadir, where installed builds are looked for;
	// set by the node, not read from the file.
	DataDir string `toml:"-"`
	// Threads per generation for llamacpp; 0: min(NumCPU, 4).
	Threads int `toml:"threads"`
	// ContextSize in tokens for llamacpp; 0: the model's training context, at most 4096.
	ContextSize int `toml:"context_size"`
	// UpstreamURL is the openai backend's base URL, e.g. "http://127.0.0.1:8000/v1".
	UpstreamURL string `toml:"upstream_url"`
	// APIKeyEnv names the environment variable holding the upstream's API key
	// (the key itself never sits in the config file); empty: no key.
	APIKeyEnv string `toml:"api_key_env"`
	// Slots is the number of concurrent generations; 0: 1.
	Slots int `toml:"slots"`
	// Queue is the number of requests that may wait for a slot; 0: DefaultQueue, -1: none.
	Queue int `toml:"queue"`
}

// ModelConfig names one served model.
type ModelConfig struct {
	Path string `toml:"path"`
	ID   string `toml:"id"`
	// ContextLength is the openai backend's context, in tokens, for an
	// upstream that does not say it (Ollama's OpenAI API does not), or that
	// runs the model with less than it says (llama-server's -c split by -np,
	// Ollama's num_ctx); 0: what the upstream says. When both are known the
	// smaller is served. The llamacpp backend takes runtime.context_size.
	ContextLength int `toml:"context_length"`
	// StructuredOutput says that the openai backend's upstream follows
	// response_format for this model (vLLM, llama-server, SGLang and Ollama
	// do): requests with one are forwarded, and the ads say so. False: such
	// requests are refused. The llamacpp backend always offers it.
	StructuredOutput bool `toml:"structured_output"`
	// What else the openai backend's upstream offers for this model, as
	// runtime.Model's flags of the same names: a request using a capability
	// not declared here is refused before anything is sent upstream, and the
	// ads say only what is declared. Where the upstream lists a model's
	// capabilities (Ollama's /api/show), a declared one it lacks stops the
	// start. The llamacpp backend says itself what it offers.
	Tools     bool `toml:"tools"`      // tools, tool_choice, tool calls and results
	Logprobs  bool `toml:"logprobs"`   // logprobs and top_logprobs
	LogitBias bool `toml:"logit_bias"` // logit_bias, in the upstream's token ids
	Images    bool `toml:"images"`     // image_url parts (data: URLs) in user messages
	// Embeddings: the model answers /v1/embeddings. EmbeddingDims is its
	// vectors' length; 0: asked of the upstream at start (one embeddings
	// call).
	Embeddings    bool `toml:"embeddings"`
	EmbeddingDims int  `toml:"embedding_dims"`
}

// MaxEmbeddingDims bounds a model's embedding dimensions (the largest
// embedding models have a few thousand).
const MaxEmbeddingDims = 1 << 16

// Declared is what m declares its model offers beyond text: runtime.Model's
// capability fields (ID, Digest and ContextLength are left zero).
func (m ModelConfig) Declared() Model {
	return Model{StructuredOutput: m.StructuredOutput, Tools: m.Tools, Logprobs: m.Logprobs, LogitBias: m.LogitBias,
		Images: m.Images, Embeddings: m.Embeddings, EmbeddingDims: m.EmbeddingDims}
}

// Validate checks cfg and returns an error naming the first bad field, as
// "runtime.models[0].path: no such file". Files are checked to exist here;
// their content is checked when the backend loads them.
func (cfg Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("runtime.%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if cfg.Threads < 0 {
		bad("threads", "must be 0 (automatic) or positive, not %d", cfg.Threads)
	}
	if cfg.ContextSize < 0 {
		bad("context_size", "must be 0 (from the model) or positive, not %d", cfg.ContextSize)
	}
	if cfg.GPULayers != nil && *cfg.GPULayers < -1 {
		bad("gpu_layers", "must be -1 (all), 0 (none) or a number of layers, not %d", *cfg.GPULayers)
	}
	switch cfg.Llama {
	case "", "auto", "cpu", "cuda", "vulkan":
	default:
		bad("llama", "unknown llama.cpp build %q (want auto, cpu, cuda or vulkan)", cfg.Llama)
	}
	if cfg.Slots < 0 {
		bad("slots", "must be 0 (one) or positive, not %d", cfg.Slots)
	}
	if cfg.Queue < -1 {
		bad("queue", "must be -1 (none), 0 (default) or positive, not %d", cfg.Queue)
	}
	ids := map[string]int{}
	switch cfg.Backend {
	case "", KindLlamaCPP:
		if cfg.UpstreamURL != "" {
			bad("upstream_url", "set, but backend is %q (set backend = %q to use an upstream)", KindLlamaCPP, KindOpenAI)
		}
		for i, m := range cfg.Models {
			field := fmt.Sprintf("models[%d]", i)
			if m.Path == "" {
				bad(field+".path", "missing (the GGUF file to serve)")
				continue
			}
			st, err := os.Stat(m.Path)
			switch {
			case errors.Is(err, os.ErrNotExist):
				bad(field+".path", "no such file: %s", m.Path)
			case err != nil:
				bad(field+".path", "%v", err)
			case st.IsDir():
				bad(field+".path", "%s is a directory, not a GGUF file", m.Path)
			}
			id := m.ID
			if id == "" {
				id = ModelIDFromPath(m.Path)
			}
			if j, dup := ids[id]; dup {
				bad(field+".id", "%q already used by models[%d]", id, j)
			}
			ids[id] = i
			if m.ContextLength != 0 {
				bad(field+".context_length", "set, but the llamacpp backend reads it from the GGUF file (use runtime.context_size)")
			}
			if m.StructuredOutput {
				bad(field+".structured_output", "set, but the llamacpp backend always offers structured output")
			}
			for _, c := range []struct {
				key string
				set bool
			}{{"tools", m.Tools}, {"logprobs", m.Logprobs}, {"logit_bias", m.LogitBias}, {"images", m.Images},
				{"embeddings", m.Embeddings}, {"embedding_dims", m.EmbeddingDims != 0}} {
				if c.set {
					bad(field+"."+c.key, "set, but only the openai backend takes capability keys (the llamacpp backend says itself what it offers)")
				}
			}
		}
	case KindOpenAI:
		if cfg.UpstreamURL == "" {
			bad("upstream_url", "missing (the OpenAI-compatible server's base URL, e.g. http://127.0.0.1:8000/v1)")
		} else if u, err := url.Parse(cfg.UpstreamURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("upstream_url", "%q is not an http(s) URL", cfg.UpstreamURL)
		}
		if cfg.APIKeyEnv != "" && os.Getenv(cfg.APIKeyEnv) == "" {
			bad("api_key_env", "environment variable %s is empty or unset", cfg.APIKeyEnv)
		}
		for i, m := range cfg.Models {
			field := fmt.Sprintf("models[%d]", i)
			if m.Path != "" {
				bad(field+".path", "set, but the openai backend serves what its upstream has; give id only")
			}
			if m.ID == "" {
				bad(field+".id", "missing")
			}
			if j, dup := ids[m.ID]; dup {
				bad(field+".id", "%q already used by models[%d]", m.ID, j)
			}
			ids[m.ID] = i
			if m.ContextLength < 0 || m.ContextLength > MaxContextLength {
				bad(field+".context_length", "must be 1 to %d tokens (or absent: from the upstream), not %d", MaxContextLength, m.ContextLength)
			}
			switch {
			case m.EmbeddingDims < 0 || m.EmbeddingDims > MaxEmbeddingDims:
				bad(field+".embedding_dims", "must be 1 to %d (or absent: asked of the upstream), not %d", MaxEmbeddingDims, m.EmbeddingDims)
			case m.EmbeddingDims > 0 && !m.Embeddings:
				bad(field+".embedding_dims", "set, but embeddings is not (set embeddings = true for an embedding model)")
			}
		}
	default:
		bad("backend", "unknown kind %q (want %q or %q)", cfg.Backend, KindLlamaCPP, KindOpenAI)
	}
	return errors.Join(errs...)
}

// Offload is GPULayers with its default: -1 (all) when absent.
func (cfg Config) Offload() int {
	if cfg.GPULayers == nil {
		return -1
	}
	return *cfg.GPULayers
}

// ModelIDFromPath is the default model id of a GGUF file: its base name
// without the ".gguf" extension.
func ModelIDFromPath(path string) string {
	base := path
	if i := strings.LastIndexAny(base, `/\`); i >= 0 {
		base = base[i+1:]
	}
	if len(base) > 5 && strings.EqualFold(base[len(base)-5:], ".gguf") {
		base = base[:len(base)-5]
	}
	return base
}
