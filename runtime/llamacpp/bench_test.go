package llamacpp_test

import (
	"context"
	"io"
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
