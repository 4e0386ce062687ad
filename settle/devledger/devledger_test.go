package devledger_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/xssnick/tonutils-go/tlb"
	"github.com/xssnick/tonutils-go/tvm/cell"

	"github.com/cocoon-network/cocoon/settle"
	"github.com/cocoon-network/cocoon/settle/devledger"
)

func wallet(t *testing.T) *settle.Wallet {
	_, k, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return settle.NewWallet(k)
}

// Two "processes" (two clients of one service) open, pay and close a channel
// through the loopback service; the state file reloads to the same balances.
func TestServiceSharedByClients(t *testing.T) {
	ctx := context.Background()
	l, err := devledger.New()
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(t.TempDir(), "ledger.json")
	l.PersistTo(state)
	srv := httptest.NewServer(l.Handler())
	defer srv.Close()

	lc, err := devledger.Dial(ctx, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	lw, err := devledger.Dial(ctx, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	wc, ww := wallet(t), wallet(t)
	if _, err := lc.Faucet(ctx, wc.Address(lc.GlobalID()), 5_000_000_000); err != nil {
		t.Fatal(err)
	}
	if _, err := lw.Faucet(ctx, ww.Address(lw.GlobalID()), 500_000_000); err != nil {
		t.Fatal(err)
	}
	id, _ := settle.NewChannelID()
	ch := settle.Channel{ID: id, ClientKey: wc.PublicKey(), WorkerKey: ww.PublicKey(),
		ClientAddr: wc.Address(lc.GlobalID()), WorkerAddr: ww.Address(lc.GlobalID()), Closing: settle.DefaultClosing}
	cc, cw := settle.NewChain(lc, wc), settle.NewChain(lw, ww)
	if _, err := cc.Open(ctx, ch, 1_000_000_000); err != nil {
		t.Fatal(err)
	}
	st, err := cw.State(ctx, ch)
	if err != nil || st.Status != settle.StatusOpen || st.Storage.BalanceA != 1_000_000_000 {
		t.Fatalf("worker sees %+v, %v", st, err)
	}
	const paid = 123_456_789
	cs := settle.CloseState{ChannelID: id, BalanceA: 1_000_000_000 - paid, BalanceB: paid, SeqnoA: 2, SeqnoB: 1}
	tr, err := cw.CooperativeClose(ctx, ch, cs, cs.Sign(wc.PrivateKey()), cs.Sign(ww.PrivateKey()))
	if err != nil {
		t.Fatal(err)
	}
	chAddr, _ := ch.Address()
	var payout settle.OutMsg
	for _, tx := range tr.For(chAddr) {
		for _, m := range tx.Out {
			if p, _ := settle.ParseAddress(m.To); p != nil && string(p.Data()) == string(ch.WorkerAddr.Data()) {
				payout = m
			}
		}
		if payout.Value+payout.FwdFee+tx.ActionFees/2 != paid {
			t.Fatalf("worker payout %+v, action fees %d; want %d in all", payout, tx.ActionFees, paid)
		}
	}
	// A refused external message (bad signature on the wallet) says so.
	bad := &tlb.ExternalMessage{DstAddr: ww.Address(lw.GlobalID()), Body: cell.BeginCell().MustStoreUInt(0, 32).EndCell()}
	if _, err := lw.SendExternal(ctx, bad); !errors.Is(err, settle.ErrRefused) {
		t.Fatalf("bad external message: %v; want ErrRefused", err)
	}

	// The state file restores the same accounts.
	l2, _ := devledger.New()
	if err := l2.Load(state); err != nil {
		t.Fatal(err)
	}
	for _, a := range []*settle.Wallet{wc, ww} {
		addr := a.Address(devledger.GlobalID)
		if l.Balance(addr) != l2.Balance(addr) || l.Balance(addr) == 0 {
			t.Fatalf("reloaded balance %d, want %d", l2.Balance(addr), l.Balance(addr))
		}
	}
	if l.Total().Cmp(l2.Total()) != 0 {
		t.Fatalf("reloaded total %s, want %s", l2.Total(), l.Total())
	}
}

func TestCheckLoopback(t *testing.T) {
	for addr, ok := range map[string]bool{"127.0.0.1:0": true, "[::1]:8": true, "localhost:1": true, "0.0.0.0:1": false, "10.0.0.1:2": false, "x": false} {
		if err := devledger.CheckLoopback(addr); (err == nil) != ok {
			t.Errorf("CheckLoopback(%s) = %v", addr, err)
		}
	}
}
