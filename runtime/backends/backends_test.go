package backends_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cocoon-network/cocoon/internal/testmodel"
	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/backends"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

var quiet = slog.New(slog.DiscardHandler)

func complete(t *testing.T, b runtime.Backend, model string) string {
	t.Helper()
	s, err := b.Generate(context.Background(), runtime.Request{Model: model, Prompt: "once upon a time", MaxTokens: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var text string
	for {
		d, err := s.Recv()
		if err == io.EOF {
			return text
		}
		if err != nil {
			t.Fatal(err)
		}
		text += d.Text
	}
}

func TestFromConfig(t *testing.T) {
	ctx := context.Background()
	lb, err := backends.FromConfig(ctx, runtime.Config{LibDir: testmodel.LibDir(), Threads: 1, Slots: 2,
		Models: []runtime.ModelConfig{{Path: testmodel.ModelPath(t), ID: "tiny"}}}, quiet)
	if err != nil {
		t.Fatalf("llamacpp from config: %v", err)
	}
	defer lb.Close()
	if total, free, q := lb.Slots(); total != 2 || free != 2 || q != 0 {
		t.Fatalf("Slots() = %d %d %d; want 2 2 0", total, free, q)
	}
	want := complete(t, lb, "tiny")

	srv := httptest.NewServer(openaiapi.NewHandler(lb))
	defer srv.Close()
	t.Setenv("COCOON_TEST_UPSTREAM_KEY", "sk-local")
	ob, err := backends.FromConfig(ctx, runtime.Config{Backend: "openai", UpstreamURL: srv.URL + "/v1",
		APIKeyEnv: "COCOON_TEST_UPSTREAM_KEY", Models: []runtime.ModelConfig{{ID: "tiny"}}}, quiet)
	if err != nil {
		t.Fatalf("openai from config: %v", err)
	}
	defer ob.Close()
	if got := complete(t, ob, "tiny"); got != want {
		t.Fatalf("through the openai backend %q; want %q", got, want)
	}

	for _, tc := range []struct {
		cfg  runtime.Config
		want string
	}{
		{runtime.Config{Models: []runtime.ModelConfig{{Path: "/nonexistent/x.gguf"}}}, "runtime.models[0].path: no such file"},
		{runtime.Config{Backend: "openai", UpstreamURL: "http://127.0.0.1:1/v1"}, "runtime.upstream_url: runtime: upstream failed"},
		{runtime.Config{LibDir: t.TempDir(), Models: []runtime.ModelConfig{{Path: testmodel.ModelPath(t)}}}, "make deps"},
	} {
		if _, err := backends.FromConfig(ctx, tc.cfg, quiet); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("FromConfig(%+v) = %v; want %q", tc.cfg, err, tc.want)
		}
	}
}

// With no lib_dir, no $COCOON_LLAMA_LIB and nothing installed, the node
// does not start, and the error names the field and the command to run.
func TestFromConfigNothingInstalled(t *testing.T) {
	t.Setenv("COCOON_LLAMA_LIB", "")
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	datadir := t.TempDir()
	_, err := backends.FromConfig(context.Background(), runtime.Config{DataDir: datadir,
		Models: []runtime.ModelConfig{{Path: testmodel.ModelPath(t)}}}, quiet)
	if err == nil || !strings.HasPrefix(err.Error(), "runtime.lib_dir: ") || !strings.Contains(err.Error(), "run `cocoon runtime install`") ||
		!strings.Contains(err.Error(), filepath.Join(datadir, "runtime", "llama")) {
		t.Fatalf("FromConfig with nothing installed = %v; want runtime.lib_dir, the datadir's folder and `cocoon runtime install`", err)
	}
}

// An upstream that reports no context length (Ollama's /v1/models) serves
// with the configured one; without it the node does not start, and the
// error names the field to set.
func TestFromConfigContextLength(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/models" {
			io.WriteString(w, `{"object":"list","data":[{"id":"llama3.2:latest","object":"model","created":1732531000,"owned_by":"library"}]}`)
			return
		}
		http.NotFound(w, r)
	}))
	defer srv.Close()
	cfg := runtime.Config{Backend: "openai", UpstreamURL: srv.URL + "/v1",
		Models: []runtime.ModelConfig{{ID: "llama3.2:latest", ContextLength: 8192}}}
	b, err := backends.FromConfig(context.Background(), cfg, quiet)
	if err != nil {
		t.Fatalf("FromConfig with context_length: %v", err)
	}
	if ms := b.Models(); len(ms) != 1 || ms[0].ContextLength != 8192 {
		t.Errorf("Models() = %+v; want llama3.2:latest with 8192 tokens", ms)
	}
	b.Close()

	for _, tc := range []struct {
		models []runtime.ModelConfig
		want   string
	}{
		{[]runtime.ModelConfig{{ID: "llama3.2:latest"}}, `runtime.models[0].context_length: missing, and ` + srv.URL + `/v1 reports no context length for model "llama3.2:latest"`},
		{nil, `runtime.models: ` + srv.URL + `/v1 reports no context length for model "llama3.2:latest"; add a [[runtime.models]] table with id = "llama3.2:latest" and context_length`},
	} {
		cfg.Models = tc.models
		_, err := backends.FromConfig(context.Background(), cfg, quiet)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("FromConfig(models %+v) = %v; want one line starting %q", tc.models, err, tc.want)
		}
	}
}
