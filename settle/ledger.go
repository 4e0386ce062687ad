package settle

import (
	"context"
	"errors"
	"fmt"

	"github.com/xssnick/tonutils-go/address"
	"github.com/xssnick/tonutils-go/tlb"
	"github.com/xssnick/tonutils-go/tvm/cell"
)

// Ledger is the network a Chain acts on: the TON blockchain through a
// liteserver (package settle/tonchain) or the offline dev ledger (package
// settle/devledger, simulated, not TON). It is the small surface both
// implement; everything about channels and wallets is built above it, so
// the messages sent are the same on either.
type Ledger interface {
	// Name says which network this is, for logs and output, e.g.
	// "devledger (simulated chain, not TON)" or "ton testnet".
	Name() string
	// GlobalID is the network's global id (-239 mainnet, -3 testnet), part of V5R1 wallet ids.
	GlobalID() int32
	// Account returns the account's state; a missing account has Status "NON_EXIST".
	Account(ctx context.Context, addr *address.Address) (*AccountState, error)
	// SendExternal delivers a signed external message. On the dev ledger the
	// returned Trace holds every transaction it caused, in order; on TON it
	// holds what could be observed (at least the first transaction) or is
	// empty when only sending could be confirmed.
	SendExternal(ctx context.Context, msg *tlb.ExternalMessage) (*Trace, error)
	// Now is the network's current unix time as the contracts see it.
	Now(ctx context.Context) (uint32, error)
}

// ErrRefused is returned (wrapped) when the destination did not accept an
// external message; such a message leaves no transaction.
var ErrRefused = errors.New("external message refused")

// AccountState is what a Ledger reports about an account.
type AccountState struct {
	Status  string // tlb.AccountStatus: "ACTIVE", "UNINIT", "FROZEN", "NON_EXIST"
	Balance uint64 // nanoTON
	Code    *cell.Cell
	Data    *cell.Cell
	LastLT  uint64
}

// Active reports whether the account has code running.
func (a *AccountState) Active() bool { return a != nil && a.Status == string(tlb.AccountStatusActive) }

// Tx is one executed transaction, reduced to what settlement checks.
type Tx struct {
	Account  string `json:"account"` // user-friendly address
	LT       uint64 `json:"lt"`
	Hash     []byte `json:"hash"`
	InValue  uint64 `json:"in_value"`   // value of the inbound internal message (0 for external)
	InFwdFee uint64 `json:"in_fwd_fee"` // forward fee the inbound message carried
	OutValue uint64 `json:"out_value"`  // total value of outbound internal messages
	Fees     uint64 `json:"fees"`       // total fees of the transaction
	// ActionFees is the part of Fees charged for sending messages (the first
	// fraction of each forward price); the rest of each price rides in the
	// message as OutMsg.FwdFee.
	ActionFees uint64 `json:"action_fees"`
	// Computed is false when the compute phase was skipped (e.g. no code).
	Computed bool  `json:"computed"`
	Success  bool  `json:"success"` // compute and action phases succeeded
	ExitCode int32 `json:"exit_code"`
	// ResultCode is the action phase result code (0 when absent or fine).
	ResultCode int32 `json:"result_code"`
	Aborted    bool  `json:"aborted"`
	Bounced    bool  `json:"bounced"` // a bounce message was produced
	// BalanceAfter is the account balance after the transaction.
	BalanceAfter uint64 `json:"balance_after"`
	// Out lists the outbound internal messages.
	Out []OutMsg `json:"out,omitempty"`
}

// OutMsg is an outbound internal message of a Tx.
type OutMsg struct {
	To     string `json:"to"`
	Value  uint64 `json:"value"`
	FwdFee uint64 `json:"fwd_fee"`        // forward fee carried by the message, paid on delivery
	Body   []byte `json:"body,omitempty"` // BOC of the body cell
}

// Spent is what the transaction took from its account: fees plus the value
// and forward fees of its outbound messages.
func (tx Tx) Spent() uint64 {
	s := tx.Fees
	for _, m := range tx.Out {
		s += m.Value + m.FwdFee
	}
	return s
}

// Trace is the ordered list of transactions one message caused.
type Trace struct {
	Txs []Tx `json:"txs"`
}

// For returns the transactions of one account, in order.
func (t *Trace) For(addr *address.Address) []Tx {
	if t == nil || addr == nil {
		return nil
	}
	var out []Tx
	for _, tx := range t.Txs {
		if sameAddr(tx.Account, addr) {
			out = append(out, tx)
		}
	}
	return out
}

// Fees is the sum of fees over all transactions.
func (t *Trace) Fees() uint64 {
	var s uint64
	if t == nil {
		return 0
	}
	for _, tx := range t.Txs {
		s += tx.Fees
	}
	return s
}

// Failed returns the first transaction whose compute or action phase failed, or nil.
func (t *Trace) Failed() *Tx {
	if t == nil {
		return nil
	}
	for i := range t.Txs {
		if t.Txs[i].Computed && !t.Txs[i].Success {
			return &t.Txs[i]
		}
	}
	return nil
}

func sameAddr(s string, a *address.Address) bool {
	p, err := address.ParseAddr(s)
	if err != nil {
		return false
	}
	return p.Workchain() == a.Workchain() && string(p.Data()) == string(a.Data())
}

// TxFromResult reduces a parsed transaction to a Tx. Used by both ledgers.
func TxFromResult(tx *tlb.Transaction, acct *address.Address, balanceAfter uint64) Tx {
	out := Tx{Account: Friendly(address.NewAddress(0, byte(acct.Workchain()), acct.Data())), LT: tx.LT, Hash: tx.Hash, BalanceAfter: balanceAfter}
	if tx.TotalFees.Coins.Nano() != nil {
		out.Fees = tx.TotalFees.Coins.Nano().Uint64()
	}
	if tx.IO.In != nil {
		if im, ok := tx.IO.In.Msg.(*tlb.InternalMessage); ok {
			out.InValue = im.Amount.Nano().Uint64()
			out.InFwdFee = im.FwdFee.Nano().Uint64() + im.IHRFee.Nano().Uint64()
		}
	}
	if tx.IO.Out != nil {
		if msgs, err := tx.IO.Out.ToSlice(); err == nil {
			for _, m := range msgs {
				im, ok := m.Msg.(*tlb.InternalMessage)
				if !ok {
					continue
				}
				v := im.Amount.Nano().Uint64()
				out.OutValue += v
				om := OutMsg{To: Friendly(im.DstAddr), Value: v, FwdFee: im.FwdFee.Nano().Uint64() + im.IHRFee.Nano().Uint64()}
				if im.Body != nil {
					om.Body = im.Body.ToBOC()
				}
				out.Out = append(out.Out, om)
			}
		}
	}
	if d, ok := tx.Description.(tlb.TransactionDescriptionOrdinary); ok {
		out.Aborted = d.Aborted
		out.Bounced = d.BouncePhase != nil
		if vm, ok := d.ComputePhase.Phase.(tlb.ComputePhaseVM); ok {
			out.Computed = true
			out.ExitCode = vm.Details.ExitCode
			out.Success = vm.Success
		}
		if d.ActionPhase != nil {
			out.ResultCode = d.ActionPhase.ResultCode
			if d.ActionPhase.TotalActionFees != nil {
				out.ActionFees = d.ActionPhase.TotalActionFees.Nano().Uint64()
			}
			if !d.ActionPhase.Success {
				out.Success = false
			}
		}
	}
	return out
}

// Friendly prints an address in TON's user-friendly form (bounceable, base64url).
func Friendly(a *address.Address) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// ParseAddress reads a user-friendly or raw ("0:hex") address.
func ParseAddress(s string) (*address.Address, error) {
	if a, err := address.ParseAddr(s); err == nil {
		return a, nil
	}
	a, err := address.ParseRawAddr(s)
	if err != nil {
		return nil, fmt.Errorf("parse address %q: %w", s, err)
	}
	return a, nil
}
