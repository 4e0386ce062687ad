package runner

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/internal/testmodel"
	"github.com/cocoon-network/cocoon/runtime"
)

// BenchmarkIsolation measures what the child process costs: the same greedy
// 64-token generation on the shared model in process and through the child,
// in one run. Reported: completion tokens per second and time to first token.
//
//	go test -run '^$' -bench Isolation -benchtime 200x ./runtime/runner
func BenchmarkIsolation(b *testing.B) {
	for _, mode := range []string{"in-process", "child"} {
		b.Run(mode, func(b *testing.B) {
			var be runtime.Backend
			if mode == "child" {
				be = start(b, 1, nil)
			} else {
				be = testmodel.Backend(b, 1)
			}
			req := greedy("Once upon a time", 64)
			var tokens int
			var ttft, total time.Duration
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				s, err := be.Generate(context.Background(), req)
				if err != nil {
					b.Fatal(err)
				}
				first := true
				for {
					d, err := s.Recv()
					if errors.Is(err, io.EOF) {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
					if first {
						ttft += time.Since(t0)
						first = false
					}
					tokens += d.Tokens
				}
				s.Close()
				total += time.Since(t0)
			}
			b.ReportMetric(float64(tokens)/total.Seconds(), "tokens/s")
			b.ReportMetric(float64(ttft.Microseconds())/float64(b.N)/1000, "ttft_ms")
		})
	}
}
