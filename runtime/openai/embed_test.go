package openai_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/openai"
)

const embedModel = "BAAI/bge-small-en-v1.5"

// embedUpstream is vLLM serving an embedding model: answer builds the
// body of POST /v1/embeddings from the inputs.
func embedUpstream(t *testing.T, answer func(inputs []string) string) (*httptest.Server, *[]string) {
	var mu sync.Mutex
	var calls []string // each call's body
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/models":
			io.WriteString(w, `{"object":"list","data":[{"id":"`+embedModel+`","object":"model","owned_by":"vllm","max_model_len":512}]}`)
		case "/v1/embeddings":
			b, _ := io.ReadAll(r.Body)
			mu.Lock()
			calls = append(calls, string(b))
			mu.Unlock()
			var req struct {
				Input []string `json:"input"`
			}
			json.Unmarshal(b, &req)
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, answer(req.Input))
		default:
			http.Error(w, `{"detail":"Not Found"}`, http.StatusNotFound)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, &calls
}

// vllmEmbeddings answers each input with a vector of dims whose first
// element is its position, in reverse order of index (servers need not
// answer in order), with usage unless noUsage.
func vllmEmbeddings(dims int, noUsage bool) func([]string) string {
	return func(inputs []string) string {
		type datum struct {
			Index     int       `json:"index"`
			Object    string    `json:"object"`
			Embedding []float32 `json:"embedding"`
		}
		out := struct {
			ID     string         `json:"id"`
			Object string         `json:"object"`
			Model  string         `json:"model"`
			Data   []datum        `json:"data"`
			Usage  map[string]int `json:"usage,omitempty"`
		}{ID: "embd-5d2c4f1a", Object: "list", Model: embedModel}
		for i := len(inputs) - 1; i >= 0; i-- {
			v := make([]float32, dims)
			v[0] = float32(i)
			v[dims-1] = 0.25
			out.Data = append(out.Data, datum{Index: i, Object: "embedding", Embedding: v})
		}
		if !noUsage {
			out.Usage = map[string]int{"prompt_tokens": 3 * len(inputs), "total_tokens": 3 * len(inputs)}
		}
		b, _ := json.Marshal(out)
		return string(b)
	}
}

// TestEmbeddings: vectors come back in the inputs' order whatever order the
// upstream answers in, with the upstream's prompt tokens; the dims are
// asked at start when not configured and held to on every call.
func TestEmbeddings(t *testing.T) {
	srv, calls := embedUpstream(t, vllmEmbeddings(8, false))
	b, err := openai.New(context.Background(), openai.Config{BaseURL: srv.URL,
		Capabilities: map[string]runtime.Model{embedModel: {Embeddings: true}}})
	if err != nil {
		t.Fatal(err)
	}
	if m := b.Models(); len(m) != 1 || m[0] != (runtime.Model{ID: embedModel, ContextLength: 512, Embeddings: true, EmbeddingDims: 8}) {
		t.Fatalf("Models() = %+v; want embeddings of 8 dims (asked at start)", m)
	}
	var _ runtime.Embedder = b
	inputs := []string{"alpha", "beta", "gamma"}
	e, err := b.Embed(context.Background(), runtime.EmbedRequest{Model: embedModel, Inputs: inputs})
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Vectors) != 3 || e.PromptTokens != 9 || e.CostNanoTON != nil {
		t.Fatalf("Embed = %+v; want 3 vectors, 9 tokens", e)
	}
	for i, v := range e.Vectors {
		if len(v) != 8 || v[0] != float32(i) || v[7] != 0.25 {
			t.Errorf("vector %d = %v; want the one for input %d", i, v, i)
		}
	}
	if len(*calls) != 2 {
		t.Fatalf("upstream got %d embeddings calls; want 2 (the probe and ours)", len(*calls))
	}
	var sent map[string]any
	json.Unmarshal([]byte((*calls)[1]), &sent)
	if sent["model"] != embedModel || sent["encoding_format"] != "float" || len(sent["input"].([]any)) != 3 || sent["input"].([]any)[2] != "gamma" {
		t.Errorf("upstream got %s; want model, the inputs in order and encoding_format float", (*calls)[1])
	}
	if _, err := b.Embed(context.Background(), runtime.EmbedRequest{Model: "other", Inputs: inputs}); !errors.Is(err, runtime.ErrUnknownModel) {
		t.Errorf("unknown model: %v", err)
	}
}

func TestEmbeddingsRefused(t *testing.T) {
	quiet := slog.New(slog.DiscardHandler)
	good := vllmEmbeddings(8, false)
	for _, tc := range []struct {
		name    string
		answer  func([]string) string
		dims    int
		want    error
		errText string
	}{
		{name: "dims mismatch", answer: vllmEmbeddings(7, false), dims: 8, want: runtime.ErrUpstream, errText: "has 7 dims"},
		{name: "no usage", answer: vllmEmbeddings(8, true), dims: 8, want: runtime.ErrUnbillable},
		{name: "usage without prompt_tokens", answer: func(in []string) string {
			return strings.Replace(good(in), `"prompt_tokens"`, `"tokens"`, 1)
		}, dims: 8, want: runtime.ErrUnbillable},
		{name: "too few", answer: func(in []string) string { return good(in[:1]) }, dims: 8, want: runtime.ErrUpstream, errText: "1 embeddings for 2 inputs"},
		{name: "index twice", answer: func(in []string) string {
			return strings.Replace(good(in), `"index":1`, `"index":0`, 1)
		}, dims: 8, want: runtime.ErrUpstream, errText: "index 0 given twice"},
		{name: "index out of range", answer: func(in []string) string {
			return strings.Replace(good(in), `"index":1`, `"index":7`, 1)
		}, dims: 8, want: runtime.ErrUpstream, errText: "no index"},
		{name: "base64", answer: func([]string) string {
			return `{"data":[{"index":0,"embedding":"AAAAAA=="},{"index":1,"embedding":"AAAAAA=="}],"usage":{"prompt_tokens":2}}`
		}, dims: 8, want: runtime.ErrUpstream, errText: "not an embeddings answer"},
		{name: "not JSON", answer: func([]string) string { return `<html>` }, dims: 8, want: runtime.ErrUpstream},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, _ := embedUpstream(t, tc.answer)
			b, err := openai.New(context.Background(), openai.Config{BaseURL: srv.URL, Logger: quiet,
				Capabilities: map[string]runtime.Model{embedModel: {Embeddings: true, EmbeddingDims: tc.dims}}})
			if err != nil {
				t.Fatal(err)
			}
			e, err := b.Embed(context.Background(), runtime.EmbedRequest{Model: embedModel, Inputs: []string{"a", "b"}})
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.errText) {
				t.Errorf("Embed = %+v, %v; want %v with %q", e, err, tc.want, tc.errText)
			}
		})
	}

	// Undeclared: a FieldError, and nothing sent.
	srv, calls := embedUpstream(t, good)
	b, err := openai.New(context.Background(), openai.Config{BaseURL: srv.URL, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.Embed(context.Background(), runtime.EmbedRequest{Model: embedModel, Inputs: []string{"a"}})
	var fe *runtime.FieldError
	if !errors.As(err, &fe) || fe.Field != "model" {
		t.Errorf("embeddings of a model without them: %v; want a FieldError naming model", err)
	}
	_, err = openai.New(context.Background(), openai.Config{BaseURL: srv.URL, Logger: quiet,
		Capabilities: map[string]runtime.Model{embedModel: {Embeddings: true, EmbeddingDims: 8}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(*calls) != 0 {
		t.Errorf("upstream got %d embeddings calls; want none (undeclared, or dims configured)", len(*calls))
	}

	// The start-up probe fails New as the call would.
	srv, _ = embedUpstream(t, vllmEmbeddings(8, true))
	_, err = openai.New(context.Background(), openai.Config{BaseURL: srv.URL, Logger: quiet,
		Capabilities: map[string]runtime.Model{embedModel: {Embeddings: true}}})
	if !errors.Is(err, runtime.ErrUnbillable) || !strings.Contains(err.Error(), "embedding dims") {
		t.Errorf("New with a probe answered without usage: %v; want ErrUnbillable naming the dims", err)
	}
	for _, c := range []runtime.Model{{EmbeddingDims: 8}, {Embeddings: true, EmbeddingDims: -1}, {Embeddings: true, EmbeddingDims: runtime.MaxEmbeddingDims + 1}} {
		if _, err := openai.New(context.Background(), openai.Config{BaseURL: srv.URL, Logger: quiet,
			Capabilities: map[string]runtime.Model{embedModel: c}}); err == nil || !strings.Contains(err.Error(), "embedding dims") {
			t.Errorf("New with %+v: %v; want refused", c, err)
		}
	}
}

// TestOllamaCapabilities: Ollama lists what each model offers; a declared
// capability it does not list stops New naming the key, and one it lists
// but the configuration does not declare stays off.
func TestOllamaCapabilities(t *testing.T) {
	show := func(caps ...string) func(string) (int, string) {
		return func(string) (int, string) {
			var v map[string]any
			json.Unmarshal([]byte(ollamaShow("llama", 131072, "num_ctx 8192")), &v)
			v["capabilities"] = caps
			if caps == nil {
				delete(v, "capabilities") // Ollama before 0.6.4
			}
			b, _ := json.Marshal(v)
			return http.StatusOK, string(b)
		}
	}
	quiet := slog.New(slog.DiscardHandler)
	const id = "llama3.2:latest"
	models := `{"object":"list","data":[{"id":"llama3.2:latest","object":"model","created":1732531000,"owned_by":"library"}]}`
	for _, tc := range []struct {
		name     string
		caps     []string
		declared runtime.Model
		wantKey  string // "": New succeeds
	}{
		{"tools listed", []string{"completion", "tools"}, runtime.Model{Tools: true}, ""},
		{"tools not listed", []string{"completion"}, runtime.Model{Tools: true}, "tools"},
		{"vision not listed", []string{"completion", "tools"}, runtime.Model{Tools: true, Images: true}, "images"},
		{"vision listed", []string{"completion", "vision"}, runtime.Model{Images: true, Logprobs: true}, ""},
		{"embedding not listed", []string{"completion"}, runtime.Model{Embeddings: true, EmbeddingDims: 3072}, "embeddings"},
		{"old Ollama says nothing", nil, runtime.Model{Tools: true, Images: true}, ""},
		{"listed, not declared", []string{"completion", "tools", "vision"}, runtime.Model{}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := newUpstream(t, models, show(tc.caps...))
			b, err := openai.New(context.Background(), openai.Config{BaseURL: u.URL + "/v1", Logger: quiet,
				Capabilities: map[string]runtime.Model{id: tc.declared}})
			var ce *openai.CapabilityError
			switch {
			case tc.wantKey == "" && err != nil:
				t.Fatalf("New: %v", err)
			case tc.wantKey != "" && (!errors.As(err, &ce) || ce.Key != tc.wantKey || ce.Model != id):
				t.Fatalf("New = %v; want a CapabilityError for %s", err, tc.wantKey)
			case tc.wantKey != "":
				return
			}
			want := tc.declared
			want.ID, want.ContextLength = id, 8192
			if m := b.Models(); len(m) != 1 || m[0] != want {
				t.Errorf("Models() = %+v; want %+v (what is declared)", m, want)
			}
		})
	}
}
