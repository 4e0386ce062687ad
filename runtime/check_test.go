package runtime

import (
	"errors"
	"math"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	ok := Request{Model: "m", Messages: []Message{{Role: "user", Content: "hi\tthere\x01\x7f"}}, MaxTokens: 8, Temperature: 1, TopP: 0.9, Stop: []string{"."}}
	if err := ok.Check(); err != nil {
		t.Fatalf("a fine request: %v", err)
	}
	for _, tc := range []struct {
		field string
		edit  func(*Request)
	}{
		{"model", func(r *Request) { r.Model = "" }},
		{"model", func(r *Request) { r.Model = "m\x00" }},
		{"model", func(r *Request) { r.Model = strings.Repeat("m", MaxModelIDBytes+1) }},
		{"messages", func(r *Request) { r.Messages = nil }},
		{"messages", func(r *Request) { r.Prompt = "also" }},
		{"messages", func(r *Request) { r.Messages = make([]Message, MaxMessages+1) }},
		{"messages", func(r *Request) { r.Messages[0].Content = strings.Repeat("a", MaxTextBytes+1) }},
		{"messages[0].role", func(r *Request) { r.Messages[0].Role = "root" }},
		{"messages[0].content", func(r *Request) { r.Messages[0].Content = "a\x00b" }},
		{"messages[0].content", func(r *Request) { r.Messages[0].Content = "a\xffb" }},
		{"prompt", func(r *Request) { r.Messages, r.Prompt = nil, "\xc3" }},
		{"continuation", func(r *Request) { r.Continuation = "\x00" }},
		{"max_tokens", func(r *Request) { r.MaxTokens = -1 }},
		{"max_tokens", func(r *Request) { r.MaxTokens = 1<<32 + 1 }},
		{"max_tokens", func(r *Request) { r.MaxTokens = 1e18 }},
		{"temperature", func(r *Request) { r.Temperature = math.NaN() }},
		{"temperature", func(r *Request) { r.Temperature = math.Inf(1) }},
		{"top_p", func(r *Request) { r.TopP = math.NaN() }},
		{"top_p", func(r *Request) { r.TopP = -0.1 }},
		{"stop", func(r *Request) { r.Stop = []string{"a", "b", "c", "d", "e"} }},
		{"stop[0]", func(r *Request) { r.Stop = []string{""} }},
		{"stop[0]", func(r *Request) { r.Stop = []string{strings.Repeat("s", MaxStopBytes+1)} }},
		{"stop[0]", func(r *Request) { r.Stop = []string{"\x00"} }},
		{"response_format.type", func(r *Request) { r.Format = &ResponseFormat{Type: "text"} }},
		{"response_format.json_schema", func(r *Request) { r.Format = &ResponseFormat{Type: FormatJSONObject, Schema: []byte(`{}`)} }},
		{"response_format.json_schema.name", func(r *Request) { r.Format = &ResponseFormat{Type: FormatJSONSchema, Schema: []byte(`{}`)} }},
		{"response_format.json_schema.name", func(r *Request) {
			r.Format = &ResponseFormat{Type: FormatJSONSchema, Name: "a b", Schema: []byte(`{}`)}
		}},
		{"response_format.json_schema.name", func(r *Request) {
			r.Format = &ResponseFormat{Type: FormatJSONSchema, Name: strings.Repeat("n", MaxFormatNameBytes+1), Schema: []byte(`{}`)}
		}},
		{"response_format.json_schema.schema", func(r *Request) { r.Format = &ResponseFormat{Type: FormatJSONSchema, Name: "n"} }},
		{"response_format.json_schema.schema", func(r *Request) {
			r.Format = &ResponseFormat{Type: FormatJSONSchema, Name: "n", Schema: []byte(`{"type":"string","pattern":"a+"}`)}
		}},
		{"response_format.json_schema.schema", func(r *Request) {
			r.Format = &ResponseFormat{Type: FormatJSONSchema, Name: "n", Schema: []byte(`{"type":`)}
		}},
		{"response_format.json_schema.schema", func(r *Request) {
			r.Format = &ResponseFormat{Type: FormatJSONSchema, Name: "n", Schema: []byte(`"` + strings.Repeat("s", MaxSchemaBytes) + `"`)}
		}},
	} {
		r := ok
		r.Messages = append([]Message(nil), ok.Messages...)
		tc.edit(&r)
		err := r.Check()
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field || !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("%s: %v, want a FieldError naming it", tc.field, err)
		}
	}
}

// TestCheckFormat: the formats runtime/grammar can follow pass, and a schema
// it refuses is refused naming the keyword.
func TestCheckFormat(t *testing.T) {
	base := Request{Model: "m", Prompt: "p"}
	for _, f := range []*ResponseFormat{
		{Type: FormatJSONObject},
		{Type: FormatJSONSchema, Name: "point_2-D", Strict: true,
			Schema: []byte(`{"type":"object","properties":{"x":{"type":"integer"}},"required":["x"],"additionalProperties":false}`)},
	} {
		r := base
		r.Format = f
		if err := r.Check(); err != nil {
			t.Errorf("%+v: %v", f, err)
		}
	}
	r := base
	r.Format = &ResponseFormat{Type: FormatJSONSchema, Name: "n", Schema: []byte(`{"type":"object","properties":{"a":{"type":"integer","minimum":3}}}`)}
	err := r.Check()
	if err == nil || !strings.Contains(err.Error(), `"minimum"`) || !strings.Contains(err.Error(), "/properties/a") {
		t.Errorf("a schema with minimum: %v, want a refusal naming the keyword and where", err)
	}
}
