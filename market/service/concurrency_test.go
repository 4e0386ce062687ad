package service_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
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

// Many jobs of one client at once on one worker share one channel: the
// client's PayerLane turns each job's total into the channel's next state, the
// worker's PayeeLane attributes the states back to jobs in whatever order
// their streams deliver them. These tests hold that money to the nanoTON with
// jobs overlapping, cancelled mid-stream, and one job whose client stops
// paying, on real libp2p hosts (mocknet), real settle stores and signed
// vouchers, and channel contracts on the dev ledger (simulated chain, real
// contract code). The backend is a fake, so the tests measure the protocol and
// the money, not a model.

// concSlots is each worker's slots (and queue): more than the client ever has
// in flight, so no job is refused as busy.
const concSlots = 16

// peakBackend answers a request with MaxTokens numbered words (16 without a
// bound), one token each, wait apart, and counts its open streams: the most
// that were open at once is how many jobs overlapped on its worker.
type peakBackend struct {
	wait time.Duration

	mu         sync.Mutex
	open, peak int
}

func (b *peakBackend) Models() []runtime.Model {
	return []runtime.Model{{ID: netModel, ContextLength: 2048}}
}
func (b *peakBackend) Close() error { return nil }

func (b *peakBackend) Generate(ctx context.Context, r runtime.Request) (runtime.Stream, error) {
	if r.Model != netModel {
		return nil, runtime.ErrUnknownModel
	}
	n := r.MaxTokens
	if n == 0 {
		n = 16
	}
	b.mu.Lock()
	b.open++
	b.peak = max(b.peak, b.open)
	b.mu.Unlock()
	return &peakStream{b: b, ctx: ctx, n: n, prompt: promptWords(r)}, nil
}

// Peak is the most streams that were open at once.
func (b *peakBackend) Peak() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.peak
}

// promptWords is the prompt's length in the fake's tokens (words).
func promptWords(r runtime.Request) int {
	n := len(strings.Fields(r.Prompt))
	for _, m := range r.Messages {
		n += len(strings.Fields(m.Content))
	}
	return n
}

// peakAnswer is the whole answer of peakBackend to a request for n tokens.
func peakAnswer(n int) string {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, " w%d", i)
	}
	return b.String()
}

// peakStream is used by one goroutine (the worker's producer).
type peakStream struct {
	b       *peakBackend
	ctx     context.Context
	n, next int
	prompt  int
	closed  bool
}

func (s *peakStream) Recv() (runtime.Delta, error) {
	if s.next == s.n {
		return runtime.Delta{}, io.EOF
	}
	if s.b.wait > 0 {
		t := time.NewTimer(s.b.wait)
		select {
		case <-t.C:
		case <-s.ctx.Done():
			t.Stop()
			return runtime.Delta{}, s.ctx.Err()
		}
	}
	s.next++
	return runtime.Delta{Text: fmt.Sprintf(" w%d", s.next), Tokens: 1}, nil
}

func (s *peakStream) Usage() runtime.Usage {
	return runtime.Usage{PromptTokens: s.prompt, CompletionTokens: s.next}
}
func (s *peakStream) FinishReason() string { return runtime.FinishStop }

func (s *peakStream) Close() error {
	if !s.closed {
		s.closed = true
		s.b.mu.Lock()
		s.b.open--
		s.b.mu.Unlock()
	}
	return nil
}

// concOptions shape a concFixture.
type concOptions struct {
	credit  int           // each worker's credit window in tokens (0: the default)
	voucher time.Duration // each worker's voucher deadline (0: the default)
	wait    time.Duration // the fake backend's time per token
	// payer, when set, wraps the client's Payers hook.
	payer func(func(market.Candidate) (market.Payer, error)) func(market.Candidate) (market.Payer, error)
}

// concFixture is a netFixture whose workers serve a peakBackend behind
// concSlots slots and learn their channels from the dev ledger, as a node
// does; it keeps the ledger and the wallets for closing the channels.
type concFixture struct {
	*netFixture
	ledger   *devledger.Ledger
	client   *settle.Wallet
	wallets  []*settle.Wallet // each worker's, funded: it submits the close
	channels []settle.Channel
	backends []*peakBackend
}

// newConcFixture starts a client and n workers on a mocknet, with a channel
// from the client to each opened on one dev ledger (simulated chain, not TON),
// sim TEE (not confidential).
func newConcFixture(t *testing.T, n int, o concOptions) *concFixture {
	t.Helper()
	ctx := context.Background()
	log := netLogger()
	quiet := slog.New(slog.DiscardHandler)
	nf := &netFixture{t: t, mn: mocknet.New(), byPeer: map[peer.ID]*netWorker{}, log: log}
	f := &concFixture{netFixture: nf}
	t.Cleanup(func() { nf.mn.Close() })
	nodes := make([]*p2p.Node, n+1)
	for i := range nodes {
		h, err := nf.mn.GenPeer()
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
	connectMesh(t, nf.mn, nodes)
	nf.client = nodes[0]

	ledger, err := devledger.New(devledger.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	f.ledger = ledger
	f.client = newWallet(t)
	if _, err := ledger.Faucet(f.client.Address(ledger.GlobalID()), uint64(n)*netDeposit+1_000_000_000); err != nil {
		t.Fatal(err)
	}
	nf.payer = openStore(t, "client").Payer(f.client)
	chain := settle.NewChain(ledger, f.client)
	chain.Log = quiet
	nf.verifier, err = enclave.NewVerifier(enclave.Policy{AllowSim: true, AllowedKinds: []tee.Kind{tee.Sim}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The client first, so that the workers' first ads find its validator.
	nf.payers = service.NewPayers(nf.payer)
	payer := nf.payers.Payer
	if o.payer != nil {
		payer = o.payer(payer)
	}
	nf.obs = &recorder{}
	nf.cs, err = service.NewClient(service.ClientConfig{
		Models:   []string{netModel},
		Observer: nf.obs, Node: nf.client, Payer: payer, Verifier: nf.verifier,
		Policy: market.Policy{TEE: []tee.Kind{tee.Sim}}, Rand: rand.New(rand.NewPCG(12, 12)),
		Logger: log.With("client", 0),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nf.cs.Close() })
	for i := 1; i <= n; i++ {
		ww := newWallet(t)
		if _, err := ledger.Faucet(ww.Address(ledger.GlobalID()), 1_000_000_000); err != nil {
			t.Fatal(err)
		}
		id, err := settle.NewChannelID()
		if err != nil {
			t.Fatal(err)
		}
		ch := settle.Channel{
			ID: id, ClientKey: f.client.PublicKey(), WorkerKey: ww.PublicKey(),
			ClientAddr: f.client.Address(ledger.GlobalID()), WorkerAddr: ww.Address(ledger.GlobalID()),
			Closing: settle.DefaultClosing,
		}
		if _, err := chain.Open(ctx, ch, netDeposit); err != nil {
			t.Fatalf("open channel to worker %d: %v", i, err)
		}
		if err := nf.payer.AddChannel(ch, netDeposit); err != nil {
			t.Fatal(err)
		}
		// The worker's store starts empty: it reads the channel from the
		// ledger when the client names it in its first Open.
		payee := openStore(t, fmt.Sprintf("worker%d", i)).Payee(ww)
		be := &peakBackend{wait: o.wait}
		w := &netWorker{node: nodes[i], backend: runtime.Limit(be, concSlots, concSlots), payee: payee, channel: id,
			// Odd prices, different per worker, so rounding and attribution show.
			price: market.Price{Prompt: 300_000_001 + uint64(i)*7, Completion: 1_500_000_007 + uint64(i)*13},
			obs:   &recorder{}}
		w.svc, err = service.NewWorker(service.WorkerConfig{
			Observer: w.obs, Node: nodes[i], Backend: w.backend,
			Payee:        service.NewPayees(payee, service.CachedChannels(service.LedgerChannels(ledger), 0), 0),
			Prices:       map[string]market.Price{netModel: w.price},
			CreditTokens: o.credit, Timeouts: market.Timeouts{Voucher: o.voucher},
			Settlement: market.Settlement{WalletAddress: settle.Friendly(ww.Address(ledger.GlobalID())), ChannelKey: ww.PublicKey(), MinDeposit: 1_000_000},
			TEE:        market.TEE{Kind: tee.Sim, Measurement: enclave.DefaultSimMeasurement[:]},
			Attester:   enclave.NewSimAttester(nil, enclave.DefaultSimMeasurement, nil),
			Logger:     log.With("worker", i),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { w.svc.Close() })
		nf.workers = append(nf.workers, w)
		nf.byPeer[nodes[i].Host.ID()] = w
		f.wallets = append(f.wallets, ww)
		f.channels = append(f.channels, ch)
		f.backends = append(f.backends, be)
	}
	waitFor(t, 30*time.Second, "every worker's ad in the client's book", func() bool {
		return len(nf.cs.Book().ByModel(netModel)) == n
	})
	return f
}

// endedJob returns the end event the recorder holds for job.
func (r *recorder) endedJob(job market.JobID) (market.JobEvent, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.ended {
		if e.ID == job {
			return e, true
		}
	}
	return market.JobEvent{}, false
}

// consumption is how a caller reads its answer.
type consumption int

const (
	drainAll  consumption = iota // read everything as it comes
	streamed                     // a slower reader: a pause every few chunks
	cancelled                    // close the stream after the first chunk or two
)

func (c consumption) String() string { return [...]string{"drain", "streamed", "cancelled"}[c] }

// concJob is job i of the concurrency test: how it is read and what it asks.
func concJob(i int) (consumption, runtime.Request) {
	seed := uint64(5000 + i)
	req := runtime.Request{Model: netModel, MaxTokens: 8 + i%5*8, Seed: &seed}
	p := netPrompts[i%len(netPrompts)]
	if i%2 == 0 {
		req.Messages = []runtime.Message{{Role: "user", Content: p}}
	} else {
		req.Prompt = p
	}
	switch {
	case i%7 == 6:
		req.MaxTokens = 40 // long enough that the caller's close cuts it
		return cancelled, req
	case i%2 == 0:
		return drainAll, req
	}
	return streamed, req
}

// concResult is what the caller of one job saw.
type concResult struct {
	how      consumption
	req      runtime.Request
	text     string
	tokens   int // completion tokens the caller read
	usage    runtime.Usage
	finish   string
	worker   peer.ID
	cost     uint64 // NetStream.CostNanoTON
	attempts []market.Attempt
	err      error
}

// run buys job i and reads it as concJob says.
func (f *concFixture) run(i int) concResult {
	how, req := concJob(i)
	r := concResult{how: how, req: req}
	s, err := f.cs.GeneratePolicy(context.Background(), req, market.Policy{TEE: []tee.Kind{tee.Sim}})
	if err != nil {
		r.err = fmt.Errorf("job %d: generate: %w", i, err)
		return r
	}
	defer s.Close()
	r.worker = s.Worker()
	for n := 0; ; n++ {
		if how == cancelled && n == 1+i%2 {
			s.Close() // the caller leaves mid-stream
			break
		}
		if how == streamed && n%4 == 3 {
			time.Sleep(time.Millisecond)
		}
		d, err := s.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			r.err = fmt.Errorf("job %d: recv: %w", i, err)
			return r
		}
		r.text += d.Text
		r.tokens += d.Tokens
	}
	r.usage, r.finish = s.Usage(), s.FinishReason()
	r.cost, r.attempts = s.CostNanoTON(), s.Attempts()
	return r
}

// TestNetMoneyExactUnderConcurrency buys 200 jobs from 2 workers, 16 in
// flight at a time, read at once, read slowly, or left mid-stream by the
// caller (every 7th). Each worker's provable channel balance equals the cost
// of what it delivered, what the client's streams said it spent, and the
// client's channel total, to the nanoTON; each job's share of the channel as
// the worker attributed it equals what the client paid for that job; jobs
// overlapped on each worker; and a cooperative close on the dev ledger pays
// each worker's wallet exactly its balance, less the fees the ledger reports.
func TestNetMoneyExactUnderConcurrency(t *testing.T) {
	noLeaks(t)
	// A small credit window: the client pays every 4 tokens, so each channel
	// carries many vouchers of many jobs at once.
	f := newConcFixture(t, 2, concOptions{credit: 8, wait: time.Millisecond})
	const jobs, inFlight = 200, 16
	results := make([]concResult, jobs)
	next := make(chan int)
	var wg sync.WaitGroup
	for range inFlight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				results[i] = f.run(i)
			}
		}()
	}
	for i := range jobs {
		next <- i
	}
	close(next)
	wg.Wait()
	for _, r := range results {
		if r.err != nil {
			t.Fatal(r.err)
		}
	}
	waitFor(t, 10*time.Second, "every job's end on its worker", func() bool {
		n := 0
		for _, w := range f.workers {
			n += len(w.obs.snapshot().ended)
		}
		return n == jobs
	})

	type tally struct {
		jobs, cut         int
		spent             uint64 // the streams' CostNanoTON
		workerNano        uint64 // what the worker's jobs say they were paid
		tokens            uint64 // completion tokens paid for
		unpaid, maxUnpaid uint64 // tokens sent after cancels that the client did not pay
	}
	per := map[peer.ID]*tally{}
	perWorker := map[peer.ID][]market.Receipt{}
	for i, r := range results {
		w := f.byPeer[r.worker]
		if w == nil {
			t.Fatalf("job %d: served by %s, not a worker", i, r.worker)
		}
		if len(r.attempts) != 1 || r.attempts[0].Candidate.Peer != r.worker {
			t.Fatalf("job %d: attempts %+v; want one, on %s", i, r.attempts, r.worker)
		}
		a := r.attempts[0]
		rc := a.Receipt
		owed, err := market.Cost(rc.Price, rc.PromptTokens, rc.CompletionTokens)
		if err != nil {
			t.Fatal(err)
		}
		if rc.Price != w.price || rc.Paid != owed || rc.Cost != owed || r.cost != rc.Paid {
			t.Errorf("job %d (%s): price %+v, paid %d, receipt cost %d, stream cost %d; want price %+v, all %d (Cost of %d prompt, %d completion)",
				i, r.how, rc.Price, rc.Paid, rc.Cost, r.cost, w.price, owed, rc.PromptTokens, rc.CompletionTokens)
		}
		prompt := uint64(promptWords(r.req))
		switch r.how {
		case cancelled:
			// The caller read one or two chunks; the client also paid the one
			// it held when the caller left (it reached the client), never more.
			if a.Err == nil || rc.FinishReason != market.FinishCancelled || rc.CompletionTokens >= uint64(r.req.MaxTokens) ||
				rc.CompletionTokens < uint64(r.tokens) || rc.CompletionTokens > uint64(r.tokens)+1 || !strings.HasPrefix(peakAnswer(r.req.MaxTokens), r.text) {
				t.Errorf("job %d (cancelled after %d tokens, %q): attempt err %v, receipt %d tokens, finish %q; want cut short, paying for %d or one more",
					i, r.tokens, r.text, a.Err, rc.CompletionTokens, rc.FinishReason, r.tokens)
			}
		default:
			n := r.req.MaxTokens
			want := runtime.Usage{PromptTokens: int(prompt), CompletionTokens: n}
			if a.Err != nil || r.text != peakAnswer(n) || r.tokens != n || r.usage != want || r.finish != runtime.FinishStop ||
				rc.CompletionTokens != uint64(n) || rc.PromptTokens != prompt {
				t.Errorf("job %d (%s): err %v, answer %q (%d tokens, usage %+v, %q), receipt %d+%d tokens; want %q, usage %+v",
					i, r.how, a.Err, r.text, r.tokens, r.usage, r.finish, rc.PromptTokens, rc.CompletionTokens, peakAnswer(n), want)
			}
		}
		// What the worker attributed to this job, from states that also paid
		// the client's other jobs on the channel, is what the client paid for it.
		e, ok := w.obs.endedJob(rc.Job)
		if !ok {
			t.Fatalf("job %d: worker has no end event for job %s", i, rc.Job)
		}
		if e.NanoTON != rc.Paid || e.CompletionTokens < rc.CompletionTokens || e.PromptTokens != rc.PromptTokens {
			t.Errorf("job %d (%s): worker says %d nanoTON for %d+%d tokens (%s, %v); client paid %d for %d+%d",
				i, r.how, e.NanoTON, e.PromptTokens, e.CompletionTokens, e.Outcome, e.Err, rc.Paid, rc.PromptTokens, rc.CompletionTokens)
		}
		wantOutcome := market.OutcomeOK
		if r.how == cancelled {
			wantOutcome = market.OutcomeCancelled
		}
		if e.Outcome != wantOutcome {
			t.Errorf("job %d (%s): worker outcome %s (%v); want %s", i, r.how, e.Outcome, e.Err, wantOutcome)
		}
		tl := per[r.worker]
		if tl == nil {
			tl = &tally{}
			per[r.worker] = tl
		}
		tl.jobs++
		tl.spent += r.cost
		tl.workerNano += e.NanoTON
		tl.tokens += rc.CompletionTokens
		if r.how == cancelled {
			tl.cut++
			// Tokens in flight when the cancel reached the worker are its
			// loss, bounded by its credit window.
			u := e.CompletionTokens - rc.CompletionTokens
			tl.unpaid += u
			tl.maxUnpaid = max(tl.maxUnpaid, u)
			if u > 8 {
				t.Errorf("job %d: worker sent %d tokens the client did not pay, beyond its credit window of 8", i, u)
			}
		}
		perWorker[r.worker] = append(perWorker[r.worker], rc)
	}
	if len(per) != 2 {
		t.Errorf("jobs went to %d workers; want both used", len(per))
	}
	// Balance (after the worker's disk) = Cost of the receipts = receipts'
	// Paid = the client's channel total.
	checkBalances(t, f.netFixture, perWorker)
	for i, w := range f.workers {
		tl := per[w.node.Host.ID()]
		if tl == nil {
			continue
		}
		bal, err := w.payee.Balance(w.channel)
		if err != nil {
			t.Fatal(err)
		}
		if tl.spent != bal || tl.workerNano != bal {
			t.Errorf("worker %d: streams say the client spent %d, the worker's jobs say %d; balance %d", i+1, tl.spent, tl.workerNano, bal)
		}
		// The client signed exactly the states the worker holds: none lost,
		// none sent twice, so both records end on the same seqno.
		crec, err := f.payer.Latest(w.channel)
		if err != nil {
			t.Fatal(err)
		}
		wrec, err := w.payee.Latest(w.channel)
		if err != nil {
			t.Fatal(err)
		}
		if crec.Seqno != wrec.Seqno {
			t.Errorf("worker %d: client's newest state seqno %d, worker's %d", i+1, crec.Seqno, wrec.Seqno)
		}
		peak := f.backends[i].Peak()
		if peak < 2 {
			t.Errorf("worker %d: at most %d jobs at once; want overlapping jobs", i+1, peak)
		}
		t.Logf("worker %d: %d jobs (%d cut by the caller), %d completion tokens paid, %d states; balance %d nanoTON; peak %d jobs at once; %d tokens sent after cancels (at most %d in one job)",
			i+1, tl.jobs, tl.cut, tl.tokens, wrec.Seqno, bal, peak, tl.unpaid, tl.maxUnpaid)
		f.closeCooperatively(t, i, bal)
	}
}

// closeCooperatively closes worker i's channel as cocoon channel close does
// (the client signs the close of its newest state, the worker countersigns
// and submits it) and checks the payouts to the nanoTON from the ledger's
// transactions: the contract's message to the worker carries its balance
// less that message's fees, and each wallet changes by its payout less the
// fees of its own transactions.
func (f *concFixture) closeCooperatively(t *testing.T, i int, bal uint64) {
	t.Helper()
	ctx := context.Background()
	w, ww, ch := f.workers[i], f.wallets[i], f.channels[i]
	gid := f.ledger.GlobalID()
	wAddr, cAddr := ww.Address(gid), f.client.Address(gid)
	chAddr, err := ch.Address()
	if err != nil {
		t.Fatal(err)
	}
	wBefore, cBefore, chBefore := f.ledger.Balance(wAddr), f.ledger.Balance(cAddr), f.ledger.Balance(chAddr)

	cs, sigA, err := f.payer.CloseState(ch.ID)
	if err != nil {
		t.Fatal(err)
	}
	if cs.BalanceB != bal || cs.BalanceA != netDeposit-bal {
		t.Fatalf("worker %d: close pays worker %d, client %d; want %d, %d", i+1, cs.BalanceB, cs.BalanceA, bal, netDeposit-bal)
	}
	sigB, err := w.payee.Countersign(cs, sigA)
	if err != nil {
		t.Fatalf("worker %d: countersign: %v", i+1, err)
	}
	wchain := settle.NewChain(f.ledger, ww)
	wchain.Log = slog.New(slog.DiscardHandler)
	tr, err := wchain.CooperativeClose(ctx, ch, cs, sigA, sigB)
	if err != nil {
		t.Fatalf("worker %d: cooperative close: %v", i+1, err)
	}
	if st, err := wchain.State(ctx, ch); err != nil || st.Status != settle.StatusClosed || st.Balance != 0 {
		t.Fatalf("worker %d: after the close: %+v, %v; want closed, empty", i+1, st, err)
	}
	if err := f.payer.MarkClosed(ch.ID); err != nil {
		t.Fatal(err)
	}
	if err := w.payee.MarkClosed(ch.ID); err != nil {
		t.Fatal(err)
	}

	closeTxs := tr.For(chAddr)
	if len(closeTxs) != 1 {
		t.Fatalf("worker %d: %d contract transactions in the close; want 1", i+1, len(closeTxs))
	}
	closeTx := closeTxs[0]
	toWorker, toClient := outTo(t, closeTx, wAddr), outTo(t, closeTx, cAddr)
	// The two payouts cost the contract the same: an action fee each (part
	// of the transaction's fees) and the forward fee each message carries.
	if len(closeTx.Out) != 2 || toWorker.FwdFee != toClient.FwdFee || closeTx.ActionFees%2 != 0 {
		t.Fatalf("worker %d: close transaction sends %+v with action fees %d; want two payouts of equal fees", i+1, closeTx.Out, closeTx.ActionFees)
	}
	action := closeTx.ActionFees / 2
	if got := toWorker.Value + toWorker.FwdFee + action; got != bal {
		t.Errorf("worker %d: payout %d + forward fee %d + action fee %d = %d; want the balance %d", i+1, toWorker.Value, toWorker.FwdFee, action, got, bal)
	}
	if got, want := toClient.Value+toClient.FwdFee, chBefore+closeTx.InValue-closeTx.Fees-(bal-action); got != want {
		t.Errorf("worker %d: client payout %d; want the contract's %d + %d in - %d fees - the worker's %d = %d",
			i+1, got, chBefore, closeTx.InValue, closeTx.Fees, bal-action, want)
	}
	wtx := tr.For(wAddr)
	if len(wtx) != 2 {
		t.Fatalf("worker %d: worker wallet has %d transactions in the close; want 2 (send, payout)", i+1, len(wtx))
	}
	if got, want := f.ledger.Balance(wAddr), wBefore-wtx[0].Spent()+toWorker.Value-wtx[1].Fees; got != want {
		t.Errorf("worker %d: wallet %d; want %d - %d sending the close + %d payout - %d fees = %d",
			i+1, got, wBefore, wtx[0].Spent(), toWorker.Value, wtx[1].Fees, want)
	}
	ctxs := tr.For(cAddr)
	if len(ctxs) != 1 {
		t.Fatalf("worker %d: client wallet has %d transactions in the close; want 1 (payout)", i+1, len(ctxs))
	}
	if got, want := f.ledger.Balance(cAddr), cBefore+toClient.Value-ctxs[0].Fees; got != want {
		t.Errorf("worker %d: client wallet %d; want %d + %d payout - %d fees = %d", i+1, got, cBefore, toClient.Value, ctxs[0].Fees, want)
	}
	t.Logf("worker %d: cooperative close pays its wallet %d nanoTON of its %d (payout fees %d, receiving fee %d); the client gets %d back",
		i+1, toWorker.Value, bal, toWorker.FwdFee+action, wtx[1].Fees, toClient.Value)
}

// outTo returns tx's outgoing message to addr.
func outTo(t *testing.T, tx settle.Tx, addr *address.Address) settle.OutMsg {
	t.Helper()
	for _, m := range tx.Out {
		if a, err := settle.ParseAddress(m.To); err == nil && a.Equals(addr) {
			return m
		}
	}
	t.Fatalf("no message from %s to %s in %+v", tx.Account, settle.Friendly(addr), tx.Out)
	return settle.OutMsg{}
}

// stopPaying marks a caller's context: its job's client pays the first
// voucher, then sends no more.
type stopPaying struct{}

// stingyPayers wraps the client's Payers hook: a job whose context carries
// stopPaying gets its first voucher, and its second Pay blocks until the job's
// context ends (the client goes silent on the stream, reading nothing more),
// after which it fails. Every other job pays as usual.
type stingyPayers struct {
	blocked chan market.JobID // receives the job when its Pay blocks

	mu     sync.Mutex
	passed map[market.JobID]uint64 // the total let through per marked job
	stuck  map[market.JobID]bool
}

func (s *stingyPayers) wrap(next func(market.Candidate) (market.Payer, error)) func(market.Candidate) (market.Payer, error) {
	return func(c market.Candidate) (market.Payer, error) {
		p, err := next(c)
		if err != nil {
			return nil, err
		}
		return stingyPayer{Payer: p, s: s}, nil
	}
}

// paid is the total let through for job.
func (s *stingyPayers) paid(job market.JobID) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.passed[job]
}

type stingyPayer struct {
	market.Payer
	s *stingyPayers
}

var errStoppedPaying = errors.New("test: this client stopped paying for the job")

func (p stingyPayer) Pay(ctx context.Context, job market.JobID, total uint64) ([]byte, error) {
	if ctx.Value(stopPaying{}) == nil {
		return p.Payer.Pay(ctx, job, total)
	}
	s := p.s
	s.mu.Lock()
	_, first := s.passed[job]
	first = !first
	stuck := s.stuck[job]
	if first {
		s.passed[job] = total
	} else {
		s.stuck[job] = true
	}
	s.mu.Unlock()
	switch {
	case first:
		return p.Payer.Pay(ctx, job, total)
	case stuck:
		return nil, errStoppedPaying
	}
	s.blocked <- job
	<-ctx.Done()
	return nil, errStoppedPaying
}

// TestNetOneJobStopsPaying runs several jobs of one client at once on one
// worker, all paid on one channel, while the client stops paying for one of
// them after its first voucher: the worker cancels that job alone with
// NO_PAYMENT when its credit is spent and the voucher deadline passes, having
// been paid exactly what the client sent for it; the other jobs, running at
// the same time on the same channel, finish and are paid exactly; and the
// worker's balance is what the client paid in all.
func TestNetOneJobStopsPaying(t *testing.T) {
	noLeaks(t)
	const credit = 8
	st := &stingyPayers{blocked: make(chan market.JobID, 1), passed: map[market.JobID]uint64{}, stuck: map[market.JobID]bool{}}
	f := newConcFixture(t, 1, concOptions{credit: credit, voucher: time.Second, wait: 2 * time.Millisecond, payer: st.wrap})
	w := f.workers[0]

	_, sreq := concJob(0)
	sreq.MaxTokens = 64
	s, err := f.cs.Generate(context.WithValue(context.Background(), stopPaying{}, true), sreq)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	type read struct {
		ans answer
		err error
	}
	stingyRead := make(chan read, 1)
	go func() { // the caller reads on, as long as anything comes
		ans, err := drain(s)
		stingyRead <- read{ans, err}
	}()
	var job market.JobID
	select {
	case job = <-st.blocked:
	case <-time.After(20 * time.Second):
		t.Fatal("the job that stops paying never asked to pay a second time")
	}

	// The others start while that job is stalled on the same channel.
	const others = 5
	results := make([]concResult, others)
	var wg sync.WaitGroup
	for i := range others {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = f.run(1 + 2*i) // streamed, with prompts
		}()
	}
	wg.Wait()

	var ev market.JobEvent
	waitFor(t, 15*time.Second, "the worker's end of the unpaid job", func() bool {
		var ok bool
		ev, ok = w.obs.endedJob(job)
		return ok
	})
	s.Close()
	sr := <-stingyRead

	paid := st.paid(job)
	if paid == 0 {
		t.Fatal("the job that stops paying paid nothing before it stopped")
	}
	// The worker stopped it: no payment within the deadline, after at most
	// the credit window beyond what was paid.
	if ev.Outcome != market.OutcomeFailed || !errors.Is(ev.Err, market.ErrNoPayment) || ev.NanoTON != paid {
		t.Errorf("unpaid job on the worker: %s, %v, %d nanoTON; want failed with %v, %d nanoTON", ev.Outcome, ev.Err, ev.NanoTON, market.ErrNoPayment, paid)
	}
	covered, err := market.Cost(market.Price{Completion: w.price.Completion}, 0, ev.CompletionTokens-credit)
	if err != nil || ev.CompletionTokens <= credit || covered > paid {
		t.Errorf("unpaid job: worker sent %d tokens with %d nanoTON paid; want at most the credit window (%d) beyond what was paid", ev.CompletionTokens, paid, credit)
	}
	if sr.err == nil {
		t.Errorf("unpaid job: the caller's stream ended cleanly with %d tokens; want an error", sr.ans.tokens)
	}
	as := s.(*service.NetStream).Attempts()
	if len(as) != 1 || as[0].Receipt.Job != job || as[0].Receipt.Paid != paid || s.(*service.NetStream).CostNanoTON() != paid {
		t.Fatalf("unpaid job: attempts %+v; want one, paying %d", as, paid)
	}

	waitFor(t, 10*time.Second, "every job's end on the worker", func() bool { return len(w.obs.snapshot().ended) == others+1 })
	total := paid
	for i, r := range results {
		if r.err != nil {
			t.Fatal(r.err)
		}
		if len(r.attempts) != 1 || r.attempts[0].Err != nil {
			t.Fatalf("job %d: attempts %+v; want one that finished", i, r.attempts)
		}
		rc := r.attempts[0].Receipt
		n := r.req.MaxTokens
		cost, err := market.Cost(w.price, uint64(promptWords(r.req)), uint64(n))
		if err != nil {
			t.Fatal(err)
		}
		if r.text != peakAnswer(n) || rc.CompletionTokens != uint64(n) || rc.Paid != cost || r.cost != cost {
			t.Errorf("job %d: answer %q, receipt %d tokens, paid %d, stream cost %d; want %q, %d tokens, %d nanoTON",
				i, r.text, rc.CompletionTokens, rc.Paid, r.cost, peakAnswer(n), n, cost)
		}
		// The worker attributed to the job exactly its cost, from states that
		// also paid the other jobs.
		if e, ok := w.obs.endedJob(rc.Job); !ok || e.Outcome != market.OutcomeOK || e.NanoTON != cost {
			t.Errorf("job %d on the worker: %s (%v), %d nanoTON; want ok, %d", i, e.Outcome, e.Err, e.NanoTON, cost)
		}
		total += cost
	}
	// Every job has ended on the worker, so each payment it took is on its
	// disk.
	if err := w.payee.Flush(); err != nil {
		t.Fatal(err)
	}
	bal, err := w.payee.Balance(w.channel)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.payer.Flush(); err != nil {
		t.Fatal(err)
	}
	crec, err := f.payer.Latest(w.channel)
	if err != nil {
		t.Fatal(err)
	}
	if bal != total || crec.Sent != total {
		t.Errorf("worker balance %d, client's channel total %d; want what the client paid, %d", bal, crec.Sent, total)
	}
	t.Logf("%d jobs paid in full and one that stopped paying after %d nanoTON (the worker sent it %d tokens, then cancelled: %v); balance %d nanoTON = what the client paid; peak %d jobs at once",
		others, paid, ev.CompletionTokens, ev.Err, bal, f.backends[0].Peak())
}
