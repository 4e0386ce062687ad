package openai_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/internal/testmodel"
	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/openai"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

// BenchmarkAddedLatency runs the same 16-token streaming completion against
// the project's llamacpp backend behind its OpenAI handler, once by a plain
// HTTP client reading the SSE answer and once through the openai backend,
// alternating within each iteration; added_ms is the backend's overhead.
func BenchmarkAddedLatency(b *testing.B) {
	lb := testmodel.Backend(b, 1)
	srv := httptestServer(b, openaiapi.NewHandler(lb))
	ob, err := openai.New(context.Background(), openai.Config{BaseURL: srv})
	if err != nil {
		b.Fatal(err)
	}
	defer ob.Close()
	body := `{"model":"stories260K","prompt":"once upon a time","max_tokens":16,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}`
	req := runtime.Request{Model: testmodel.ModelID, Prompt: prompt, MaxTokens: 16}
	client := &http.Client{}
	var direct, via time.Duration
	runDirect := func() time.Duration {
		t0 := time.Now()
		resp, err := client.Post(srv+"/v1/completions", "application/json", strings.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		defer resp.Body.Close()
		er := openaiapi.NewEventReader(resp.Body, 0)
		for {
			_, done, err := er.Next()
			if err != nil {
				b.Fatal(err)
			}
			if done {
				break
			}
		}
		io.Copy(io.Discard, resp.Body)
		return time.Since(t0)
	}
	runBackend := func() time.Duration {
		t0 := time.Now()
		s, err := ob.Generate(context.Background(), req)
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		for {
			_, err := s.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(t0)
	}
	i := 0
	for b.Loop() {
		// Alternate the order so that neither side always runs on a warmer cache.
		if i%2 == 0 {
			direct += runDirect()
			via += runBackend()
		} else {
			via += runBackend()
			direct += runDirect()
		}
		i++
	}
	n := float64(b.N)
	b.ReportMetric(float64(direct.Microseconds())/1000/n, "direct_ms")
	b.ReportMetric(float64(via.Microseconds())/1000/n, "backend_ms")
	b.ReportMetric(float64((via-direct).Microseconds())/1000/n, "added_ms")
}

func httptestServer(b *testing.B, h http.Handler) string {
	srv := httptest.NewServer(h)
	b.Cleanup(srv.Close)
	return srv.URL
}
