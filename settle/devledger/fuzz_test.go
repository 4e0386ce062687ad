package devledger_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"log/slog"
	"testing"

	"github.com/xssnick/tonutils-go/tlb"

	"github.com/cocoon-network/cocoon/settle"
	"github.com/cocoon-network/cocoon/settle/devledger"
)

// recorder is a Ledger that keeps the external message instead of running it.
type recorder struct {
	*devledger.Ledger
	msg *tlb.ExternalMessage
}

func (r *recorder) SendExternal(_ context.Context, m *tlb.ExternalMessage) (*settle.Trace, error) {
	r.msg = m
	return &settle.Trace{}, nil
}

// FuzzSendExternalBOC feeds arbitrary bytes to what /v1/send runs: BOC
// parse, message checks, and the TVM on a funded wallet. Seeds are real
// wallet messages. Nothing may panic; a refused message changes nothing.
func FuzzSendExternalBOC(f *testing.F) {
	l, err := devledger.New(devledger.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		f.Fatal(err)
	}
	w := settle.NewWallet(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{5}, 32)))
	addr := w.Address(l.GlobalID())
	if _, err := l.Faucet(addr, 1_000_000_000); err != nil {
		f.Fatal(err)
	}
	rec := &recorder{Ledger: l}
	to := settle.NewWallet(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{6}, 32))).Address(l.GlobalID())
	for _, amt := range []uint64{1, 1000, 5_000_000} {
		if _, err := w.Send(context.Background(), rec, settle.Transfer{To: to, Amount: amt}); err != nil {
			f.Fatal(err)
		}
		c, err := tlb.ToCell(&tlb.Message{MsgType: tlb.MsgTypeExternalIn, Msg: rec.msg})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(c.ToBOC())
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 64<<10 {
			return
		}
		before := l.Total()
		if _, err := l.SendExternalBOC(b); err != nil && l.Total().Cmp(before) != 0 {
			t.Fatalf("refused message changed the money supply: %s -> %s", before, l.Total())
		}
	})
}
