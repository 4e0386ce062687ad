package service_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	"github.com/xssnick/tonutils-go/address"

	"github.com/cocoon-network/cocoon/enclave"
	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/market/service"
	"github.com/cocoon-network/cocoon/p2p"
	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/settle"
	"github.com/cocoon-network/cocoon/settle/devledger"
)

// chanFixture is a client and one worker on a mocknet, sharing a dev ledger
// (simulated chain, not TON), sim TEE (not confidential). The worker's settle
// store starts empty: it knows no channel, only how to read them from the chain.
type chanFixture struct {
	ledger *devledger.Ledger
	client *settle.Wallet
	chain  *settle.OnChain
	payer  *settle.Payer
	payers *service.Payers
	cs     *service.Client
	worker *settle.Wallet
	wnode  *p2p.Node
	payee  *settle.Payee
	price  market.Price
}

func newChanFixture(t *testing.T) *chanFixture {
	t.Helper()
	ctx := context.Background()
	log := netLogger()
	mn := mocknet.New()
	t.Cleanup(func() { mn.Close() })
	nodes := make([]*p2p.Node, 2)
	for i := range nodes {
		h, err := mn.GenPeer()
		if err != nil {
			t.Fatal(err)
		}
		nd, err := p2p.New(ctx, p2p.Config{Host: h, DHTMode: p2p.DHTServer, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nd.Close() })
		nodes[i] = nd
	}
	connectMesh(t, mn, nodes)
	ledger, err := devledger.New(devledger.WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	f := &chanFixture{ledger: ledger, client: newWallet(t), worker: newWallet(t), wnode: nodes[1],
		price: market.Price{Prompt: 300_000_001, Completion: 1_500_000_007}}
	if _, err := ledger.Faucet(f.client.Address(ledger.GlobalID()), 3*netDeposit+1_000_000_000); err != nil {
		t.Fatal(err)
	}
	f.chain = settle.NewChain(ledger, f.client)
	f.chain.Log = log
	f.payer = openStore(t, "client").Payer(f.client)
	f.payee = openStore(t, "worker").Payee(f.worker)

	verifier, err := enclave.NewVerifier(enclave.Policy{AllowSim: true, AllowedKinds: []tee.Kind{tee.Sim}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.payers = service.NewPayers(f.payer)
	f.cs, err = service.NewClient(service.ClientConfig{
		Models: []string{netModel},
		Node:   nodes[0], Payer: f.payers.Payer, Verifier: verifier, MaxAttempts: 1,
		Policy: market.Policy{TEE: []tee.Kind{tee.Sim}}, Logger: log.With("client", 0),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.cs.Close() })
	svc, err := service.NewWorker(service.WorkerConfig{
		Node: nodes[1], Backend: wordBackend{words: chanWords}, Payee: service.NewPayees(f.payee, service.LedgerChannels(ledger), 0),
		Prices:     map[string]market.Price{netModel: f.price},
		Settlement: market.Settlement{WalletAddress: settle.Friendly(f.worker.Address(ledger.GlobalID())), ChannelKey: f.worker.PublicKey(), MinDeposit: 1_000_000},
		TEE:        market.TEE{Kind: tee.Sim, Measurement: enclave.DefaultSimMeasurement[:]},
		Attester:   enclave.NewSimAttester(nil, enclave.DefaultSimMeasurement, nil),
		Logger:     log.With("worker", 1),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	waitFor(t, 30*time.Second, "the worker's ad in the client's book", func() bool {
		return len(f.cs.Book().ByModel(netModel)) == 1
	})
	return f
}

// open opens a channel from the client to workerKey's owner on the ledger and
// records it in the client's store only.
func (f *chanFixture) open(t *testing.T, worker *settle.Wallet, deploy bool) settle.Channel {
	t.Helper()
	id, err := settle.NewChannelID()
	if err != nil {
		t.Fatal(err)
	}
	ch := settle.Channel{
		ID: id, ClientKey: f.client.PublicKey(), WorkerKey: worker.PublicKey(),
		ClientAddr: f.client.Address(f.ledger.GlobalID()), WorkerAddr: worker.Address(f.ledger.GlobalID()),
		Closing: settle.DefaultClosing,
	}
	if deploy {
		if _, err := f.chain.Open(context.Background(), ch, netDeposit); err != nil {
			t.Fatalf("open channel: %v", err)
		}
	}
	if err := f.payer.AddChannel(ch, netDeposit); err != nil {
		t.Fatal(err)
	}
	return ch
}

// chanWords is the worker's answer to every job, one token a word.
var chanWords = strings.Fields("the worker learnt the channel from the chain and was paid for every word")

func chanRequest() runtime.Request {
	seed := uint64(7)
	return runtime.Request{Model: netModel, Messages: []runtime.Message{{Role: "user", Content: "tell me about channels"}}, Seed: &seed}
}

// TestNetChannelLearntFromChain: a client opens a channel on the ledger that the
// worker never heard of; the worker learns it from the contract when the client
// names it in Open, and the first job is served and paid exactly.
func TestNetChannelLearntFromChain(t *testing.T) {
	noLeaks(t)
	f := newChanFixture(t)
	ch := f.open(t, f.worker, true)
	if _, err := f.payee.Latest(ch.ID); !errors.Is(err, settle.ErrUnknownChannel) {
		t.Fatalf("worker's store before the job: %v; want unknown channel", err)
	}
	for job := 1; job <= 2; job++ { // the second job finds the channel known
		s, err := f.cs.Generate(context.Background(), chanRequest())
		if err != nil {
			t.Fatalf("job %d: generate: %v", job, err)
		}
		ans, err := drain(s)
		s.Close()
		if err != nil {
			t.Fatalf("job %d: %v", job, err)
		}
		if ans.usage.CompletionTokens == 0 || ans.tokens != ans.usage.CompletionTokens {
			t.Fatalf("job %d: answer %+v", job, ans)
		}
	}
	rec, err := f.payee.Latest(ch.ID)
	if err != nil {
		t.Fatalf("worker's store after the jobs: %v", err)
	}
	if rec.Deposit != netDeposit || !rec.Channel.ClientKey.Equal(ch.ClientKey) {
		t.Fatalf("learnt record: deposit %d, client key %x; want %d, %x", rec.Deposit, rec.Channel.ClientKey, netDeposit, ch.ClientKey)
	}
	// Two identical jobs: each costs the same, computed here from the tokens.
	one, err := market.Cost(f.price, uint64(len(strings.Fields(chanRequest().Messages[0].Content))), uint64(len(chanWords)))
	if err != nil {
		t.Fatal(err)
	}
	// The client's answer waits for neither side's disk: the worker takes the
	// last voucher after the client has returned.
	waitFor(t, 5e9, "the worker's balance", func() bool {
		bal, err := f.payee.Balance(ch.ID)
		return err == nil && bal >= 2*one
	})
	bal, err := f.payee.Balance(ch.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.payer.Flush(); err != nil {
		t.Fatal(err)
	}
	crec, err := f.payer.Latest(ch.ID)
	if err != nil {
		t.Fatal(err)
	}
	if bal != 2*one || crec.Sent != 2*one {
		t.Fatalf("worker balance %d, client sent %d; want the cost of two jobs, %d", bal, crec.Sent, 2*one)
	}
	t.Logf("worker learnt channel %s from the ledger; balance %d nanoTON = 2 × %d", ch.ID, bal, one)
}

// TestNetChannelForeignRefused: a client that names a channel whose worker key
// is someone else's, or a channel that is not on the chain, is rejected with
// RejectNoChannel before any work, and pays nothing.
func TestNetChannelForeignRefused(t *testing.T) {
	noLeaks(t)
	f := newChanFixture(t)
	for _, tc := range []struct {
		name string
		ch   func() settle.Channel
	}{
		{"another worker's key", func() settle.Channel { return f.open(t, newWallet(t), true) }},
		{"not on the chain", func() settle.Channel { return f.open(t, f.worker, false) }},
	} {
		ch := tc.ch()
		f.payers.Bind(f.wnode.Host.ID(), ch.ID)
		s, err := f.cs.Generate(context.Background(), chanRequest())
		if err == nil {
			_, err = drain(s)
			s.Close()
		}
		var rej *market.RejectError
		if !errors.As(err, &rej) || rej.Code != market.RejectNoChannel {
			t.Fatalf("%s: err %v; want a reject with code %v", tc.name, err, market.RejectNoChannel)
		}
		if rec, err := f.payer.Latest(ch.ID); err != nil || rec.Sent != 0 || rec.Seqno != 0 {
			t.Fatalf("%s: client channel %+v, %v; want nothing sent", tc.name, rec, err)
		}
		if _, err := f.payee.Latest(ch.ID); !errors.Is(err, settle.ErrUnknownChannel) {
			t.Fatalf("%s: worker stored the channel: %v", tc.name, err)
		}
		t.Logf("%s: %v", tc.name, fmt.Sprint(err))
	}
}

// TestPayeesLearn checks each refusal of learning a channel on states a lookup may
// report, and that a known channel's deposit follows the chain.
func TestPayeesLearn(t *testing.T) {
	noLeaks(t)
	ctx := context.Background()
	client, worker := newWallet(t), newWallet(t)
	payee := openStore(t, "worker").Payee(worker)
	// learn opens a job on the channel at addr, as a client's Open names it.
	learn := func(lookup service.ChannelLookup, addr string) error {
		a, err := service.NewPayees(payee, lookup, 0).Open(ctx, market.NewJobID(), addr)
		if err == nil {
			a.Close()
		}
		return err
	}
	ch, addr := devChannel(t, client, worker)
	id := ch.ID
	// state is what the fake chain reports for addr.
	state := func(status settle.ChannelStatus, balanceA uint64) service.ChannelLookup {
		return func(_ context.Context, a *address.Address) (settle.Channel, *settle.ChannelState, error) {
			if !a.Equals(addr) {
				return settle.Channel{}, nil, fmt.Errorf("no account at %s", a)
			}
			st := ch.InitialStorage()
			st.Inited, st.BalanceA = status != settle.StatusUninitialized, balanceA
			return ch, &settle.ChannelState{Status: status, Storage: &st}, nil
		}
	}
	other := worker.Address(devledger.GlobalID).String()
	for _, tc := range []struct {
		name   string
		lookup service.ChannelLookup
		addr   string
	}{
		{"uninitialised", state(settle.StatusUninitialized, netDeposit), addr.String()},
		{"closing", state(settle.StatusClosureStarted, netDeposit), addr.String()},
		{"unfunded", state(settle.StatusOpen, 0), addr.String()},
		{"no contract", state(settle.StatusOpen, netDeposit), other},
		{"bad address", state(settle.StatusOpen, netDeposit), "nowhere"},
	} {
		if err := learn(tc.lookup, tc.addr); err == nil {
			t.Errorf("%s: learnt", tc.name)
		}
		if _, err := payee.Latest(id); !errors.Is(err, settle.ErrUnknownChannel) {
			t.Fatalf("%s: stored: %v", tc.name, err)
		}
	}
	if err := learn(state(settle.StatusOpen, netDeposit), addr.String()); err != nil {
		t.Fatalf("open, funded: %v", err)
	}
	if err := learn(state(settle.StatusOpen, 2*netDeposit), addr.String()); err != nil {
		t.Fatalf("again, deposit raised: %v", err)
	}
	if r, err := payee.Latest(id); err != nil || r.Deposit != 2*netDeposit {
		t.Fatalf("record %+v, %v; want deposit %d", r, err, 2*netDeposit)
	}
	// A lookup that reports a channel paying another key is refused by the
	// payee's own key check, whatever the lookup says.
	foreign := ch
	foreign.WorkerKey = client.PublicKey()
	lie := func(context.Context, *address.Address) (settle.Channel, *settle.ChannelState, error) {
		st := foreign.InitialStorage()
		st.Inited, st.BalanceA = true, netDeposit
		return foreign, &settle.ChannelState{Status: settle.StatusOpen, Storage: &st}, nil
	}
	foreign.ID[0] ^= 1
	if err := learn(lie, addr.String()); err == nil {
		t.Fatal("learnt a channel that pays another key")
	}
	if _, err := payee.Latest(foreign.ID); !errors.Is(err, settle.ErrUnknownChannel) {
		t.Fatalf("foreign channel stored: %v", err)
	}
}

// BenchmarkLearnKnownChannel is the worker's cost per Open that names a channel
// it already knows: one contract read from the dev ledger (simulated chain, not
// TON; a liteserver round trip on TON comes on top) and one store read.
func BenchmarkLearnKnownChannel(b *testing.B) {
	ctx := context.Background()
	ledger, err := devledger.New(devledger.WithLogger(netLogger()))
	if err != nil {
		b.Fatal(err)
	}
	client, worker := newWallet(b), newWallet(b)
	if _, err := ledger.Faucet(client.Address(ledger.GlobalID()), netDeposit+1_000_000_000); err != nil {
		b.Fatal(err)
	}
	ch, addr := devChannel(b, client, worker)
	chain := settle.NewChain(ledger, client)
	chain.Log = netLogger()
	if _, err := chain.Open(ctx, ch, netDeposit); err != nil {
		b.Fatal(err)
	}
	payees := service.NewPayees(openStore(b, "worker").Payee(worker), service.LedgerChannels(ledger), 0)
	for b.Loop() {
		a, err := payees.Open(ctx, market.NewJobID(), addr.String())
		if err != nil {
			b.Fatal(err)
		}
		a.Close()
	}
}

// TestCachedChannels: an open channel is read from the chain once per TTL, a
// failure or a channel not open is read again every time.
func TestCachedChannels(t *testing.T) {
	noLeaks(t)
	ctx := context.Background()
	client, worker := newWallet(t), newWallet(t)
	ch, addr := devChannel(t, client, worker)
	var calls int
	status := settle.StatusUninitialized
	lookup := func(_ context.Context, a *address.Address) (settle.Channel, *settle.ChannelState, error) {
		calls++
		st := ch.InitialStorage()
		return ch, &settle.ChannelState{Status: status, Storage: &st}, nil
	}
	cached := service.CachedChannels(lookup, 150*time.Millisecond)
	for range 3 {
		if _, st, err := cached(ctx, addr); err != nil || st.Status != settle.StatusUninitialized {
			t.Fatalf("lookup: %v, %v", st, err)
		}
	}
	if calls != 3 {
		t.Fatalf("a channel not open was read %d times for 3 lookups; want 3 (never cached)", calls)
	}
	status = settle.StatusOpen
	for range 3 {
		if _, st, err := cached(ctx, addr); err != nil || st.Status != settle.StatusOpen {
			t.Fatalf("lookup: %v, %v", st, err)
		}
	}
	if calls != 4 {
		t.Fatalf("an open channel was read %d times in all; want 4 (once cached)", calls)
	}
	time.Sleep(200 * time.Millisecond)
	status = settle.StatusClosureStarted
	if _, st, _ := cached(ctx, addr); st.Status != settle.StatusClosureStarted || calls != 5 {
		t.Fatalf("after the TTL: status %v, %d reads; want the chain's new status, 5 reads", st.Status, calls)
	}
}

// devChannel is a fresh channel from client to worker on the dev ledger's
// network, with its contract address.
func devChannel(tb testing.TB, client, worker *settle.Wallet) (settle.Channel, *address.Address) {
	tb.Helper()
	id, err := settle.NewChannelID()
	if err != nil {
		tb.Fatal(err)
	}
	ch := settle.Channel{
		ID: id, ClientKey: client.PublicKey(), WorkerKey: worker.PublicKey(),
		ClientAddr: client.Address(devledger.GlobalID), WorkerAddr: worker.Address(devledger.GlobalID),
		Closing: settle.DefaultClosing,
	}
	addr, err := ch.Address()
	if err != nil {
		tb.Fatal(err)
	}
	return ch, addr
}
