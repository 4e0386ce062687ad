package settle_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"log/slog"
	"math/big"
	"path/filepath"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/settle"
	"github.com/cocoon-network/cocoon/settle/devledger"
)

// party is one node: wallet, chain handle, store.
type party struct {
	w     *settle.Wallet
	chain *settle.OnChain
	store *settle.Store
}

type fixture struct {
	t       testing.TB
	l       *devledger.Ledger
	client  party
	worker  party
	ch      settle.Channel
	deposit uint64
	funded  uint64 // faucet total
	traces  []*settle.Trace
}

const (
	clientFunds = 20_000_000_000
	workerFunds = 1_000_000_000
)

func newParty(t testing.TB, l settle.Ledger, name string) party {
	t.Helper()
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	w := settle.NewWallet(key)
	st, err := settle.OpenStore(filepath.Join(t.TempDir(), name+".db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return party{w: w, chain: settle.NewChain(l, w), store: st}
}

// newFixture funds a client and a worker wallet on a fresh dev ledger and
// opens a channel with deposit.
func newFixture(t testing.TB, deposit uint64) *fixture {
	t.Helper()
	l, err := devledger.New(devledger.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, l: l, deposit: deposit}
	f.client = newParty(t, l, "client")
	f.worker = newParty(t, l, "worker")
	for _, p := range []struct {
		w *settle.Wallet
		v uint64
	}{{f.client.w, clientFunds}, {f.worker.w, workerFunds}} {
		tr, err := l.Faucet(p.w.Address(l.GlobalID()), p.v)
		if err != nil {
			t.Fatal(err)
		}
		f.record(tr)
		f.funded += p.v
	}
	id, err := settle.NewChannelID()
	if err != nil {
		t.Fatal(err)
	}
	f.ch = settle.Channel{
		ID: id, ClientKey: f.client.w.PublicKey(), WorkerKey: f.worker.w.PublicKey(),
		ClientAddr: f.client.w.Address(l.GlobalID()), WorkerAddr: f.worker.w.Address(l.GlobalID()),
		Closing: settle.ClosingConfig{QuarantineDuration: 600, MisbehaviorFine: 50_000_000, ConditionalCloseDuration: 300},
	}
	tr, err := f.client.chain.Open(context.Background(), f.ch, deposit)
	f.record(tr)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	st, err := f.worker.chain.State(context.Background(), f.ch)
	if err != nil {
		t.Fatal(err)
	}
	if st.Status != settle.StatusOpen || st.Storage.BalanceA != deposit {
		t.Fatalf("after open: status %v, balance A %d; want open, %d", st.Status, st.Storage.BalanceA, deposit)
	}
	if err := f.client.store.Payer(f.client.w).AddChannel(f.ch, deposit); err != nil {
		t.Fatal(err)
	}
	// The worker learns the deposit from the chain, not from the client.
	if err := f.worker.store.Payee(f.worker.w).AddChannel(f.ch, st.Storage.BalanceA); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) record(tr *settle.Trace) {
	if tr != nil {
		f.traces = append(f.traces, tr)
	}
}

// pay exchanges n vouchers of amounts[i] each and returns the total the
// worker acknowledged.
func (f *fixture) pay(amounts []uint64) uint64 {
	f.t.Helper()
	payer, payee := f.client.store.Payer(f.client.w), f.worker.store.Payee(f.worker.w)
	var acked uint64
	for i, a := range amounts {
		b, _, err := payer.Increase(f.ch.ID, a)
		if err != nil {
			f.t.Fatalf("voucher %d: %v", i, err)
		}
		newly, err := payee.Accept(b)
		if err != nil {
			f.t.Fatalf("accept voucher %d: %v", i, err)
		}
		if newly != a {
			f.t.Fatalf("voucher %d: newly paid %d, want %d", i, newly, a)
		}
		acked += newly
	}
	return acked
}

// checkConservation checks every transaction of every trace: balance before
// plus value in equals balance after plus fees plus value and forward fees
// out; and that all wallets and contracts together hold what the faucet
// created minus all fees, to the nanoTON.
func (f *fixture) checkConservation(accounts ...*settle.Tx) {
	f.t.Helper()
	last := map[string]uint64{}
	var fees, fwd uint64
	for _, tr := range f.traces {
		for _, tx := range tr.Txs {
			before := last[tx.Account]
			var out uint64
			for _, m := range tx.Out {
				out += m.Value + m.FwdFee
			}
			if before+tx.InValue != tx.BalanceAfter+tx.Fees+out {
				f.t.Errorf("tx %s lt %d: %d + %d in != %d after + %d fees + %d out", tx.Account, tx.LT, before, tx.InValue, tx.BalanceAfter, tx.Fees, out)
			}
			last[tx.Account] = tx.BalanceAfter
			fees += tx.Fees
			fwd += tx.InFwdFee
		}
	}
	held := new(big.Int).SetUint64(fees + fwd)
	held.Add(held, f.l.Total())
	if held.Cmp(new(big.Int).SetUint64(f.funded)) != 0 {
		f.t.Errorf("money: held %s + fees %d + forward fees %d != funded %d", f.l.Total(), fees, fwd, f.funded)
	}
}

func friendly(f *fixture, w *settle.Wallet) string { return settle.Friendly(w.Address(f.l.GlobalID())) }

// walletTxs returns the transactions of the wallet in a trace.
func txsOf(tr *settle.Trace, addr string) []settle.Tx {
	var out []settle.Tx
	for _, tx := range tr.Txs {
		if sameFriendly(tx.Account, addr) {
			out = append(out, tx)
		}
	}
	return out
}

func sameFriendly(a, b string) bool {
	pa, err1 := settle.ParseAddress(a)
	pb, err2 := settle.ParseAddress(b)
	return err1 == nil && err2 == nil && pa.Workchain() == pb.Workchain() && string(pa.Data()) == string(pb.Data())
}

func payoutTo(t *testing.T, tr *settle.Trace, chAddr, to string) settle.OutMsg {
	t.Helper()
	for _, tx := range txsOf(tr, chAddr) {
		for _, m := range tx.Out {
			if sameFriendly(m.To, to) {
				return m
			}
		}
	}
	t.Fatalf("no payout from %s to %s", chAddr, to)
	return settle.OutMsg{}
}

// Vouchers signed here are accepted by the real contract; a
// cooperative close pays the worker exactly what it acknowledged.
func TestCooperativeCloseOnDevledger(t *testing.T) {
	const deposit = 3_000_000_000
	f := newFixture(t, deposit)
	ctx := context.Background()
	amounts := make([]uint64, 50)
	for i := range amounts {
		amounts[i] = uint64(1_000_000 + 37*i) // odd amounts, nanoTON
	}
	paid := f.pay(amounts)

	workerAddr := friendly(f, f.worker.w)
	clientAddr := friendly(f, f.client.w)
	workerBefore := f.l.Balance(f.worker.w.Address(f.l.GlobalID()))
	clientBefore := f.l.Balance(f.client.w.Address(f.l.GlobalID()))
	chAddr, _ := f.ch.Address()
	chBefore := f.l.Balance(chAddr)

	cs, sigA, err := f.client.store.Payer(f.client.w).CloseState(f.ch.ID)
	if err != nil {
		t.Fatal(err)
	}
	if cs.BalanceB != paid {
		t.Fatalf("close pays worker %d, acknowledged %d", cs.BalanceB, paid)
	}
	sigB, err := f.worker.store.Payee(f.worker.w).Countersign(cs, sigA)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := f.worker.chain.CooperativeClose(ctx, f.ch, cs, sigA, sigB)
	f.record(tr)
	if err != nil {
		t.Fatalf("cooperative close: %v", err)
	}
	st, err := f.worker.chain.State(ctx, f.ch)
	if err != nil {
		t.Fatal(err)
	}
	if st.Status != settle.StatusClosed || st.Balance != 0 {
		t.Fatalf("after close: %v, balance %d; want closed, 0", st.Status, st.Balance)
	}

	// The worker's payout message carries exactly what it was paid, less the
	// forward fee of that message.
	chFriendly := settle.Friendly(chAddr)
	toWorker := payoutTo(t, tr, chFriendly, workerAddr)
	toClient := payoutTo(t, tr, chFriendly, clientAddr)
	closeTx := txsOf(tr, chFriendly)[0]
	actionB := payoutActionFee(t, closeTx)
	if toWorker.Value+toWorker.FwdFee+actionB != paid {
		t.Errorf("worker payout %d + forward fee %d + %d != paid %d", toWorker.Value, toWorker.FwdFee, actionB, paid)
	}
	// The client gets everything else the contract held.
	if got, want := toClient.Value+toClient.FwdFee, chBefore+closeTx.InValue-closeTx.Fees-(paid-actionB); got != want {
		t.Errorf("client payout %d, want contract balance %d + %d in - %d fees - %d paid = %d", got, chBefore, closeTx.InValue, closeTx.Fees, paid, want)
	}
	// Wallet balances from the transactions of the close.
	wtx := txsOf(tr, workerAddr)
	if len(wtx) != 2 {
		t.Fatalf("worker wallet has %d transactions in the close, want 2 (send, payout)", len(wtx))
	}
	wantWorker := workerBefore - wtx[0].Spent() + toWorker.Value - wtx[1].Fees
	if got := f.l.Balance(f.worker.w.Address(f.l.GlobalID())); got != wantWorker {
		t.Errorf("worker wallet %d, want %d", got, wantWorker)
	}
	ctx2 := txsOf(tr, clientAddr)
	if len(ctx2) != 1 {
		t.Fatalf("client wallet has %d transactions in the close, want 1 (payout)", len(ctx2))
	}
	if got, want := f.l.Balance(f.client.w.Address(f.l.GlobalID())), clientBefore+toClient.Value-ctx2[0].Fees; got != want {
		t.Errorf("client wallet %d, want %d", got, want)
	}
	f.checkConservation()
	t.Logf("%d vouchers, paid %d nanoTON; close fees %d (trace of %d txs)", len(amounts), paid, tr.Fees(), len(tr.Txs))
}

// The client starts an uncooperative close with a stale
// voucher; the worker's challenge with the newest one wins; Finish pays the
// worker the newest amount plus the contract's fine for the stale state.
func TestUncooperativeCloseChallengeStaleState(t *testing.T) {
	const deposit = 2_000_000_000
	f := newFixture(t, deposit)
	ctx := context.Background()
	payer := f.client.store.Payer(f.client.w)
	payee := f.worker.store.Payee(f.worker.w)
	// The worker's state given to the client when the channel opened.
	zero, err := payee.OwnState(f.ch.ID)
	if err != nil {
		t.Fatal(err)
	}

	paid := f.pay([]uint64{100_000_000, 150_000_000})
	stale, err := payee.Newest(f.ch.ID) // seqno 2
	if err != nil {
		t.Fatal(err)
	}
	paid += f.pay([]uint64{200_000_000, 7})
	newest, err := payee.Newest(f.ch.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := payer.Latest(f.ch.ID); r.Sent != paid || newest.State.Data.Sent != paid {
		t.Fatalf("client signed %d, worker holds %d, paid %d", r.Sent, newest.State.Data.Sent, paid)
	}
	own, err := payee.OwnState(f.ch.ID)
	if err != nil {
		t.Fatal(err)
	}

	// The client cheats: closes with the stale state.
	tr, err := f.client.chain.UncooperativeClose(ctx, f.ch, stale, zero)
	f.record(tr)
	if err != nil {
		t.Fatalf("start uncooperative close: %v", err)
	}
	st, _ := f.worker.chain.State(ctx, f.ch)
	if st.Status != settle.StatusClosureStarted || st.Storage.Quarantine.StateA.Sent != stale.State.Data.Sent {
		t.Fatalf("quarantine: %v %+v", st.Status, st.Storage.Quarantine)
	}
	// The worker's watcher sees the quarantine and challenges with the newest state.
	wctx, cancel := context.WithCancel(ctx)
	seen := false
	for s := range f.worker.chain.Watch(wctx, f.ch, 10*time.Millisecond) {
		if s.Status == settle.StatusClosureStarted {
			seen = true
			cancel()
		}
	}
	cancel()
	if !seen {
		t.Fatal("watcher did not report the quarantine")
	}
	tr, err = f.worker.chain.Challenge(ctx, f.ch, newest, own)
	f.record(tr)
	if err != nil {
		t.Fatalf("challenge: %v", err)
	}
	st, _ = f.worker.chain.State(ctx, f.ch)
	// The contract moves the fine from the cheater to the challenger by
	// adding it to the cheater's sent amount.
	q := st.Storage.Quarantine
	fine := f.ch.Closing.MisbehaviorFine
	if q.StateA.Sent != paid+fine || !q.Challenged {
		t.Fatalf("after challenge: quarantined A sent %d challenged %v; want %d + fine %d, true", q.StateA.Sent, q.Challenged, paid, fine)
	}
	// A second challenge, by the client, is refused.
	tr, err = f.client.chain.Challenge(ctx, f.ch, newest, own)
	f.record(tr)
	wantExit(t, tr, err, settle.ExitChallengeBySelf, settle.ExitAlreadyChallenged)

	// Finish too early is refused by the contract.
	tr, err = f.worker.chain.Finish(ctx, f.ch)
	f.record(tr)
	wantExit(t, tr, err, settle.ExitFinishTooEarly)

	f.l.Advance(time.Duration(f.ch.Closing.QuarantineDuration+f.ch.Closing.ConditionalCloseDuration+1) * time.Second)
	st, _ = f.worker.chain.State(ctx, f.ch)
	if st.Status != settle.StatusAwaitingFinish {
		t.Fatalf("after windows: %v", st.Status)
	}
	chAddr, _ := f.ch.Address()
	chBefore := f.l.Balance(chAddr)
	tr, err = f.worker.chain.Finish(ctx, f.ch)
	f.record(tr)
	if err != nil {
		t.Fatalf("finish: %v", err)
	}
	chF := settle.Friendly(chAddr)
	toWorker := payoutTo(t, tr, chF, friendly(f, f.worker.w))
	fin := txsOf(tr, chF)[0]
	actionB := payoutActionFee(t, fin)
	if toWorker.Value+toWorker.FwdFee+actionB != paid+fine {
		t.Errorf("worker payout %d + fwd %d + %d != newest %d + fine %d", toWorker.Value, toWorker.FwdFee, actionB, paid, fine)
	}
	toClient := payoutTo(t, tr, chF, friendly(f, f.client.w))
	if got, want := toClient.Value+toClient.FwdFee, chBefore+fin.InValue-fin.Fees-(paid+fine-actionB); got != want {
		t.Errorf("client payout %d, want %d", got, want)
	}
	if st, _ := f.worker.chain.State(ctx, f.ch); st.Status != settle.StatusClosed || st.Balance != 0 {
		t.Errorf("after finish: %v balance %d", st.Status, st.Balance)
	}
	f.checkConservation()
}

// payoutActionFee is the part of one payout's forward price charged in the
// contract's transaction. The contract sends two payouts of identical shape
// (channel_closed body, std addresses), so their forward prices are equal and
// each carries half of the transaction's action fees.
func payoutActionFee(t *testing.T, tx settle.Tx) uint64 {
	t.Helper()
	if len(tx.Out) != 2 || tx.Out[0].FwdFee != tx.Out[1].FwdFee || tx.ActionFees%2 != 0 {
		t.Fatalf("payout transaction: %d messages, forward fees %v, action fees %d: not two equal payouts", len(tx.Out), tx.Out, tx.ActionFees)
	}
	return tx.ActionFees / 2
}

// wantExit checks that a send failed with one of the exit codes in the contract.
func wantExit(t *testing.T, tr *settle.Trace, err error, codes ...int32) {
	t.Helper()
	if !errors.Is(err, settle.ErrContractFailed) {
		t.Fatalf("err = %v; want a contract failure with exit %v", err, codes)
	}
	got := tr.Failed().ExitCode
	for _, c := range codes {
		if got == c {
			return
		}
	}
	t.Fatalf("exit code %d; want one of %v", got, codes)
}

// BenchmarkDevledgerCooperativeClose: one cooperative close on the dev ledger
// (the worker's wallet transaction, the contract's, and both payouts), real
// contract and wallet code in the pure-Go TVM. Setup (open, vouchers) is not timed.
func BenchmarkDevledgerCooperativeClose(b *testing.B) {
	ctx := context.Background()
	for b.Loop() {
		b.StopTimer()
		f := newBenchFixture(b)
		cs, sigA, err := f.client.store.Payer(f.client.w).CloseState(f.ch.ID)
		if err != nil {
			b.Fatal(err)
		}
		sigB, err := f.worker.store.Payee(f.worker.w).Countersign(cs, sigA)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, err := f.worker.chain.CooperativeClose(ctx, f.ch, cs, sigA, sigB); err != nil {
			b.Fatal(err)
		}
	}
}

func newBenchFixture(b *testing.B) *fixture {
	f := newFixture(b, 1_000_000_000)
	f.pay([]uint64{1_000, 2_000, 3_000})
	return f
}

// The contract takes top-ups only before init (exit 100 after): a client adds
// funds by opening another channel.
func TestTopUpAfterInitRefused(t *testing.T) {
	f := newFixture(t, 1_000_000_000)
	tr, err := f.client.chain.TopUp(context.Background(), f.ch, 500_000_000)
	f.record(tr)
	wantExit(t, tr, err, settle.ExitAlreadyInited)
	// The refused top-up bounced back to the client's wallet, less fees.
	f.checkConservation()
}

// The client signs a newer state that sends less and starts an uncooperative
// close with it; the worker's own state names the newest voucher, so its
// challenge replaces the forged state and fines the client.
func TestClientForgedNewerLowerStateLoses(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 1_000_000_000)
	payee := f.worker.store.Payee(f.worker.w)
	zero, _ := payee.OwnState(f.ch.ID)
	paid := f.pay([]uint64{300_000_000, 1})
	forged, _ := settle.SignSemiChannel(settle.SemiChannel{ChannelID: f.ch.ID, Data: settle.SemiChannelBody{Seqno: 9, Sent: 1}}, f.client.w.PrivateKey())
	tr, err := f.client.chain.UncooperativeClose(ctx, f.ch, forged, zero)
	f.record(tr)
	if err != nil {
		t.Fatal(err)
	}
	newest, _ := payee.Newest(f.ch.ID)
	own, _ := payee.OwnState(f.ch.ID)
	tr, err = f.worker.chain.Challenge(ctx, f.ch, newest, own)
	f.record(tr)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := f.worker.chain.State(ctx, f.ch)
	if q := st.Storage.Quarantine; q.StateA.Sent != paid+f.ch.Closing.MisbehaviorFine {
		t.Fatalf("quarantined client state sends %d; want newest %d + fine", q.StateA.Sent, paid)
	}
	f.l.Advance(time.Duration(f.ch.Closing.QuarantineDuration+f.ch.Closing.ConditionalCloseDuration+1) * time.Second)
	tr, err = f.worker.chain.Finish(ctx, f.ch)
	f.record(tr)
	if err != nil {
		t.Fatal(err)
	}
	chAddr, _ := f.ch.Address()
	chF := settle.Friendly(chAddr)
	toWorker := payoutTo(t, tr, chF, friendly(f, f.worker.w))
	if got := toWorker.Value + toWorker.FwdFee + payoutActionFee(t, txsOf(tr, chF)[0]); got != paid+f.ch.Closing.MisbehaviorFine {
		t.Fatalf("worker paid %d; want %d + fine", got, paid)
	}
	f.checkConservation()
}

// Settle: refused during the quarantine (exit 110), accepted in the settle
// window, after which the contract's quarantine cell has lost its trailing
// challenged bit (ParseStorage reads it as absent); Finish then pays.
func TestSettleWindow(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 1_000_000_000)
	paid := f.pay([]uint64{100_000_000, 23})
	payee := f.worker.store.Payee(f.worker.w)
	newest, _ := payee.Newest(f.ch.ID)
	own, _ := payee.OwnState(f.ch.ID)
	tr, err := f.worker.chain.UncooperativeClose(ctx, f.ch, newest, own)
	f.record(tr)
	if err != nil {
		t.Fatal(err)
	}
	tr, err = f.worker.chain.Settle(ctx, f.ch, newest)
	f.record(tr)
	wantExit(t, tr, err, settle.ExitSettleTooEarly)
	f.l.Advance(time.Duration(f.ch.Closing.QuarantineDuration+1) * time.Second)
	tr, err = f.worker.chain.Settle(ctx, f.ch, newest)
	f.record(tr)
	if err != nil {
		t.Fatal(err)
	}
	st, err := f.worker.chain.State(ctx, f.ch)
	if err != nil {
		t.Fatal(err)
	}
	if st.Status != settle.StatusSettlingConditions || st.Storage.Quarantine.ChallengedPresent || st.Storage.Quarantine.StateA.Sent != paid {
		t.Fatalf("after settle: %v %+v", st.Status, st.Storage.Quarantine)
	}
	f.l.Advance(time.Duration(f.ch.Closing.ConditionalCloseDuration) * time.Second)
	tr, err = f.worker.chain.Finish(ctx, f.ch)
	f.record(tr)
	if err != nil {
		t.Fatal(err)
	}
	chAddr, _ := f.ch.Address()
	chF := settle.Friendly(chAddr)
	toWorker := payoutTo(t, tr, chF, friendly(f, f.worker.w))
	if got := toWorker.Value + toWorker.FwdFee + payoutActionFee(t, txsOf(tr, chF)[0]); got != paid {
		t.Fatalf("worker paid %d; want %d", got, paid)
	}
	f.checkConservation()
}

// Cooperative commit (the layout without v1.15.5's is_A bit) is accepted and
// raises the committed seqnos; an older voucher then cannot start a close
// (exit 105), and a commit that does not raise them is refused (108).
func TestCooperativeCommit(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 1_000_000_000)
	f.pay([]uint64{10, 20})
	payee := f.worker.store.Payee(f.worker.w)
	old, _ := payee.Newest(f.ch.ID) // seqno 2
	f.pay([]uint64{30})
	chAddr, _ := f.ch.Address()
	commit := func(seqA uint64) (*settle.Trace, error) {
		body := settle.CoopCommitBody(settle.CommitState{ChannelID: f.ch.ID, SeqnoA: seqA, SeqnoB: 1}, f.client.w.PrivateKey(), f.worker.w.PrivateKey())
		tr, err := f.worker.w.Send(ctx, f.l, settle.Transfer{To: chAddr, Amount: settle.DefaultOpValue, Body: body, Bounce: true})
		f.record(tr)
		if err == nil && tr.Failed() != nil {
			err = settle.ErrContractFailed
		}
		return tr, err
	}
	if _, err := commit(3); err != nil {
		t.Fatalf("commit: %v", err)
	}
	st, _ := f.worker.chain.State(ctx, f.ch)
	if st.Storage.CommittedSeqnoA != 3 || st.Storage.CommittedSeqnoB != 1 {
		t.Fatalf("committed seqnos %d, %d; want 3, 1", st.Storage.CommittedSeqnoA, st.Storage.CommittedSeqnoB)
	}
	tr, err := commit(3)
	wantExit(t, tr, err, settle.ExitSeqnoNotAbove)
	// B's state without counterparty data, at its committed seqno: only
	// the committed seqno of A can refuse the old voucher.
	bState, _ := settle.SignSemiChannel(settle.SemiChannel{ChannelID: f.ch.ID, Data: settle.SemiChannelBody{Seqno: 1}}, f.worker.w.PrivateKey())
	tr, err = f.worker.chain.UncooperativeClose(ctx, f.ch, old, bState)
	f.record(tr)
	wantExit(t, tr, err, settle.ExitOutdatedState)
	newest, _ := payee.Newest(f.ch.ID)
	tr, err = f.worker.chain.UncooperativeClose(ctx, f.ch, newest, bState)
	f.record(tr)
	if err != nil {
		t.Fatalf("close with the committed voucher: %v", err)
	}
	f.checkConservation()
}
