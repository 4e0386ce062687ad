package llamacpp_test

import (
	"context"
	"io"
	"strconv"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/internal/testmodel"
	"github.com/cocoon-network/cocoon/runtime"
)

// BenchmarkGenerate measures the embedded backend on the shared model with one
// thread: tokens per second of generation and time to first token (prompt
// decode plus the first sampled token), 128 tokens per iteration.
func BenchmarkGenerate(b *testing.B) {
	be := testmodel.Backend(b, 1)
	req := runtime.Request{Model: testmodel.ModelID, Prompt: prompt, MaxTokens: 128, Temperature: 0.8, Seed: seed(1)}
	var ttft, gen time.Duration
	tokens := 0
	for b.Loop() {
		start := time.Now()
		s, err := be.Generate(context.Background(), req)
		if err != nil {
			b.Fatal(err)
		}
		first := time.Time{}
		for {
			_, err := s.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			if first.IsZero() {
				first = time.Now()
			}
		}
		end := time.Now()
		ttft += first.Sub(start)
		gen += end.Sub(start)
		tokens += s.Usage().CompletionTokens
		s.Close()
	}
	b.ReportMetric(float64(tokens)/gen.Seconds(), "tok/s")
	b.ReportMetric(float64(ttft.Microseconds())/1000/float64(b.N), "ttft_ms")
}

// BenchmarkGrammarCost measures what a grammar costs in generation speed:
// the same chat request as free text, under a json_schema response format,
// and as a required tool call, each reporting tokens per second (prompt
// included) and the prompt's decode time.
func BenchmarkGrammarCost(b *testing.B) {
	be := testmodel.Backend(b, 1)
	schema := runtime.ResponseFormat{Type: runtime.FormatJSONSchema, Name: "weather", Schema: []byte(weatherSchema)}
	base := runtime.Request{Model: testmodel.ModelID, Messages: weatherQuestion, MaxTokens: 128, Temperature: 0.8, Seed: seed(1)}
	for _, c := range []struct {
		name string
		edit func(*runtime.Request)
	}{
		{"text", func(*runtime.Request) {}},
		{"json_schema", func(r *runtime.Request) { r.Format = &schema }},
		{"tool_required", func(r *runtime.Request) {
			r.Tools, r.ToolChoice = testTools, runtime.ToolChoice{Mode: runtime.ToolChoiceRequired}
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			req := base
			c.edit(&req)
			var gen, ttft time.Duration
			tokens := 0
			for b.Loop() {
				start := time.Now()
				s, err := be.Generate(context.Background(), req)
				if err != nil {
					b.Fatal(err)
				}
				ttft += time.Since(start)
				for {
					if _, err := s.Recv(); err == io.EOF {
						break
					} else if err != nil {
						b.Fatal(err)
					}
				}
				gen += time.Since(start)
				tokens += s.Usage().CompletionTokens
				s.Close()
			}
			b.ReportMetric(float64(tokens)/gen.Seconds(), "tok/s")
			b.ReportMetric(float64(tokens)/float64(b.N), "tok/op")
			b.ReportMetric(float64(ttft.Microseconds())/1000/float64(b.N), "prompt_ms")
			// Without the prompt's decode (the tools' section makes the
			// tool request's prompt much longer): sampling under the grammar.
			b.ReportMetric(float64(tokens)/(gen-ttft).Seconds(), "gen_tok/s")
		})
	}
}

// BenchmarkEmbed measures embeddings: inputs per second over a batch of 32
// short inputs, one thread.
func BenchmarkEmbed(b *testing.B) {
	be := testmodel.Backend(b, 1)
	var inputs []string
	for i := range 32 {
		inputs = append(inputs, embedInputs[i%len(embedInputs)]+" "+strconv.Itoa(i))
	}
	req := runtime.EmbedRequest{Model: testmodel.ModelID, Inputs: inputs}
	n := 0
	start := time.Now()
	for b.Loop() {
		if _, err := be.Embed(context.Background(), req); err != nil {
			b.Fatal(err)
		}
		n += len(inputs)
	}
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "inputs/s")
}
