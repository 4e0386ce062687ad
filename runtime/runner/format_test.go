package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cocoon-network/cocoon/internal/testmodel"
	"github.com/cocoon-network/cocoon/runtime"
)

// formatSchema is a small schema every value of which checkFormatted can
// judge without a JSON Schema validator.
const formatSchema = `{"type":"object","properties":{"ok":{"type":"boolean"},"color":{"enum":["red","green","blue"]},"n":{"type":"integer"}},"required":["ok","color","n"],"additionalProperties":false}`

// checkFormatted reports what in text is not one JSON value valid for
// formatSchema.
func checkFormatted(text string) error {
	dec := json.NewDecoder(strings.NewReader(text))
	dec.DisallowUnknownFields()
	dec.UseNumber()
	var v struct {
		OK    *bool        `json:"ok"`
		Color *string      `json:"color"`
		N     *json.Number `json:"n"`
	}
	if err := dec.Decode(&v); err != nil {
		return fmt.Errorf("not an object of the schema: %v", err)
	}
	if dec.More() {
		return errors.New("more after the JSON value")
	}
	switch {
	case v.OK == nil || v.Color == nil || v.N == nil:
		return errors.New("a required property is missing")
	case !slices.Contains([]string{"red", "green", "blue"}, *v.Color):
		return fmt.Errorf("color %q is not in the enum", *v.Color)
	}
	if _, err := strconv.ParseInt(v.N.String(), 10, 64); err != nil {
		return fmt.Errorf("n %s is not an integer", *v.N)
	}
	return nil
}

// TestResponseFormat: the embedded engine offers structured output, and a
// json_schema request sampled at temperature 1 through the child process
// comes back, seed after seed, as JSON valid for the schema, ended by the
// model; a json_object request as one JSON object. A continuation another
// worker delivered is followed; one the grammar does not allow is refused
// as the caller's fault, without harm to the engine.
func TestResponseFormat(t *testing.T) {
	b := start(t, 1, nil)
	if m := b.Models(); len(m) != 1 || !m[0].StructuredOutput {
		t.Fatalf("Models() = %+v; want one model with StructuredOutput", m)
	}
	ctx := context.Background()
	schema := &runtime.ResponseFormat{Type: runtime.FormatJSONSchema, Name: "t", Schema: json.RawMessage(formatSchema), Strict: true}
	run := func(seed uint64, f *runtime.ResponseFormat, cont string) (string, string, error) {
		req := runtime.Request{Model: testmodel.ModelID, Prompt: "Once upon a time", MaxTokens: 300, Temperature: float64(min(seed, 1)),
			Seed: &seed, Format: f, Continuation: cont}
		s, err := b.Generate(ctx, req)
		if err != nil {
			return "", "", err
		}
		text, _, err := collect(t, s)
		return text, s.FinishReason(), err
	}
	for seed := range uint64(4) {
		text, finish, err := run(seed, schema, "")
		if err != nil || finish != runtime.FinishStop {
			t.Fatalf("seed %d: %q, finish %q, %v", seed, text, finish, err)
		}
		if err := checkFormatted(text); err != nil {
			t.Errorf("seed %d: %q: %v", seed, text, err)
		}
		t.Logf("seed %d: %s", seed, text)
	}
	// This model writes stories into an object's strings until max_tokens:
	// what it wrote is then a prefix of one, and nothing else.
	text, finish, err := run(0, &runtime.ResponseFormat{Type: runtime.FormatJSONObject}, "")
	var obj map[string]any
	switch uerr := json.Unmarshal([]byte(text), &obj); {
	case err != nil:
		t.Errorf("json_object: %v", err)
	case finish == runtime.FinishStop && uerr != nil,
		finish == runtime.FinishLength && (!strings.HasPrefix(text, "{") || uerr == nil || !strings.Contains(uerr.Error(), "unexpected end")):
		t.Errorf("json_object: %q, finish %s: %v; want one JSON object or, cut by max_tokens, a prefix of one", text, finish, uerr)
	}

	const cont = `{"ok":`
	text, _, err = run(1, schema, cont)
	if err != nil {
		t.Fatalf("continuation %q: %v", cont, err)
	}
	if err := checkFormatted(cont + text); err != nil {
		t.Errorf("continuation %q then %q: %v", cont, text, err)
	}
	_, _, err = run(1, schema, "Once there was")
	if !errors.Is(err, runtime.ErrInvalidRequest) || !strings.Contains(err.Error(), "continuation") {
		t.Errorf("a continuation outside the grammar: %v; want an invalid request naming continuation", err)
	}
	if _, _, err := run(2, schema, ""); err != nil {
		t.Errorf("after the refused continuation: %v", err)
	}
}
