package service_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/runtime"
)

// wordBackend answers every request with the same words, one token each: enough
// to run paid jobs without a model. wait, when set, passes before each word.
type wordBackend struct {
	words []string
	wait  time.Duration
}

func (b wordBackend) Models() []runtime.Model {
	return []runtime.Model{{ID: netModel, ContextLength: 2048}}
}
func (b wordBackend) Close() error { return nil }
func (b wordBackend) Generate(ctx context.Context, r runtime.Request) (runtime.Stream, error) {
	if r.Model != netModel {
		return nil, runtime.ErrUnknownModel
	}
	prompt := 0
	for _, m := range r.Messages {
		prompt += len(strings.Fields(m.Content))
	}
	return &wordStream{ctx: ctx, words: b.words, wait: b.wait, prompt: prompt}, nil
}

// answer is the text of every answer.
func (b wordBackend) answer() string { return " " + strings.Join(b.words, " ") }

type wordStream struct {
	ctx    context.Context
	words  []string
	wait   time.Duration
	next   int
	prompt int
}

func (s *wordStream) Recv() (runtime.Delta, error) {
	if s.next == len(s.words) {
		return runtime.Delta{}, io.EOF
	}
	if s.wait > 0 {
		select {
		case <-time.After(s.wait):
		case <-s.ctx.Done():
			return runtime.Delta{}, s.ctx.Err()
		}
	}
	s.next++
	return runtime.Delta{Text: " " + s.words[s.next-1], Tokens: 1}, nil
}
func (s *wordStream) Usage() runtime.Usage {
	return runtime.Usage{PromptTokens: s.prompt, CompletionTokens: s.next}
}
func (s *wordStream) FinishReason() string { return runtime.FinishStop }
func (s *wordStream) Close() error         { return nil }

// tally is a payment channel for tests where money is not the question: a
// voucher is the job's total in 8 bytes, unsigned, and the payee takes any that
// raises it. Client and worker may each hold their own tally, even in
// different processes.
type tally struct {
	mu   sync.Mutex
	jobs map[market.JobID]uint64
}

func newTally() *tally { return &tally{jobs: map[market.JobID]uint64{}} }

// Channel, Sync, End and Pay implement market.Payer.
func (t *tally) Channel() string      { return "" }
func (t *tally) Sync([]byte) error    { return nil }
func (t *tally) End(job market.JobID) {}
func (t *tally) Pay(_ context.Context, job market.JobID, total uint64) ([]byte, error) {
	return binary.BigEndian.AppendUint64(nil, total), nil
}

// Open implements market.Payee.
func (t *tally) Open(_ context.Context, job market.JobID, _ string) (market.Account, error) {
	return &tallyAccount{t: t, job: job}, nil
}

type tallyAccount struct {
	t   *tally
	job market.JobID
}

func (a *tallyAccount) Reserve(want int) int { return want }
func (a *tallyAccount) State() []byte        { return nil }
func (a *tallyAccount) Close()               {}

func (a *tallyAccount) Durable() (uint64, <-chan struct{}) {
	a.t.mu.Lock()
	defer a.t.mu.Unlock()
	return a.t.jobs[a.job], nil
}

func (a *tallyAccount) Accept(v []byte, _, _ uint64) (uint64, error) {
	if len(v) != 8 {
		return 0, errors.New("tally: voucher of the wrong length")
	}
	total := binary.BigEndian.Uint64(v)
	t := a.t
	t.mu.Lock()
	defer t.mu.Unlock()
	prev := t.jobs[a.job]
	if total <= prev {
		return 0, fmt.Errorf("tally: job %s total %d after %d", a.job, total, prev)
	}
	t.jobs[a.job] = total
	return total - prev, nil
}
