package settle_test

import (
	"context"
	"testing"

	"github.com/cocoon-network/cocoon/settle"
)

// TestLookupChannel rebuilds an opened channel from its address alone, and
// refuses an address that holds no channel contract.
func TestLookupChannel(t *testing.T) {
	const deposit = 2_000_000_000
	f := newFixture(t, deposit)
	ctx := context.Background()
	addr, err := f.ch.Address()
	if err != nil {
		t.Fatal(err)
	}
	ch, st, err := settle.LookupChannel(ctx, f.l, addr)
	if err != nil {
		t.Fatalf("look up: %v", err)
	}
	if ch.ID != f.ch.ID || !ch.ClientKey.Equal(f.ch.ClientKey) || !ch.WorkerKey.Equal(f.ch.WorkerKey) ||
		!ch.ClientAddr.Equals(f.ch.ClientAddr) || !ch.WorkerAddr.Equals(f.ch.WorkerAddr) ||
		ch.Closing != f.ch.Closing || ch.ExcessFee != f.ch.ExcessFee {
		t.Fatalf("rebuilt channel %+v, opened %+v", ch, f.ch)
	}
	if st.Status != settle.StatusOpen || st.Storage.BalanceA != deposit {
		t.Fatalf("status %v, balance A %d; want open, %d", st.Status, st.Storage.BalanceA, deposit)
	}
	// A wallet is a live account but not a channel.
	if _, _, err := settle.LookupChannel(ctx, f.l, f.worker.w.Address(f.l.GlobalID())); err == nil {
		t.Fatal("a wallet's address was taken for a channel")
	}
	// A channel never deployed: no account.
	other := f.ch
	other.ID[0] ^= 1
	oaddr, err := other.Address()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := settle.LookupChannel(ctx, f.l, oaddr); err == nil {
		t.Fatal("an address with no account was taken for a channel")
	}
}
