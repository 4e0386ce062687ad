package settle_test

import (
	"context"
	"crypto/ed25519"
	"testing"

	"github.com/cocoon-network/cocoon/settle"
	"github.com/cocoon-network/cocoon/settle/devledger"
)

func TestSpike(t *testing.T) {
	ctx := context.Background()
	l, err := devledger.New()
	if err != nil {
		t.Fatal(err)
	}
	_, ka, _ := ed25519.GenerateKey(nil)
	_, kb, _ := ed25519.GenerateKey(nil)
	wa, wb := settle.NewWallet(ka), settle.NewWallet(kb)
	aAddr, bAddr := wa.Address(l.GlobalID()), wb.Address(l.GlobalID())
	if _, err := l.Faucet(aAddr, 10_000_000_000); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Faucet(bAddr, 1_000_000_000); err != nil {
		t.Fatal(err)
	}
	id, _ := settle.NewChannelID()
	ch := settle.Channel{ID: id, ClientKey: wa.PublicKey(), WorkerKey: wb.PublicKey(), ClientAddr: aAddr, WorkerAddr: bAddr, Closing: settle.DefaultClosing}
	ca, cb := settle.NewChain(l, wa), settle.NewChain(l, wb)
	tr, err := ca.Open(ctx, ch, 2_000_000_000)
	for _, tx := range tr.Txs {
		t.Logf("%+v", tx)
	}
	if err != nil {
		t.Fatal(err)
	}
	st, err := ca.State(ctx, ch)
	t.Logf("%+v %+v %v", st, st.Storage, err)
	tr, err = ca.TopUp(ctx, ch, 1_000_000_000)
	for _, tx := range tr.Txs {
		t.Logf("topup %+v", tx)
	}
	t.Log(err)
	v, _ := settle.SignSemiChannel(settle.SemiChannel{ChannelID: id, Data: settle.SemiChannelBody{Seqno: 3, Sent: 500_000_000}}, ka)
	z, _ := settle.SignSemiChannel(settle.SemiChannel{ChannelID: id, Data: settle.SemiChannelBody{Seqno: 0, Sent: 0}}, kb)
	tr, err = cb.UncooperativeClose(ctx, ch, v, z)
	for _, tx := range tr.Txs {
		t.Logf("uncoop %+v", tx)
	}
	t.Log(err)
	st, err = ca.State(ctx, ch)
	t.Logf("%+v %+v %+v %v", st, st.Storage, st.Storage.Quarantine, err)
	cs := settle.CloseState{ChannelID: id, BalanceA: 1_500_000_000, BalanceB: 500_000_000, SeqnoA: 4, SeqnoB: 1}
	tr, err = cb.CooperativeClose(ctx, ch, cs, cs.Sign(ka), cs.Sign(kb))
	for _, tx := range tr.Txs {
		t.Logf("close %+v", tx)
	}
	t.Log(err)
	st, err = ca.State(ctx, ch)
	t.Logf("%+v %v", st, err)
	t.Log(l.Balance(aAddr), l.Balance(bAddr))
}
