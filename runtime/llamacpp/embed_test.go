package llamacpp_test

import (
	"context"
	"errors"
	"math"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/cocoon-network/cocoon/internal/testmodel"
	"github.com/cocoon-network/cocoon/runtime"
)

var embedInputs = []string{"once upon a time", "the cat sat on the mat", "Lily loved to play in the park"}

func embed(t *testing.T, b runtime.Embedder, inputs ...string) runtime.Embeddings {
	t.Helper()
	e, err := b.Embed(context.Background(), runtime.EmbedRequest{Model: testmodel.ModelID, Inputs: inputs})
	if err != nil {
		t.Fatalf("Embed(%q): %v", inputs, err)
	}
	if len(e.Vectors) != len(inputs) {
		t.Fatalf("%d vectors for %d inputs", len(e.Vectors), len(inputs))
	}
	return e
}

// TestEmbeddings: vectors of n_embd, unit length, deterministic, the same in
// a batch as one by one, different for different texts, and the prompt
// tokens of all inputs.
func TestEmbeddings(t *testing.T) {
	b := testmodel.Backend(t, 1)
	dims := b.Models()[0].EmbeddingDims
	if dims != 64 { // embedding_length in MODELS.md
		t.Fatalf("EmbeddingDims %d; want 64", dims)
	}
	all := embed(t, b, embedInputs...)
	want := 0
	for i, in := range embedInputs {
		n, _ := b.CountTokens(testmodel.ModelID, in)
		want += n
		v := all.Vectors[i]
		norm := 0.0
		for _, x := range v {
			norm += float64(x) * float64(x)
		}
		if len(v) != dims || math.Abs(math.Sqrt(norm)-1) > 1e-4 {
			t.Fatalf("vector %d: %d dims, norm %g", i, len(v), math.Sqrt(norm))
		}
		one := embed(t, b, in)
		if !reflect.DeepEqual(one.Vectors[0], v) {
			t.Fatalf("input %d alone differs from the batch", i)
		}
		for j := range i {
			if cos(all.Vectors[j], v) > 0.9999 {
				t.Fatalf("inputs %d and %d: cosine %g", j, i, cos(all.Vectors[j], v))
			}
		}
	}
	if all.PromptTokens != want {
		t.Fatalf("PromptTokens %d; want %d", all.PromptTokens, want)
	}
	if again := embed(t, b, embedInputs...); !reflect.DeepEqual(again, all) {
		t.Fatalf("two runs differ")
	}
	t.Logf("cosines: %.3f %.3f %.3f", cos(all.Vectors[0], all.Vectors[1]), cos(all.Vectors[0], all.Vectors[2]), cos(all.Vectors[1], all.Vectors[2]))
}

func cos(a, b []float32) float64 {
	s := 0.0
	for i := range a {
		s += float64(a[i]) * float64(b[i])
	}
	return s
}

func TestEmbeddingsRefused(t *testing.T) {
	b := testmodel.Backend(t, 1)
	long := strings.Repeat("once upon a time ", 2048)
	many := make([]string, runtime.MaxEmbedInputs+1)
	for i := range many {
		many[i] = "x"
	}
	for _, c := range []struct {
		inputs []string
		field  string
	}{
		{[]string{"a", ""}, "input[1]"},
		{[]string{long}, "input[0]"},
		{many, "input"},
		{nil, "input"},
	} {
		_, err := b.Embed(context.Background(), runtime.EmbedRequest{Model: testmodel.ModelID, Inputs: c.inputs})
		var fe *runtime.FieldError
		if !errors.As(err, &fe) || fe.Field != c.field {
			t.Fatalf("%d inputs: %v; want a field error naming %s", len(c.inputs), err, c.field)
		}
	}
	if _, err := b.Embed(context.Background(), runtime.EmbedRequest{Model: "nope", Inputs: []string{"a"}}); !errors.Is(err, runtime.ErrUnknownModel) {
		t.Fatalf("unknown model: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := b.Embed(ctx, runtime.EmbedRequest{Model: testmodel.ModelID, Inputs: []string{"a"}}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
}

// TestEmbeddingsConcurrent: Embed calls from many goroutines, beside a
// generation, agree with one alone; Close during them ends them.
func TestEmbeddingsConcurrent(t *testing.T) {
	b := testmodel.Backend(t, 1)
	want := embed(t, b, embedInputs...)
	s, err := b.Generate(context.Background(), runtime.Request{Model: testmodel.ModelID, Prompt: prompt, MaxTokens: 200})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 3 {
				got, err := b.Embed(context.Background(), runtime.EmbedRequest{Model: testmodel.ModelID, Inputs: embedInputs})
				if err != nil || !reflect.DeepEqual(got, want) {
					t.Errorf("concurrent Embed: %v", err)
					return
				}
			}
		})
	}
	// The generation goes on meanwhile.
	for range 20 {
		if _, err := s.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	s.Close()

	// Close while Embed runs: each ends with an error or its answer.
	var batch []string
	for range 200 {
		batch = append(batch, embedInputs...)
	}
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			_, err := b.Embed(context.Background(), runtime.EmbedRequest{Model: testmodel.ModelID, Inputs: batch})
			errs <- err
		}()
	}
	b.Close()
	for range 4 {
		if err := <-errs; err != nil && !errors.Is(err, runtime.ErrClosed) {
			t.Fatalf("Embed during Close: %v", err)
		}
	}
	if _, err := b.Embed(context.Background(), runtime.EmbedRequest{Model: testmodel.ModelID, Inputs: []string{"a"}}); !errors.Is(err, runtime.ErrClosed) {
		t.Fatalf("Embed after Close: %v", err)
	}
}
