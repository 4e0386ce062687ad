package inproc

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

// The fixed-delay upstream of BenchmarkConcurrency: every answer is
// delayTokens tokens, one every tokenDelay, as a server that batches its
// sequences would stream them.
const (
	delayTokens = 32
	tokenDelay  = 20 * time.Millisecond
	delayWord   = " tok"
)

// delayBackend streams delayTokens tokens tokenDelay apart, whatever the
// request, and never makes a request wait for another: its concurrency is
// bounded only by its callers.
type delayBackend struct{}

func (delayBackend) Models() []runtime.Model {
	return []runtime.Model{{ID: Model, ContextLength: 4096}}
}
func (delayBackend) Close() error { return nil }
func (delayBackend) Generate(ctx context.Context, _ runtime.Request) (runtime.Stream, error) {
	return &delayStream{ctx: ctx}, nil
}

type delayStream struct {
	ctx  context.Context
	done int
}

func (s *delayStream) Recv() (runtime.Delta, error) {
	if s.done == delayTokens {
		return runtime.Delta{}, io.EOF
	}
	t := time.NewTimer(tokenDelay)
	defer t.Stop()
	select {
	case <-s.ctx.Done():
		return runtime.Delta{}, s.ctx.Err()
	case <-t.C:
	}
	s.done++
	return runtime.Delta{Text: delayWord, Tokens: 1}, nil
}
func (s *delayStream) Usage() runtime.Usage {
	return runtime.Usage{PromptTokens: 8, CompletionTokens: s.done}
}
func (s *delayStream) FinishReason() string { return runtime.FinishLength }
func (s *delayStream) Close() error         { return nil }

// peakServer counts the chat completions in progress at once and the most
// there ever were since the last reset; GET /v1/models is not counted.
type peakServer struct {
	h         http.Handler
	cur, peak atomic.Int64
}

func (p *peakServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost {
		n := p.cur.Add(1)
		for {
			old := p.peak.Load()
			if n <= old || p.peak.CompareAndSwap(old, n) {
				break
			}
		}
		defer p.cur.Add(-1)
	}
	p.h.ServeHTTP(w, r)
}

// concurrencyClient sends many requests at once to one host without closing
// connections between rounds.
var concurrencyClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}

// chatOnce sends one non-streamed chat completion of delayTokens tokens to url
// and checks the answer: 200, one choice of delayTokens words, usage saying so.
func chatOnce(url, token string) error {
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"hi"}],"max_tokens":%d}`, Model, delayTokens)
	req, err := http.NewRequest(http.MethodPost, url+"/v1/chat/completions", strings.NewReader(body))
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := concurrencyClient.Do(req)
	if err != nil {
		return fmt.Errorf("POST %s: %w", url, err)
	}
	out, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("POST %s: read the answer: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST %s: %s %s", url, resp.Status, bytes.TrimSpace(out))
	}
	var cc openaiapi.ChatCompletion
	if err := json.Unmarshal(out, &cc); err != nil {
		return fmt.Errorf("POST %s: answer %s: %w", url, out, err)
	}
	want := strings.Repeat(delayWord, delayTokens)
	if len(cc.Choices) != 1 || string(cc.Choices[0].Message.Content) != want ||
		cc.Usage == nil || cc.Usage.CompletionTokens != delayTokens {
		return fmt.Errorf("POST %s: answer %s: want one choice of %d tokens", url, out, delayTokens)
	}
	return nil
}

// round sends n requests at once to url and waits for every answer.
func round(url, token string, n int) error {
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- chatOnce(url, token) }()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// BenchmarkConcurrency measures, in one run and on the same fixed-delay
// upstream on loopback (32 tokens, 20 ms apart, recording the most chat
// completions it serves at once), rounds of 1, 4, 16 and 64 concurrent chat
// completions sent straight to the upstream and through one client node's
// gateway to workers in front of that upstream (mocknet, sim TEE, vouchers
// fsynced on both sides): with one worker of 16 slots, and with two of 8.
//
// Each iteration is one round: all requests sent at once, all answers awaited.
// It reports requests per second, the upstream's peak concurrency (a market
// that uses the slots reaches min(requests, slots in all)) and, through the
// overlay, the ratio of its throughput to the direct one. It fails on a wrong
// answer, never on a figure.
func BenchmarkConcurrency(b *testing.B) {
	for _, shape := range []struct{ workers, slots int }{{1, 16}, {2, 8}} {
		b.Run(fmt.Sprintf("workers=%dx%d", shape.workers, shape.slots), func(b *testing.B) {
			up := &peakServer{h: openaiapi.NewHandler(delayBackend{})}
			srv := httptest.NewServer(up) // 127.0.0.1
			defer srv.Close()
			tn := New(b, Nodes(1+shape.workers), Workers(shape.workers), Slots(shape.slots), Upstream(srv.URL+"/v1"))
			client := tn.Clients()[0]
			gw := "http://" + client.APIAddr
			// Warm up: the client attests each worker on its first job; throughput
			// is measured on attested connections.
			if err := round(gw, client.Token, 2*shape.workers); err != nil {
				b.Fatalf("warm-up: %v", err)
			}
			for _, n := range []int{1, 4, 16, 64} {
				var direct float64
				for _, path := range []string{"direct", "overlay"} {
					url, token := srv.URL, ""
					if path == "overlay" {
						url, token = gw, client.Token
					}
					b.Run(fmt.Sprintf("requests=%d/%s", n, path), func(b *testing.B) {
						up.peak.Store(0)
						rounds := 0
						start := time.Now()
						for b.Loop() {
							if err := round(url, token, n); err != nil {
								b.Fatal(err)
							}
							rounds++
						}
						rps := float64(rounds*n) / time.Since(start).Seconds()
						b.ReportMetric(rps, "req/s")
						b.ReportMetric(float64(up.peak.Load()), "peak-upstream")
						if path == "direct" {
							direct = rps
						} else if direct > 0 {
							b.ReportMetric(rps/direct, "overlay/direct")
						}
					})
				}
			}
		})
	}
}
