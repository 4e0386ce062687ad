package service_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	goruntime "runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"

	"github.com/cocoon-network/cocoon/enclave"
	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/market/service"
	"github.com/cocoon-network/cocoon/p2p"
	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/llamacpp"
	"github.com/cocoon-network/cocoon/settle"
	"github.com/cocoon-network/cocoon/settle/devledger"
)

const netModel = "stories260K"

// netQuiet keeps the services' logs out of the test output unless COCOON_TEST_LOG=1.
func netLogger() *slog.Logger {
	if os.Getenv("COCOON_TEST_LOG") == "1" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// repoRoot is the repository root, found from this file's path.
func repoRoot() string {
	_, file, _, _ := goruntime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// llamaBackend loads the shared test model with one thread. A missing model or
// library fails the test: `make test` installs the libraries first.
func llamaBackend(t testing.TB) *llamacpp.Backend {
	t.Helper()
	lib := os.Getenv(llamacpp.LibEnv)
	if lib == "" {
		lib = filepath.Join(repoRoot(), ".cache", "llama", "lib")
	}
	model := os.Getenv("COCOON_TEST_MODEL")
	if model == "" {
		model = filepath.Join(repoRoot(), "..", "shared", "models", "stories260K.gguf")
	}
	b, err := llamacpp.New(llamacpp.Config{
		LibDir: lib, Models: []runtime.ModelConfig{{Path: model, ID: netModel}},
		Threads: 1, Parallel: 1, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatalf("llamacpp backend (run `make deps`; COCOON_TEST_MODEL=%s): %v", model, err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// netWorker is one worker of the test network with its channel from the client.
type netWorker struct {
	node    *p2p.Node
	raw     *llamacpp.Backend // what the worker runs, for direct reference answers
	backend runtime.Backend   // what the service serves (raw behind slots, maybe wrapped)
	svc     *service.Worker
	payee   *settle.Payee
	channel settle.ChannelID
	price   market.Price
	killed  bool
	obs     *recorder
}

type netFixture struct {
	t        testing.TB
	mn       mocknet.Mocknet
	client   *p2p.Node
	cs       *service.Client
	payer    *settle.Payer
	payers   *service.SettlePayers
	verifier *enclave.Verifier
	log      *slog.Logger
	workers  []*netWorker
	byPeer   map[peer.ID]*netWorker
	obs      *recorder // the client's observer
}

const netDeposit = 2_000_000_000 // nanoTON per channel

// newNetFixture starts a client and n llama.cpp workers on a mocknet, each worker
// with a payment channel from the client opened on one dev ledger (simulated
// chain, not TON), sim TEE (not confidential). wrap, when set, wraps each
// worker's backend.
func newNetFixture(t testing.TB, n int, opt market.RunOptions, wrap func(i int, b runtime.Backend) runtime.Backend) *netFixture {
	t.Helper()
	ctx := context.Background()
	log := netLogger()
	f := &netFixture{t: t, mn: mocknet.New(), byPeer: map[peer.ID]*netWorker{}}
	t.Cleanup(func() { f.mn.Close() })

	nodes := make([]*p2p.Node, n+1)
	for i := range nodes {
		h, err := f.mn.GenPeer()
		if err != nil {
			t.Fatal(err)
		}
		nd, err := p2p.New(ctx, p2p.Config{Host: h, DHTMode: p2p.DHTServer, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if w := f.byPeer[nd.Host.ID()]; w == nil || !w.killed {
				nd.Close()
			}
		})
		nodes[i] = nd
	}
	if err := f.mn.LinkAll(); err != nil {
		t.Fatal(err)
	}
	if err := f.mn.ConnectAllButSelf(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "DHT routing tables", func() bool {
		for _, nd := range nodes {
			if nd.DHT.RoutingTable().Size() == 0 {
				return false
			}
		}
		return true
	})
	f.client = nodes[0]

	ledger, err := devledger.New(devledger.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	cw := newWallet(t)
	if _, err := ledger.Faucet(cw.Address(ledger.GlobalID()), uint64(n+1)*netDeposit+1_000_000_000); err != nil {
		t.Fatal(err)
	}
	cstore := openStore(t, "client")
	f.payer = cstore.Payer(cw)
	chain := settle.NewChain(ledger, cw)
	chain.Log = slog.New(slog.DiscardHandler)

	verifier, err := enclave.NewVerifier(enclave.Policy{AllowSim: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.verifier, f.log = verifier, log
	// The client first, so that the workers' first ads find its validator.
	f.payers = service.NewSettlePayers(f.payer)
	f.obs = &recorder{}
	f.cs, err = service.NewClient(service.ClientConfig{
		Observer: f.obs,
		Node:     f.client, Payer: f.payers.Payer, Verifier: verifier,
		Policy:  market.Policy{TEE: []market.TEEKind{market.TEESim}},
		Options: opt, Rand: rand.New(rand.NewPCG(7, 7)), Logger: log.With("client", 0),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.cs.Close() })
	for i := 1; i <= n; i++ {
		ww := newWallet(t)
		id, err := settle.NewChannelID()
		if err != nil {
			t.Fatal(err)
		}
		ch := settle.Channel{
			ID: id, ClientKey: cw.PublicKey(), WorkerKey: ww.PublicKey(),
			ClientAddr: cw.Address(ledger.GlobalID()), WorkerAddr: ww.Address(ledger.GlobalID()),
			Closing: settle.DefaultClosing,
		}
		if _, err := chain.Open(ctx, ch, netDeposit); err != nil {
			t.Fatalf("open channel to worker %d: %v", i, err)
		}
		st, err := settle.NewChain(ledger, ww).State(ctx, ch)
		if err != nil || st.Status != settle.StatusOpen {
			t.Fatalf("channel %d on the ledger: %v, %v", i, st, err)
		}
		if err := f.payer.AddChannel(ch, netDeposit); err != nil {
			t.Fatal(err)
		}
		wstore := openStore(t, fmt.Sprintf("worker%d", i))
		payee := wstore.Payee(ww)
		if err := payee.AddChannel(ch, st.Storage.BalanceA); err != nil { // the worker trusts the chain
			t.Fatal(err)
		}
		raw := llamaBackend(t)
		var b runtime.Backend = runtime.Limit(raw, 1, 0)
		if wrap != nil {
			b = wrap(i, b)
		}
		w := &netWorker{node: nodes[i], raw: raw, backend: b, payee: payee, channel: id,
			// Odd prices, different per worker, so rounding and attribution show.
			price: market.Price{Prompt: 300_000_001 + uint64(i)*7, Completion: 1_500_000_007 + uint64(i)*13},
			obs:   &recorder{}}
		w.svc, err = service.NewWorker(service.WorkerConfig{
			Observer: w.obs,
			Node:     nodes[i], Backend: b, Payee: service.SettlePayee{P: payee},
			Prices:     map[string]market.Price{netModel: w.price},
			Settlement: market.Settlement{WalletAddress: settle.Friendly(ww.Address(ledger.GlobalID())), ChannelKey: ww.PublicKey(), MinDeposit: 1_000_000},
			TEE:        market.TEE{Kind: market.TEESim, Measurement: enclave.DefaultSimMeasurement[:]},
			Attester:   enclave.NewSimAttester(nil, enclave.DefaultSimMeasurement, nil),
			Logger:     log.With("worker", i),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { w.svc.Close() })
		f.workers = append(f.workers, w)
		f.byPeer[nodes[i].Host.ID()] = w
	}
	waitFor(t, 30*time.Second, "every worker's ad in the client's book", func() bool {
		return len(f.cs.Book().ByModel(netModel)) == n
	})
	return f
}

func newWallet(t testing.TB) *settle.Wallet {
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return settle.NewWallet(key)
}

func openStore(t testing.TB, name string) *settle.Store {
	st, err := settle.OpenStore(filepath.Join(t.TempDir(), name+".db"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// answer is what a caller got from one stream.
type answer struct {
	text   string
	tokens int
	usage  runtime.Usage
	finish string
}

func drain(s runtime.Stream) (answer, error) {
	var a answer
	for {
		d, err := s.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return a, err
		}
		a.text += d.Text
		a.tokens += d.Tokens
	}
	a.usage, a.finish = s.Usage(), s.FinishReason()
	return a, nil
}

// direct runs req on a backend directly, the reference a networked answer must equal.
func direct(t testing.TB, b runtime.Backend, req runtime.Request) answer {
	t.Helper()
	s, err := b.Generate(context.Background(), req)
	if err != nil {
		t.Fatalf("direct generate: %v", err)
	}
	defer s.Close()
	a, err := drain(s)
	if err != nil {
		t.Fatalf("direct generate: %v", err)
	}
	return a
}

var netPrompts = []string{
	"once upon a time", "the little dog", "Lily went to the park", "one day a cat",
	"Tom had a red ball", "the sun was hot", "a big bird", "mom said",
	"the girl saw a tree", "Ben and his friend",
}

func netRequest(i int) runtime.Request {
	seed := uint64(1000 + i)
	req := runtime.Request{Model: netModel, MaxTokens: 24 + i%3*8, Temperature: 0, Seed: &seed}
	p := netPrompts[i%len(netPrompts)]
	if i%2 == 0 {
		req.Messages = []runtime.Message{{Role: "user", Content: p}}
	} else {
		req.Prompt = p
	}
	return req
}

// TestNetMarketLlama buys 20 streamed completions from 3 llama.cpp workers over
// libp2p (mocknet): each answer equals the worker's backend's own answer, and each
// worker's provable channel balance equals the cost of what it delivered.
func TestNetMarketLlama(t *testing.T) {
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
		if r.tee != enclave.KindSim.Tier() {
			t.Errorf("job %d: X-Cocoon-TEE %q; want %q", i, r.tee, enclave.KindSim.Tier())
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

// checkBalances checks that every worker's provable balance is the cost of the
// tokens it delivered (computed here from the receipts with market.Cost), what the
// client's receipts say it paid, and what the client's channel state says it sent.
func checkBalances(t *testing.T, f *netFixture, perWorker map[peer.ID][]market.Receipt) {
	t.Helper()
	for _, w := range f.workers {
		var cost, paid uint64
		for _, rc := range perWorker[w.node.Host.ID()] {
			c, err := market.Cost(rc.Price, rc.PromptTokens, rc.CompletionTokens)
			if err != nil {
				t.Fatal(err)
			}
			cost += c
			paid += rc.Paid
		}
		bal, err := w.payee.Balance(w.channel)
		if err != nil {
			t.Fatal(err)
		}
		rec, err := f.payer.Latest(w.channel)
		if err != nil {
			t.Fatal(err)
		}
		if bal != cost || paid != cost || rec.Sent != cost {
			t.Errorf("worker %s: balance %d, cost of delivered tokens %d, client receipts paid %d, channel sent %d; want all equal",
				w.node.Host.ID().ShortString(), bal, cost, paid, rec.Sent)
		}
		t.Logf("worker %s: balance %d nanoTON = cost of delivered tokens", w.node.Host.ID().ShortString(), bal)
	}
}

// stallBackend stalls the first generation it serves after `after` completion
// tokens, until its context ends: a worker dying mid-stream.
type stallBackend struct {
	runtime.Backend
	after   int
	armed   *atomic.Bool // shared by all workers: only one job stalls
	stalled chan int     // receives the tokens delivered before the stall
}

func (b *stallBackend) Generate(ctx context.Context, req runtime.Request) (runtime.Stream, error) {
	s, err := b.Backend.Generate(ctx, req)
	if err != nil || !b.armed.CompareAndSwap(true, false) {
		return s, err
	}
	return &stallStream{Stream: s, b: b, ctx: ctx}, nil
}

type stallStream struct {
	runtime.Stream
	b      *stallBackend
	ctx    context.Context
	tokens int
}

func (s *stallStream) Recv() (runtime.Delta, error) {
	if s.tokens >= s.b.after {
		s.b.stalled <- s.tokens
		<-s.ctx.Done()
		return runtime.Delta{}, s.ctx.Err()
	}
	d, err := s.Stream.Recv()
	s.tokens += d.Tokens
	return d, err
}

// TestNetFailoverLlama kills the worker serving a stream mid-way: the caller's
// stream completes on another worker, the killed one is paid exactly for the
// tokens it delivered (the client pays per token here), the other for its part.
func TestNetFailoverLlama(t *testing.T) {
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
	var got answer
	for got.tokens < after {
		d, err := s.Recv()
		if err != nil {
			t.Fatalf("recv before the kill: %v", err)
		}
		got.text += d.Text
		got.tokens += d.Tokens
	}
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
	// Kill: cut the links first, so the client sees the connection drop as when a
	// process dies (no Cancel), then stop the worker.
	for _, p := range f.mn.Peers() {
		if p != first.node.Host.ID() {
			f.mn.UnlinkPeers(p, first.node.Host.ID())
			f.mn.DisconnectPeers(p, first.node.Host.ID())
		}
	}
	first.svc.Close()
	first.node.Close()
	first.killed = true

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
	f := newNetFixture(t, 2, market.RunOptions{}, nil)
	ctx := context.Background()
	waitFor(t, 20*time.Second, "both workers' provider records", func() bool {
		fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		ais, _ := f.client.FindProviders(fctx, netModel, 8)
		return len(ais) == 2
	})
	// A new client linked to everyone but connected only to node 0.
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
	waitFor(t, 10*time.Second, "the new client's routing table", func() bool { return nd.DHT.RoutingTable().Size() > 0 })
	payers := service.NewSettlePayers(f.payer)
	for _, w := range f.workers {
		payers.Bind(w.node.Host.ID(), w.channel)
	}
	cs, err := service.NewClient(service.ClientConfig{
		Node: nd, Payer: payers.Payer, Verifier: f.verifier,
		Policy: market.Policy{TEE: []market.TEEKind{market.TEESim}}, Logger: f.log,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	if n := len(cs.Book().All()); n != 0 {
		t.Fatalf("new client's book holds %d ads; the test needs it cold", n)
	}
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
	if as[0].Receipt.Price != w.price || ns.Header().Get("X-Cocoon-TEE") != enclave.KindSim.Tier() {
		t.Errorf("price %+v from Accept, tee %q; want %+v, %q", as[0].Receipt.Price, ns.Header().Get("X-Cocoon-TEE"), w.price, enclave.KindSim.Tier())
	}
	checkBalances(t, f, map[peer.ID][]market.Receipt{as[0].Candidate.Peer: {as[0].Receipt}})
}

// TestNetAdsValidator publishes bad ads from a worker's node: the client's topic
// validator drops and counts them, and the book keeps the worker's true ad.
func TestNetAdsValidator(t *testing.T) {
	f := newNetFixture(t, 2, market.RunOptions{}, nil)
	ctx := context.Background()
	w1, w2 := f.workers[0], f.workers[1]
	good := *w2.svc.Ad()
	good.Seq += 1000
	forged, err := good.Encode() // w2's ad, sent by w1
	if err != nil {
		t.Fatal(err)
	}
	stale := *w1.svc.Ad()
	stale.Seq += 1000
	stale.IssuedAt = time.Now().Add(-time.Hour)
	expired, err := stale.Encode()
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range [][]byte{{0xff, 0xff, 0xff}, forged, expired} {
		if err := w1.node.PublishAd(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "the bad ads dropped", func() bool {
		st := f.cs.Book().Stats()
		return st.Dropped[market.DropMalformed] >= 1 && st.Dropped[market.DropSender] >= 1 && st.Dropped[market.DropExpired] >= 1
	})
	if ad, ok := f.cs.Book().Get(w2.node.Host.ID()); !ok || ad.Seq == good.Seq {
		t.Errorf("w2's book entry %+v; want its own ad, not the forged one", ad)
	}
	ms, err := f.cs.ListModels(ctx)
	if err != nil || len(ms) != 1 || ms[0].ID != netModel || ms[0].Extra["workers"] != 2 {
		t.Fatalf("ListModels = %+v, %v; want %s offered by 2 workers", ms, err, netModel)
	}
	if s := f.cs.Summaries()[0]; s.MinPrice != (market.Price{Prompt: w1.price.Prompt, Completion: w1.price.Completion}) || len(s.TEE) != 1 || s.TEE[0] != market.TEESim {
		t.Errorf("summary %+v; want the lowest price %+v and tee sim", s, w1.price)
	}
}

// TestNetAdOnChange checks that a worker re-publishes its ad when its free slots
// change: a job holding the only slot shows as 0 free, and 1 again once it ends.
func TestNetAdOnChange(t *testing.T) {
	armed := &atomic.Bool{}
	armed.Store(true)
	stalled := make(chan int, 1)
	f := newNetFixture(t, 1, market.RunOptions{}, func(_ int, b runtime.Backend) runtime.Backend {
		return &stallBackend{Backend: b, after: 2, armed: armed, stalled: stalled}
	})
	w := f.workers[0]
	free := func() uint32 {
		ad, ok := f.cs.Book().Get(w.node.Host.ID())
		if !ok {
			return 99
		}
		return ad.Capacity.SlotsFree
	}
	if free() != 1 {
		t.Fatalf("idle worker advertises %d free slots; want 1", free())
	}
	req := netRequest(1)
	s, err := f.cs.Generate(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	<-stalled
	waitFor(t, 5*time.Second, "an ad with no free slot", func() bool { return free() == 0 })
	s.Close()
	waitFor(t, 5*time.Second, "an ad with the slot free again", func() bool { return free() == 1 })
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
