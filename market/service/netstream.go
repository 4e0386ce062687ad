package service

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/runtime"
)

// streamEvent is one chunk with the attempt that delivered it (its worker and
// TEE tier), as market.Failover hands them over.
type streamEvent struct {
	chunk market.Chunk
	by    market.Attempt
}

// NetStream is the stream of one request bought on the network. Besides
// runtime.Stream it has the hooks the OpenAI handler looks for: Header (the
// worker and its TEE tier) and CostNanoTON (what the client paid).
type NetStream struct {
	cancel context.CancelFunc
	events chan streamEvent
	done   chan struct{}
	first  *streamEvent

	header   http.Header
	worker   peer.ID
	tokens   int
	finished bool

	mu       sync.Mutex
	attempts []market.Attempt
	err      error
}

// Header names the worker that started the answer and its TEE tier
// (X-Cocoon-Worker, X-Cocoon-TEE).
func (s *NetStream) Header() http.Header { return s.header }

// setWorker names a's worker and its tier in the headers: the attempt that
// delivered the first text, or ended an answer without any.
func (s *NetStream) setWorker(a market.Attempt) {
	s.worker = a.Candidate.Peer
	s.header = http.Header{}
	s.header.Set("X-Cocoon-Worker", a.Candidate.Peer.String())
	if a.Tier != "" {
		s.header.Set("X-Cocoon-TEE", a.Tier)
	}
}

// Worker is the peer that started the answer.
func (s *NetStream) Worker() peer.ID { return s.worker }

func (s *NetStream) finish(attempts []market.Attempt, err error) {
	s.mu.Lock()
	s.attempts, s.err = attempts, err
	s.mu.Unlock()
}

// Recv implements runtime.Stream.
func (s *NetStream) Recv() (runtime.Delta, error) {
	if s.first != nil {
		ev := s.first
		s.first = nil
		s.tokens = ev.chunk.TokensSoFar
		return deltaOf(ev.chunk), nil
	}
	select {
	case ev := <-s.events:
		s.tokens = ev.chunk.TokensSoFar
		return deltaOf(ev.chunk), nil
	case <-s.done:
	}
	s.finished = true
	if s.err != nil {
		return runtime.Delta{}, fmt.Errorf("%w: %w", runtime.ErrUpstream, s.err)
	}
	return runtime.Delta{}, io.EOF
}

func deltaOf(c market.Chunk) runtime.Delta {
	return runtime.Delta{Text: c.Text, Tokens: c.Tokens, ToolCalls: c.ToolCalls, Logprobs: c.Logprobs, Refusal: c.Refusal}
}

// Attempts returns every worker's part of the answer, each with its receipt;
// complete once Recv has returned an error or io.EOF, or after Close.
func (s *NetStream) Attempts() []market.Attempt {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attempts
}

// Usage implements runtime.Stream: the completion tokens delivered by all
// workers together, and the prompt tokens billed (each worker's own prompt,
// continuation included, as its Done reported).
func (s *NetStream) Usage() runtime.Usage {
	u := runtime.Usage{CompletionTokens: s.tokens}
	for _, a := range s.Attempts() {
		u.PromptTokens += int(a.Receipt.PromptTokens)
	}
	return u
}

// FinishReason implements runtime.Stream: the last worker's.
func (s *NetStream) FinishReason() string {
	as := s.Attempts()
	if len(as) == 0 {
		return ""
	}
	return as[len(as)-1].Receipt.FinishReason
}

// CostNanoTON is what the client paid for the answer, all workers together.
func (s *NetStream) CostNanoTON() uint64 {
	var n uint64
	for _, a := range s.Attempts() {
		n += a.Receipt.Paid
	}
	return n
}

// Close implements runtime.Stream: it cancels a running answer (paying for what
// arrived) and waits until the workers are settled.
func (s *NetStream) Close() error {
	s.cancel()
	<-s.done
	return nil
}
