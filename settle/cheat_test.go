package settle_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/settle"
)

// Each kind of bad voucher is refused off-chain by Accept and,
// presented to the real contract on the dev ledger, by the contract.
func TestCheatingRefused(t *testing.T) {
	const deposit = 1_000_000_000
	ctx := context.Background()
	_, stranger, _ := ed25519.GenerateKey(nil)

	type cheat struct {
		name    string
		voucher func(f *fixture) settle.SignedSemiChannel
		offErr  error
		// onChain presents the bad state to the contract and returns the trace.
		onChain func(f *fixture, bad settle.SignedSemiChannel) (*settle.Trace, error)
		exit    int32
	}
	// The worker tries to close with the bad client state.
	workerCloses := func(f *fixture, bad settle.SignedSemiChannel) (*settle.Trace, error) {
		own, err := f.worker.store.Payee(f.worker.w).OwnState(f.ch.ID)
		if err != nil {
			f.t.Fatal(err)
		}
		return f.worker.chain.UncooperativeClose(ctx, f.ch, bad, own)
	}
	cheats := []cheat{{
		name: "forged signature",
		voucher: func(f *fixture) settle.SignedSemiChannel {
			v, _ := settle.SignSemiChannel(settle.SemiChannel{ChannelID: f.ch.ID, Data: settle.SemiChannelBody{Seqno: 5, Sent: 300_000_000}}, stranger)
			return v
		},
		offErr: settle.ErrBadSignature, onChain: workerCloses, exit: settle.ExitWrongSignature,
	}, {
		name: "wrong channel id",
		voucher: func(f *fixture) settle.SignedSemiChannel {
			other := f.ch.ID
			other[0] ^= 1
			v, _ := settle.SignSemiChannel(settle.SemiChannel{ChannelID: other, Data: settle.SemiChannelBody{Seqno: 5, Sent: 300_000_000}}, f.client.w.PrivateKey())
			return v
		},
		offErr: settle.ErrUnknownChannel, onChain: workerCloses, exit: settle.ExitWrongChannelID,
	}, {
		name: "decreasing amount",
		voucher: func(f *fixture) settle.SignedSemiChannel {
			// Newer seqno than the accepted one (seqno 2, 300M), lower amount.
			v, _ := settle.SignSemiChannel(settle.SemiChannel{ChannelID: f.ch.ID, Data: settle.SemiChannelBody{Seqno: 3, Sent: 299_999_999}}, f.client.w.PrivateKey())
			return v
		},
		offErr: settle.ErrAmountDecreased,
		// The worker closes with the newest state and its own state naming
		// it; the client challenges with a newer seqno that sends less.
		onChain: func(f *fixture, bad settle.SignedSemiChannel) (*settle.Trace, error) {
			newest, _ := f.worker.store.Payee(f.worker.w).Newest(f.ch.ID)
			own, _ := f.worker.store.Payee(f.worker.w).OwnState(f.ch.ID)
			tr, err := f.worker.chain.UncooperativeClose(ctx, f.ch, newest, own)
			f.record(tr)
			if err != nil {
				f.t.Fatalf("honest close: %v", err)
			}
			return f.client.chain.Challenge(ctx, f.ch, bad, own)
		},
		exit: settle.ExitOutdatedState,
	}, {
		name: "amount above deposit",
		voucher: func(f *fixture) settle.SignedSemiChannel {
			v, _ := settle.SignSemiChannel(settle.SemiChannel{ChannelID: f.ch.ID, Data: settle.SemiChannelBody{Seqno: 3, Sent: deposit + 1}}, f.client.w.PrivateKey())
			return v
		},
		offErr: settle.ErrOverDeposit,
		// The contract takes such a state into quarantine but cannot pay it:
		// the finish fails with an integer out of range (exit 5) and the
		// channel stays stuck — the reason Accept refuses it.
		onChain: func(f *fixture, bad settle.SignedSemiChannel) (*settle.Trace, error) {
			tr, err := workerCloses(f, bad)
			f.record(tr)
			if err != nil {
				f.t.Fatalf("start uncooperative close: %v", err)
			}
			f.l.Advance(time.Duration(f.ch.Closing.QuarantineDuration+f.ch.Closing.ConditionalCloseDuration+1) * time.Second)
			return f.worker.chain.Finish(ctx, f.ch)
		},
		exit: settle.ExitIntegerOutOfRange,
	}}
	for _, c := range cheats {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, deposit)
			f.t = t
			f.pay([]uint64{100_000_000, 200_000_000})
			payee := f.worker.store.Payee(f.worker.w)
			before, _ := payee.Latest(f.ch.ID)
			bad := c.voucher(f)
			enc, err := settle.EncodeVoucher(bad)
			if err != nil {
				t.Fatal(err)
			}
			newly, err := payee.Accept(enc)
			if !errors.Is(err, c.offErr) || newly != 0 {
				t.Fatalf("Accept = %d, %v; want 0, %v", newly, err, c.offErr)
			}
			after, _ := payee.Latest(f.ch.ID)
			if after.Seqno != before.Seqno || after.Sent != before.Sent || string(after.Voucher) != string(before.Voucher) {
				t.Fatalf("refused voucher changed the store: %+v -> %+v", before, after)
			}
			tr, err := c.onChain(f, bad)
			f.record(tr)
			wantExit(t, tr, err, c.exit)
			f.checkConservation()
		})
	}
}

func TestVoucherSeqnoLimit(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(nil)
	v, _ := settle.SignSemiChannel(settle.SemiChannel{Data: settle.SemiChannelBody{Seqno: 1 << 32, Sent: 1}}, key)
	enc, _ := settle.EncodeVoucher(v)
	if _, err := settle.DecodeVoucher(enc); !errors.Is(err, settle.ErrMalformedVoucher) {
		t.Fatalf("DecodeVoucher(seqno 2^32) = %v; want ErrMalformedVoucher", err)
	}
}
