package service

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/cocoon-network/cocoon/runtime"
)

// latencySamples is how many recent jobs per model the advertised medians cover.
const latencySamples = 64

// latencies keeps the recent time to first token and time per output token of a
// worker's own jobs, per model, so that its ads carry measured p50s. It is safe
// for concurrent use.
type latencies struct {
	mu   sync.Mutex
	ttft map[string][]time.Duration
	tpot map[string][]time.Duration
}

func newLatencies() *latencies {
	return &latencies{ttft: map[string][]time.Duration{}, tpot: map[string][]time.Duration{}}
}

func push(m map[string][]time.Duration, model string, d time.Duration) {
	s := append(m[model], d)
	if len(s) > latencySamples {
		s = s[len(s)-latencySamples:]
	}
	m[model] = s
}

func (l *latencies) observe(model string, ttft, tpot time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if ttft > 0 {
		push(l.ttft, model, ttft)
	}
	if tpot > 0 {
		push(l.tpot, model, tpot)
	}
}

func median(s []time.Duration) time.Duration {
	if len(s) == 0 {
		return 0
	}
	s = slices.Clone(s)
	slices.Sort(s)
	return s[len(s)/2]
}

// p50 returns the medians for model; zero until a job has been measured.
func (l *latencies) p50(model string) (ttft, tpot time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return median(l.ttft[model]), median(l.tpot[model])
}

// timedBackend measures every generation of the wrapped backend.
type timedBackend struct {
	runtime.Backend
	lat *latencies
}

func (b timedBackend) Generate(ctx context.Context, req runtime.Request) (runtime.Stream, error) {
	start := time.Now()
	s, err := b.Backend.Generate(ctx, req)
	if err != nil {
		return nil, err
	}
	return &timedStream{Stream: s, lat: b.lat, model: req.Model, start: start}, nil
}

// Embed passes embeddings through (they have no tokens to time).
func (b timedBackend) Embed(ctx context.Context, req runtime.EmbedRequest) (runtime.Embeddings, error) {
	e, ok := b.Backend.(runtime.Embedder)
	if !ok {
		return runtime.Embeddings{}, &runtime.FieldError{Field: "model", Msg: "this worker's backend serves no embeddings"}
	}
	return e.Embed(ctx, req)
}

type timedStream struct {
	runtime.Stream
	lat    *latencies
	model  string
	start  time.Time
	first  time.Time
	tokens int
}

// Recv records the first token's arrival and, at the end of a complete
// generation, the mean time per token after the first.
func (s *timedStream) Recv() (runtime.Delta, error) {
	d, err := s.Stream.Recv()
	if err == nil && d.Tokens > 0 {
		if s.first.IsZero() {
			s.first = time.Now()
		}
		s.tokens += d.Tokens
	}
	if err != nil && !s.first.IsZero() {
		var tpot time.Duration
		if s.tokens > 1 {
			tpot = time.Since(s.first) / time.Duration(s.tokens-1)
		}
		s.lat.observe(s.model, s.first.Sub(s.start), tpot)
		s.first = time.Time{} // observe once
		s.tokens = 0
	}
	return d, err
}
