package service_test

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"

	"github.com/cocoon-network/cocoon/enclave"
	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/internal/testmodel"
	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/market/service"
	"github.com/cocoon-network/cocoon/p2p"
	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/llamacpp"
	"github.com/cocoon-network/cocoon/settle"
	"github.com/cocoon-network/cocoon/settle/devledger"
)

const netModel = "stories260K"

// netLogger keeps the services' logs out of the test output unless COCOON_TEST_LOG=1.
func netLogger() *slog.Logger {
	if os.Getenv("COCOON_TEST_LOG") == "1" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// llamaBackend loads the shared test model with one thread.
func llamaBackend(t testing.TB) *llamacpp.Backend { return testmodel.Backend(t, 1, netModel) }

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
	payers   *service.Payers
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
	connectMesh(t, f.mn, nodes)
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

	verifier, err := enclave.NewVerifier(enclave.Policy{AllowSim: true, AllowedKinds: []tee.Kind{tee.Sim}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.verifier, f.log = verifier, log
	// The client first, so that the workers' first ads find its validator.
	f.payers = service.NewPayers(f.payer)
	f.obs = &recorder{}
	f.cs, err = service.NewClient(service.ClientConfig{
		Models:   []string{netModel},
		Observer: f.obs,
		Node:     f.client, Payer: f.payers.Payer, Verifier: verifier,
		Policy:  market.Policy{TEE: []tee.Kind{tee.Sim}},
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
			Node:     nodes[i], Backend: b, Payee: service.NewPayees(payee, nil, 0),
			Prices:     map[string]market.Price{netModel: w.price},
			Settlement: market.Settlement{WalletAddress: settle.Friendly(ww.Address(ledger.GlobalID())), ChannelKey: ww.PublicKey(), MinDeposit: 1_000_000},
			TEE:        market.TEE{Kind: tee.Sim, Measurement: enclave.DefaultSimMeasurement[:]},
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

// recvTokens reads s until at least n tokens have come, before a worker is
// killed mid-stream.
func recvTokens(t *testing.T, s runtime.Stream, n int) answer {
	t.Helper()
	var got answer
	for got.tokens < n {
		d, err := s.Recv()
		if err != nil {
			t.Fatalf("recv before the kill: %v", err)
		}
		got.text += d.Text
		got.tokens += d.Tokens
	}
	return got
}

// kill stops w as a dying process does: its links are cut first, so the
// client sees the connection drop (no Cancel), then its service and node stop.
func (f *netFixture) kill(w *netWorker) {
	for _, p := range f.mn.Peers() {
		if p != w.node.Host.ID() {
			f.mn.UnlinkPeers(p, w.node.Host.ID())
			f.mn.DisconnectPeers(p, w.node.Host.ID())
		}
	}
	w.svc.Close()
	w.node.Close()
	w.killed = true
}

// connectMesh links and connects every node of mn to every other and waits
// until each has a DHT routing table.
func connectMesh(t testing.TB, mn mocknet.Mocknet, nodes []*p2p.Node) {
	t.Helper()
	if err := mn.LinkAll(); err != nil {
		t.Fatal(err)
	}
	if err := mn.ConnectAllButSelf(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "DHT routing tables", func() bool {
		for _, nd := range nodes {
			if nd.RoutingTableSize() == 0 {
				return false
			}
		}
		return true
	})
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
		// The client's answer waits for neither side's disk, and the worker
		// takes the final voucher after the client has returned: wait for it.
		var bal uint64
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if err := w.payee.Flush(); err != nil {
				t.Fatal(err)
			}
			var err error
			if bal, err = w.payee.Balance(w.channel); err != nil {
				t.Fatal(err)
			}
			if bal >= cost || time.Now().After(deadline) {
				break
			}
		}
		if err := f.payer.Flush(); err != nil {
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
