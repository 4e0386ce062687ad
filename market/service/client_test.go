package service_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/market/service"
	"github.com/cocoon-network/cocoon/p2p"
	"github.com/cocoon-network/cocoon/runtime"
)

// TestNetMarketLlama buys 20 streamed completions from 3 llama.cpp workers over
// libp2p (mocknet): each answer equals the worker's backend's own answer, and each
// worker's provable channel balance equals the cost of what it delivered.
func TestNetMarketLlama(t *testing.T) {
	noLeaks(t)
	f := newNetFixture(t, 3, market.RunOptions{}, nil)
	const jobs, par = 20, 4
	type result struct {
		req      runtime.Request
		ans      answer
		worker   peer.ID
		tee      string
		cost     uint64
		attempts []market.Attempt
	}
	results := make([]result, jobs)
	var wg sync.WaitGroup
	errs := make(chan error, jobs)
	for g := range par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; i < jobs; i += par {
				req := netRequest(i)
				s, err := f.cs.Generate(context.Background(), req)
				if err != nil {
					errs <- fmt.Errorf("job %d: generate: %w", i, err)
					return
				}
				ans, err := drain(s)
				s.Close()
				if err != nil {
					errs <- fmt.Errorf("job %d: recv: %w", i, err)
					return
				}
				ns := s.(*service.NetStream)
				w, err := peer.Decode(ns.Header().Get("X-Cocoon-Worker"))
				if err != nil {
					errs <- fmt.Errorf("job %d: X-Cocoon-Worker: %w", i, err)
					return
				}
				results[i] = result{req: req, ans: ans, worker: w, tee: ns.Header().Get("X-Cocoon-TEE"), cost: ns.CostNanoTON(), attempts: ns.Attempts()}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	perWorker := map[peer.ID][]market.Receipt{}
	for i, r := range results {
		w := f.byPeer[r.worker]
		if w == nil {
			t.Fatalf("job %d: header names %s, not a worker", i, r.worker)
		}
		if r.tee != tee.Sim.Tier() {
			t.Errorf("job %d: X-Cocoon-TEE %q; want %q", i, r.tee, tee.Sim.Tier())
		}
		if len(r.attempts) != 1 || r.attempts[0].Err != nil || r.attempts[0].Candidate.Peer != r.worker {
			t.Fatalf("job %d: attempts %+v; want one clean attempt on %s", i, r.attempts, r.worker)
		}
		ref := direct(t, w.raw, r.req)
		if r.ans.text != ref.text || r.ans.finish != ref.finish || r.ans.usage != ref.usage || r.ans.tokens != ref.usage.CompletionTokens {
			t.Errorf("job %d on %s:\n got %q (%s, %+v, %d delta tokens)\nwant %q (%s, %+v)",
				i, r.worker, r.ans.text, r.ans.finish, r.ans.usage, r.ans.tokens, ref.text, ref.finish, ref.usage)
		}
		if ref.usage.CompletionTokens == 0 {
			t.Errorf("job %d: empty reference answer", i)
		}
		rc := r.attempts[0].Receipt
		if rc.Price != w.price || rc.CompletionTokens != uint64(ref.usage.CompletionTokens) || rc.PromptTokens != uint64(ref.usage.PromptTokens) {
			t.Errorf("job %d: receipt %+v; want price %+v, usage %+v", i, rc, w.price, ref.usage)
		}
		if r.cost != rc.Paid {
			t.Errorf("job %d: CostNanoTON %d, receipt paid %d", i, r.cost, rc.Paid)
		}
		perWorker[r.worker] = append(perWorker[r.worker], rc)
	}
	checkBalances(t, f, perWorker)
	if len(perWorker) < 2 {
		t.Errorf("all %d jobs went to one worker; selection should spread them", jobs)
	}
	for p, rcs := range perWorker {
		t.Logf("worker %s: %d jobs", p.ShortString(), len(rcs))
	}
	// A worker that has served jobs advertises its measured medians.
	for _, w := range f.workers {
		if len(perWorker[w.node.Host.ID()]) == 0 {
			continue
		}
		w.svc.Republish()
		deadline := time.Now().Add(5 * time.Second)
		for {
			ad := w.svc.Ad()
			if ad != nil && ad.Models[0].TTFT > 0 && ad.Models[0].TimePerToken > 0 {
				t.Logf("worker %s advertises p50 TTFT %s, time per token %s", w.node.Host.ID().ShortString(), ad.Models[0].TTFT, ad.Models[0].TimePerToken)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("worker %s served jobs but its ad carries no measured latency: %+v", w.node.Host.ID().ShortString(), ad)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// TestNetFailoverLlama kills the worker serving a stream mid-way: the caller's
// stream completes on another worker, the killed one is paid exactly for the
// tokens it delivered (the client pays per token here), the other for its part.
func TestNetFailoverLlama(t *testing.T) {
	noLeaks(t)
	armed := &atomic.Bool{}
	armed.Store(true)
	stalled := make(chan int, 1)
	const after = 10
	f := newNetFixture(t, 3, market.RunOptions{PayEvery: 1}, func(_ int, b runtime.Backend) runtime.Backend {
		return &stallBackend{Backend: b, after: after, armed: armed, stalled: stalled}
	})
	req := netRequest(3)
	req.MaxTokens = 40
	s, err := f.cs.Generate(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ns := s.(*service.NetStream)
	first := f.byPeer[ns.Worker()]
	got := recvTokens(t, s, after)
	if n := <-stalled; n != got.tokens {
		t.Fatalf("worker stalled after %d tokens, client got %d", n, got.tokens)
	}
	prefix := got.text
	want, err := market.Cost(market.Price{Completion: first.price.Completion}, 0, after)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the voucher for the delivered tokens", func() bool {
		b, _ := first.payee.Balance(first.channel)
		return b == want
	})
	f.kill(first)

	rest, err := drain(s)
	if err != nil {
		t.Fatalf("stream after the kill: %v", err)
	}
	got.text += rest.text
	got.tokens += rest.tokens
	as := ns.Attempts()
	if len(as) != 2 || as[0].Err == nil || as[1].Err != nil || as[0].Candidate.Peer != first.node.Host.ID() {
		t.Fatalf("attempts %+v; want the killed worker's failed one, then a finished one", as)
	}
	second := f.byPeer[as[1].Candidate.Peer]
	if as[0].Receipt.CompletionTokens != after || as[0].Receipt.Paid != want {
		t.Errorf("killed worker's receipt: %d tokens, paid %d; want %d, %d", as[0].Receipt.CompletionTokens, as[0].Receipt.Paid, after, want)
	}
	// The second worker continued after the delivered text: its part equals what
	// its backend gives for the continuation.
	cont := req
	cont.Continuation = prefix
	cont.MaxTokens = req.MaxTokens - after
	ref := direct(t, second.raw, cont)
	if got.text != prefix+ref.text || got.tokens != after+ref.usage.CompletionTokens {
		t.Errorf("joined answer %q (%d tokens); want %q + %q (%d)", got.text, got.tokens, prefix, ref.text, after+ref.usage.CompletionTokens)
	}
	whole := direct(t, second.raw, req)
	t.Logf("answer across the failover equals the uninterrupted one: %v", whole.text == got.text)
	if ns.CostNanoTON() != as[0].Receipt.Paid+as[1].Receipt.Paid {
		t.Errorf("CostNanoTON %d; want %d + %d", ns.CostNanoTON(), as[0].Receipt.Paid, as[1].Receipt.Paid)
	}
	checkBalances(t, f, map[peer.ID][]market.Receipt{
		first.node.Host.ID(): {as[0].Receipt}, second.node.Host.ID(): {as[1].Receipt},
	})
	if errors.Is(as[0].Err, market.ErrAttestation) {
		t.Errorf("first attempt failed on attestation, not the kill: %v", as[0].Err)
	}
}

// TestNetColdBookDHT runs a job from a client whose ad book is empty: it finds
// the workers through their DHT provider records and pays the channel bound to
// the peer, the job's Accept giving the price and the attestation the TEE.
func TestNetColdBookDHT(t *testing.T) {
	noLeaks(t)
	f := newNetFixture(t, 2, market.RunOptions{}, nil)
	ctx := context.Background()
	waitFor(t, 20*time.Second, "both workers' provider records", func() bool {
		fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		ais, _ := f.client.FindProviders(fctx, netModel, 8)
		return len(ais) == 2
	})
	cs := coldClient(t, f)
	req := netRequest(5)
	s, err := cs.Generate(ctx, req)
	if err != nil {
		t.Fatalf("generate on a cold book: %v", err)
	}
	ans, err := drain(s)
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	ns := s.(*service.NetStream)
	as := ns.Attempts()
	if len(as) != 1 || as[0].Err != nil || as[0].Candidate.Ad != nil {
		t.Fatalf("attempts %+v; want one clean attempt on a worker found in the DHT, without an ad", as)
	}
	w := f.byPeer[as[0].Candidate.Peer]
	if ref := direct(t, w.raw, req); ans.text != ref.text || ans.usage != ref.usage {
		t.Errorf("answer %q %+v; want %q %+v", ans.text, ans.usage, ref.text, ref.usage)
	}
	if as[0].Receipt.Price != w.price || ns.Header().Get("X-Cocoon-TEE") != tee.Sim.Tier() {
		t.Errorf("price %+v from Accept, tee %q; want %+v, %q", as[0].Receipt.Price, ns.Header().Get("X-Cocoon-TEE"), w.price, tee.Sim.Tier())
	}
	checkBalances(t, f, map[peer.ID][]market.Receipt{as[0].Candidate.Peer: {as[0].Receipt}})

	// A response format goes only where an ad offers it: a cold client waits
	// for the ads of the providers it connects to, instead of answering that
	// no worker offers the model.
	cs = coldClient(t, f)
	freq := netRequest(6)
	freq.MaxTokens = 200 // room for the whole object
	freq.Format = &runtime.ResponseFormat{Type: runtime.FormatJSONSchema, Name: "pick", Schema: json.RawMessage(netSchema), Strict: true}
	s, err = cs.Generate(ctx, freq)
	if err != nil {
		t.Fatalf("generate with a response format on a cold book: %v", err)
	}
	fans, err := drain(s)
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := checkNetSchema(fans.text); err != nil {
		t.Fatalf("answer %q: %v", fans.text, err)
	}
	if as := s.(*service.NetStream).Attempts(); len(as) != 1 || as[0].Candidate.Ad == nil || !as[0].Candidate.Offer.StructuredOutput {
		t.Fatalf("attempts %+v; want one on a worker whose ad offers structured output", as)
	}
}

// coldClient starts a new client on f's network with an empty ad book: linked
// to every node, connected only to f's client, bound to f's channels.
func coldClient(t *testing.T, f *netFixture) *service.Client {
	t.Helper()
	ctx := context.Background()
	h, err := f.mn.GenPeer()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.mn.LinkAll(); err != nil {
		t.Fatal(err)
	}
	nd, err := p2p.New(ctx, p2p.Config{Host: h, DHTMode: p2p.DHTServer, Logger: f.log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nd.Close() })
	if err := nd.Host.Connect(ctx, peer.AddrInfo{ID: f.client.Host.ID(), Addrs: f.client.Host.Addrs()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the new client's routing table", func() bool { return nd.RoutingTableSize() > 0 })
	payers := service.NewPayers(f.payer)
	for _, w := range f.workers {
		payers.Bind(w.node.Host.ID(), w.channel)
	}
	cs, err := service.NewClient(service.ClientConfig{
		Models: []string{netModel},
		Node:   nd, Payer: payers.Payer, Verifier: f.verifier,
		Policy: market.Policy{TEE: []tee.Kind{tee.Sim}}, Logger: f.log,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	if n := len(cs.Book().All()); n != 0 {
		t.Fatalf("new client's book holds %d ads; the test needs it cold", n)
	}
	return cs
}

// BenchmarkNetGenerate measures one streamed completion (greedy, 32 tokens) on the
// shared llama.cpp model: directly on the backend (the baseline), and bought over
// the overlay (mocknet, one worker: selection, job stream, sim attestation cached
// per connection, vouchers on a dev-ledger channel), paying per half credit window
// and per token.
func BenchmarkNetGenerate(b *testing.B) {
	seed := uint64(1)
	req := runtime.Request{Model: netModel, Prompt: "once upon a time", MaxTokens: 32, Seed: &seed}
	run := func(b *testing.B, be runtime.Backend) {
		tokens := 0
		b.ResetTimer()
		for b.Loop() {
			s, err := be.Generate(context.Background(), req)
			if err != nil {
				b.Fatal(err)
			}
			a, err := drain(s)
			s.Close()
			if err != nil {
				b.Fatal(err)
			}
			tokens += a.tokens
		}
		b.ReportMetric(float64(tokens)/b.Elapsed().Seconds(), "tokens/s")
	}
	b.Run("direct", func(b *testing.B) { run(b, llamaBackend(b)) })
	b.Run("overlay", func(b *testing.B) { run(b, newNetFixture(b, 1, market.RunOptions{}, nil).cs) })
	b.Run("overlay-pay-per-token", func(b *testing.B) {
		run(b, newNetFixture(b, 1, market.RunOptions{PayEvery: 1}, nil).cs)
	})
}

// TestNetPayPerTokenBackToBack pays every token (many vouchers in flight against
// the chunks) on jobs that follow each other, some concurrently, on one worker:
// no job may deadlock (mocknet's synchronous pipes did, before workers read
// ahead), every job is paid in full (a voucher overtaking another job's would be
// refused), and the balance is exactly the cost of all of them.
func TestNetPayPerTokenBackToBack(t *testing.T) {
	noLeaks(t)
	f := newNetFixture(t, 1, market.RunOptions{PayEvery: 1}, nil)
	w := f.workers[0]
	const jobs = 8
	rcs := make([][]market.Receipt, jobs)
	var wg sync.WaitGroup
	for i := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := netRequest(i)
			req.MaxTokens = 40
			s, err := f.cs.Generate(context.Background(), req)
			if err != nil {
				t.Errorf("job %d: %v", i, err)
				return
			}
			_, err = drain(s)
			s.Close()
			if err != nil {
				t.Errorf("job %d: %v", i, err)
				return
			}
			for _, a := range s.(*service.NetStream).Attempts() {
				rcs[i] = append(rcs[i], a.Receipt)
			}
		}()
		if i%2 == 1 {
			wg.Wait() // pairs run concurrently, pairs one after the other
		}
	}
	wg.Wait()
	var all []market.Receipt
	for i, r := range rcs {
		if len(r) != 1 || r[0].CompletionTokens == 0 {
			t.Fatalf("job %d: receipts %+v; want one with tokens", i, r)
		}
		all = append(all, r...)
	}
	checkBalances(t, f, map[peer.ID][]market.Receipt{w.node.Host.ID(): all})
}
