package market

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/cocoon-network/cocoon/runtime"
)

// TestRunMaxTokensRange: Open carries max_tokens in 32 bits, so Run refuses a
// value outside them by name (as runtime.ErrInvalidRequest) before anything
// is sent, instead of wrapping 2³²+1 to 1; the largest value that fits goes
// through. Failover stops at such an error instead of trying every worker.
func TestRunMaxTokensRange(t *testing.T) {
	for _, mt := range []int{-1, math.MaxUint32 + 1, 1 << 40, 1e18} {
		ch := newMemChannel()
		b := &textBackend{model: "m", textLen: 5}
		w := &Worker{Backend: b, Payee: ch.payee(), Prices: map[string]Price{"m": {Completion: 10}}, CreditTokens: 4}
		res := runPipe(t.Context(), w, testJob("m", mt), ch.payer(), RunOptions{}, nil)
		if !errors.Is(res.err, runtime.ErrInvalidRequest) || !strings.Contains(res.err.Error(), "max_tokens") {
			t.Errorf("Run with max_tokens %d = %v; want an invalid request naming max_tokens", mt, res.err)
		}
		if len(res.chunks) != 0 || b.generated != 0 {
			t.Errorf("max_tokens %d: %d chunks, %d deltas generated; want none", mt, len(res.chunks), b.generated)
		}
	}
	// The largest value that fits leaves the client; the worker may still
	// refuse it by its own limit (REJECT_BAD_REQUEST), and Failover then stops
	// with an invalid request too.
	ch := newMemChannel()
	w := &Worker{Backend: &textBackend{model: "m", textLen: 5}, Payee: ch.payee(), Prices: map[string]Price{"m": {Completion: 10}}, CreditTokens: 4}
	res := runPipe(t.Context(), w, testJob("m", math.MaxUint32), ch.payer(), RunOptions{}, nil)
	if res.err != nil && (!errors.Is(res.err, ErrRejected) || strings.Contains(res.err.Error(), "max_tokens")) {
		t.Fatalf("Run with max_tokens 2³²-1 = %v; want it sent (an answer or the worker's reject)", res.err)
	}

	n := newFailoverNet(t)
	cands := []Candidate{n.add("w1", &textBackend{model: "m", textLen: 5}, Price{}, 4), n.add("w2", &textBackend{model: "m", textLen: 5}, Price{}, 4)}
	fo := n.failover()
	fo.Selector = &Selector{}
	attempts, err := fo.Run(t.Context(), cands, testJob("m", math.MaxUint32+1), func(Attempt, Chunk) error { return nil })
	n.wg.Wait()
	if !errors.Is(err, runtime.ErrInvalidRequest) || errors.Is(err, ErrNoWorker) || len(attempts) != 1 {
		t.Fatalf("Failover.Run = %v after %d attempts; want the invalid request after 1", err, len(attempts))
	}
	if fo.Selector.Reputation("w1") != 0.5 {
		t.Fatalf("w1's reputation %v after the caller's bad request; want 0.5 (no mark)", fo.Selector.Reputation("w1"))
	}

	// A worker's REJECT_BAD_REQUEST is the request's fault as well: no other
	// worker is tried, and the error is an invalid request (400, not 502).
	n = newFailoverNet(t)
	strict := &textBackend{model: "m", textLen: 5}
	cands = []Candidate{n.add("w1", strict, Price{}, 4), n.add("w2", &textBackend{model: "m", textLen: 5}, Price{}, 4)}
	n.workers["w1"].Admit = func(context.Context, OpenRequest) RejectCode { return RejectBadRequest }
	fo = n.failover()
	attempts, err = fo.Run(t.Context(), cands, testJob("m", 0), func(Attempt, Chunk) error { return nil })
	n.wg.Wait()
	if !errors.Is(err, runtime.ErrInvalidRequest) || !errors.Is(err, ErrRejected) || len(attempts) != 1 {
		t.Fatalf("Failover.Run after REJECT_BAD_REQUEST = %v after %d attempts; want an invalid request after 1", err, len(attempts))
	}
}
