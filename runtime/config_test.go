package runtime_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"

	"github.com/cocoon-network/cocoon/runtime"
)

func TestConfigFromTOML(t *testing.T) {
	const file = `
[runtime]
backend = "llamacpp"
threads = 2
slots = 3
queue = 10

[[runtime.models]]
path = "/models/a.gguf"

[[runtime.models]]
path = "/models/b.GGUF"
id = "bee"
context_length = 8192
structured_output = true

[[runtime.models]]
id = "e5"
tools = true
logprobs = true
logit_bias = true
images = true
embeddings = true
embedding_dims = 1024
`
	var c struct{ Runtime runtime.Config }
	md, err := toml.Decode(file, &c)
	if err != nil {
		t.Fatal(err)
	}
	if u := md.Undecoded(); len(u) > 0 {
		t.Fatalf("undecoded keys %v", u)
	}
	want := runtime.Config{Backend: "llamacpp", Threads: 2, Slots: 3, Queue: 10,
		Models: []runtime.ModelConfig{{Path: "/models/a.gguf"}, {Path: "/models/b.GGUF", ID: "bee", ContextLength: 8192, StructuredOutput: true}}}
	if c.Runtime.Backend != want.Backend || c.Runtime.Threads != 2 || c.Runtime.Slots != 3 || c.Runtime.Queue != 10 ||
		len(c.Runtime.Models) != 3 || c.Runtime.Models[1] != want.Models[1] {
		t.Fatalf("decoded %+v; want %+v", c.Runtime, want)
	}
	all := runtime.ModelConfig{ID: "e5", Tools: true, Logprobs: true, LogitBias: true, Images: true, Embeddings: true, EmbeddingDims: 1024}
	if c.Runtime.Models[2] != all {
		t.Fatalf("decoded %+v; want %+v", c.Runtime.Models[2], all)
	}
	declared := runtime.Model{Tools: true, Logprobs: true, LogitBias: true, Images: true, Embeddings: true, EmbeddingDims: 1024}
	if got := all.Declared(); got != declared {
		t.Errorf("Declared() = %+v; want %+v", got, declared)
	}
}

func TestConfigValidateNamesTheField(t *testing.T) {
	dir := t.TempDir()
	model := filepath.Join(dir, "tiny.gguf")
	if err := os.WriteFile(model, []byte("GGUF"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("COCOON_TEST_KEY", "sk-1")
	for _, tc := range []struct {
		cfg  runtime.Config
		want string // "" : valid
	}{
		{runtime.Config{}, ""},
		{runtime.Config{Models: []runtime.ModelConfig{{Path: model}}}, ""},
		{runtime.Config{Backend: "openai", UpstreamURL: "http://127.0.0.1:8000/v1", APIKeyEnv: "COCOON_TEST_KEY", Models: []runtime.ModelConfig{{ID: "llama"}}}, ""},
		{runtime.Config{Models: []runtime.ModelConfig{{Path: filepath.Join(dir, "absent.gguf")}}}, "runtime.models[0].path: no such file"},
		{runtime.Config{Models: []runtime.ModelConfig{{Path: model}, {}}}, "runtime.models[1].path: missing"},
		{runtime.Config{Models: []runtime.ModelConfig{{Path: dir}}}, "runtime.models[0].path: " + dir + " is a directory"},
		{runtime.Config{Models: []runtime.ModelConfig{{Path: model}, {Path: model}}}, `runtime.models[1].id: "tiny" already used by models[0]`},
		{runtime.Config{Backend: "vllm"}, `runtime.backend: unknown kind "vllm"`},
		{runtime.Config{Threads: -1}, "runtime.threads"},
		{runtime.Config{Slots: -2}, "runtime.slots"},
		{runtime.Config{Queue: -5}, "runtime.queue"},
		{runtime.Config{UpstreamURL: "http://x"}, "runtime.upstream_url: set, but backend is"},
		{runtime.Config{Backend: "openai"}, "runtime.upstream_url: missing"},
		{runtime.Config{Backend: "openai", UpstreamURL: "ftp://x"}, "runtime.upstream_url:"},
		{runtime.Config{Backend: "openai", UpstreamURL: "http://x", APIKeyEnv: "COCOON_UNSET_VARIABLE"}, "runtime.api_key_env: environment variable COCOON_UNSET_VARIABLE"},
		{runtime.Config{Backend: "openai", UpstreamURL: "http://x", Models: []runtime.ModelConfig{{Path: model, ID: "a"}}}, "runtime.models[0].path: set, but"},
		{runtime.Config{Backend: "openai", UpstreamURL: "http://x", Models: []runtime.ModelConfig{{ID: "a", ContextLength: 8192}}}, ""},
		{runtime.Config{Backend: "openai", UpstreamURL: "http://x", Models: []runtime.ModelConfig{{ID: "a"}, {ID: "b", ContextLength: -1}}}, "runtime.models[1].context_length: must be 1 to 1073741824 tokens"},
		{runtime.Config{Backend: "openai", UpstreamURL: "http://x", Models: []runtime.ModelConfig{{ID: "a", ContextLength: runtime.MaxContextLength + 1}}}, "runtime.models[0].context_length: must be 1 to"},
		{runtime.Config{Models: []runtime.ModelConfig{{Path: model, ContextLength: 8192}}}, "runtime.models[0].context_length: set, but the llamacpp backend"},
		{runtime.Config{Models: []runtime.ModelConfig{{Path: model, StructuredOutput: true}}}, "runtime.models[0].structured_output: set, but the llamacpp backend"},
		{runtime.Config{Backend: "openai", UpstreamURL: "http://x", Models: []runtime.ModelConfig{{ID: "a", StructuredOutput: true, Tools: true, Logprobs: true,
			LogitBias: true, Images: true}, {ID: "e", Embeddings: true}, {ID: "f", Embeddings: true, EmbeddingDims: 768}}}, ""},
		{runtime.Config{Backend: "openai", UpstreamURL: "http://x", Models: []runtime.ModelConfig{{ID: "a", EmbeddingDims: 768}}}, "runtime.models[0].embedding_dims: set, but embeddings is not"},
		{runtime.Config{Backend: "openai", UpstreamURL: "http://x", Models: []runtime.ModelConfig{{ID: "a", Embeddings: true, EmbeddingDims: -1}}}, "runtime.models[0].embedding_dims: must be 1 to 65536"},
		{runtime.Config{Backend: "openai", UpstreamURL: "http://x", Models: []runtime.ModelConfig{{ID: "a", Embeddings: true, EmbeddingDims: runtime.MaxEmbeddingDims + 1}}}, "runtime.models[0].embedding_dims: must be 1 to"},
		{runtime.Config{Models: []runtime.ModelConfig{{Path: model, Embeddings: true}}}, "runtime.models[0].embeddings: set, but only the openai backend"},
		{runtime.Config{Models: []runtime.ModelConfig{{Path: model, EmbeddingDims: 8}}}, "runtime.models[0].embedding_dims: set, but only the openai backend"},
		{runtime.Config{Models: []runtime.ModelConfig{{Path: model, Tools: true}}}, "runtime.models[0].tools: set, but only the openai backend"},
		{runtime.Config{Models: []runtime.ModelConfig{{Path: model, Logprobs: true}}}, "runtime.models[0].logprobs: set"},
		{runtime.Config{Models: []runtime.ModelConfig{{Path: model, LogitBias: true}}}, "runtime.models[0].logit_bias: set"},
		{runtime.Config{Models: []runtime.ModelConfig{{Path: model, Images: true}}}, "runtime.models[0].images: set"},
		{runtime.Config{GPULayers: layers(-1), Llama: "cuda"}, ""},
		{runtime.Config{GPULayers: layers(0), Llama: "auto"}, ""},
		{runtime.Config{GPULayers: layers(-2)}, "runtime.gpu_layers: must be -1 (all), 0 (none)"},
		{runtime.Config{Llama: "rocm"}, `runtime.llama: unknown llama.cpp build "rocm"`},
	} {
		err := tc.cfg.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("Validate(%+v) = %v; want valid", tc.cfg, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("Validate(%+v) = %v; want %q", tc.cfg, err, tc.want)
		}
	}
}

func layers(n int) *int { return &n }

func TestGPULayersDefaultToAll(t *testing.T) {
	for _, tc := range []struct {
		file string
		want int
	}{{"", -1}, {"gpu_layers = 0", 0}, {"gpu_layers = 12", 12}, {"gpu_layers = -1", -1}} {
		var c struct{ Runtime runtime.Config }
		if _, err := toml.Decode("[runtime]\n"+tc.file, &c); err != nil {
			t.Fatal(err)
		}
		if got := c.Runtime.Offload(); got != tc.want {
			t.Errorf("%q: Offload() = %d; want %d", tc.file, got, tc.want)
		}
	}
}

func TestModelIDFromPath(t *testing.T) {
	for in, want := range map[string]string{
		"/a/b/stories260K.gguf": "stories260K",
		"x.GGUF":                "x",
		"plain":                 "plain",
		"dir/.gguf":             ".gguf",
		`C:\m\llama.gguf`:       "llama",
	} {
		if got := runtime.ModelIDFromPath(in); got != want {
			t.Errorf("ModelIDFromPath(%q) = %q; want %q", in, got, want)
		}
	}
}

func TestDetectGPUsSaysWhy(t *testing.T) {
	gpus, why := runtime.DetectGPUs()
	if len(gpus) == 0 && why == "" {
		t.Fatal("no GPUs and no reason")
	}
	if len(gpus) > 0 && why != "" {
		t.Fatalf("GPUs %v and a reason %q", gpus, why)
	}
	for _, g := range gpus {
		if g.Name == "" || g.VRAMBytes == 0 || g.Driver == "" {
			t.Errorf("incomplete GPU %+v", g)
		}
	}
	t.Logf("GPUs %+v, reason %q", gpus, why)
}
