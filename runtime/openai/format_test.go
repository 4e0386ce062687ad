package openai_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"

	"github.com/cocoon-network/cocoon/internal/testmodel"
	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/openai"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

// recorder is an upstream (the project's own llama.cpp server) that keeps
// the body of every generation request it receives.
type recorder struct {
	next http.Handler
	mu   sync.Mutex
	got  [][]byte
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method == http.MethodPost {
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.got = append(r.got, b)
		r.mu.Unlock()
		req.Body = io.NopCloser(bytes.NewReader(b))
	}
	r.next.ServeHTTP(w, req)
}

func (r *recorder) bodies() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

// TestResponseFormatForwarded: a model configured with StructuredOutput
// offers it, and a json_schema request reaches the upstream with its
// response_format as given (name, schema byte for byte, strict), and the
// upstream's answer (the embedded engine under the schema's grammar) is JSON
// of the schema. A model not configured so offers none, and such a request
// is refused, naming response_format, before anything is sent.
func TestResponseFormatForwarded(t *testing.T) {
	rec := &recorder{next: openaiapi.NewHandler(testmodel.Backend(t, 1))}
	srv := httptest.NewServer(rec)
	defer srv.Close()
	const schema = `{"type":"object","properties":{"color":{"enum":["red","green"]},"ok":{"type":"boolean"}},"required":["color","ok"],"additionalProperties":false}`
	req := runtime.Request{Model: testmodel.ModelID, Messages: []runtime.Message{{Role: "user", Content: "A color."}}, MaxTokens: 100,
		Format: &runtime.ResponseFormat{Type: runtime.FormatJSONSchema, Name: "pick", Schema: json.RawMessage(schema), Strict: true}}

	b, err := openai.New(context.Background(), openai.Config{BaseURL: srv.URL, Capabilities: map[string]runtime.Model{testmodel.ModelID: {StructuredOutput: true}}})
	if err != nil {
		t.Fatal(err)
	}
	if m := b.Models(); len(m) != 1 || !m[0].StructuredOutput {
		t.Fatalf("Models() = %+v; want StructuredOutput", m)
	}
	r, err := drain(t, b, req)
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Color string `json:"color"`
		OK    *bool  `json:"ok"`
	}
	dec := json.NewDecoder(bytes.NewReader([]byte(r.text)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil || (v.Color != "red" && v.Color != "green") || v.OK == nil {
		t.Errorf("answer %q (%+v, %v); want JSON of the schema", r.text, v, err)
	}
	got := rec.bodies()
	if len(got) != 1 {
		t.Fatalf("upstream got %d requests; want 1", len(got))
	}
	var sent struct {
		ResponseFormat struct {
			Type       string `json:"type"`
			JSONSchema struct {
				Name   string          `json:"name"`
				Schema json.RawMessage `json:"schema"`
				Strict *bool           `json:"strict"`
			} `json:"json_schema"`
		} `json:"response_format"`
	}
	if err := json.Unmarshal(got[0], &sent); err != nil {
		t.Fatal(err)
	}
	rf := sent.ResponseFormat
	if rf.Type != "json_schema" || rf.JSONSchema.Name != "pick" || string(rf.JSONSchema.Schema) != schema ||
		rf.JSONSchema.Strict == nil || !*rf.JSONSchema.Strict {
		t.Errorf("upstream got response_format %+v (schema %s); want the request's", rf, rf.JSONSchema.Schema)
	}

	plain, err := openai.New(context.Background(), openai.Config{BaseURL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	if m := plain.Models(); len(m) != 1 || m[0].StructuredOutput {
		t.Fatalf("Models() = %+v; want no StructuredOutput", m)
	}
	_, err = drain(t, plain, req)
	var fe *runtime.FieldError
	if !errors.As(err, &fe) || fe.Field != "response_format" || !errors.Is(err, runtime.ErrInvalidRequest) {
		t.Errorf("format to a model without it: %v; want a FieldError naming response_format", err)
	}
	if n := len(rec.bodies()); n != 1 {
		t.Errorf("upstream got %d requests; want none after the first", n)
	}
}
