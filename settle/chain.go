package settle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/xssnick/tonutils-go/address"
	"github.com/xssnick/tonutils-go/tvm/cell"
)

// Chain is what a node does with payment channels on a network. OnChain
// implements it over any Ledger (TON or the dev ledger).
type Chain interface {
	// Name is the network's name (Ledger.Name).
	Name() string
	// Open deploys the channel contract and funds party A (the client) with deposit.
	Open(ctx context.Context, ch Channel, deposit uint64) (*Trace, error)
	// TopUp adds amount to the sender's side. The contract accepts top-ups
	// only before init: on an initialised channel it refuses (exit 100,
	// ErrContractFailed) and the value bounces back less fees. Open funds the
	// client in one step, so more funds mean a new channel.
	TopUp(ctx context.Context, ch Channel, amount uint64) (*Trace, error)
	// CooperativeClose submits a close signed by both parties.
	CooperativeClose(ctx context.Context, ch Channel, cs CloseState, sigA, sigB [64]byte) (*Trace, error)
	// UncooperativeClose starts the quarantine with both parties' newest signed states.
	UncooperativeClose(ctx context.Context, ch Channel, a, b SignedSemiChannel) (*Trace, error)
	// Challenge answers a quarantine with newer signed states.
	Challenge(ctx context.Context, ch Channel, a, b SignedSemiChannel) (*Trace, error)
	// Settle settles the counterparty's conditional payments during the settle
	// window after the quarantine; vouchers carry none, so this only confirms
	// the counterparty's state sch on chain.
	Settle(ctx context.Context, ch Channel, sch SignedSemiChannel) (*Trace, error)
	// Finish pays out after the quarantine and settle windows.
	Finish(ctx context.Context, ch Channel) (*Trace, error)
	// State reads the channel contract.
	State(ctx context.Context, ch Channel) (*ChannelState, error)
	// Watch polls the channel every interval and sends each changed state
	// until ctx ends; the channel is closed then.
	Watch(ctx context.Context, ch Channel, every time.Duration) <-chan ChannelState
}

// ChannelStatus is the contract's phase, as get_channel_state computes it.
type ChannelStatus int

// Channel phases.
const (
	StatusMissing       ChannelStatus = iota // no contract (never deployed, or closed and gone)
	StatusUninitialized                      // deployed, not yet initialised
	StatusOpen
	StatusClosureStarted     // quarantine running: challenges accepted
	StatusSettlingConditions // quarantine over: conditionals may be settled
	StatusAwaitingFinish     // Finish may be sent
	StatusClosed             // closed: the contract paid out and holds no channel
)

var statusNames = [...]string{"missing", "uninitialized", "open", "closure-started", "settling", "awaiting-finish", "closed"}

func (s ChannelStatus) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return fmt.Sprintf("status(%d)", int(s))
}

// ChannelState is a snapshot of the channel contract.
type ChannelState struct {
	Status  ChannelStatus
	Address string // user-friendly
	Balance uint64 // the contract account's balance
	Storage *Storage
	LastLT  uint64
	Now     uint32
}

// OnChain implements Chain for one wallet over a Ledger. The wallet's key is
// its channel key: it is party A in channels where it is the client and B
// where it is the worker.
type OnChain struct {
	L Ledger
	W *Wallet
	// OpValue is the nanoTON attached to each contract message for gas; what
	// is left stays in the contract and goes to A at close. Zero: DefaultOpValue.
	OpValue uint64
	// Log receives one line per channel operation; nil: slog.Default().
	Log *slog.Logger
}

func (c *OnChain) logOp(op string, ch Channel, tr *Trace, err error) {
	l := c.Log
	if l == nil {
		l = slog.Default()
	}
	l = l.With("subsys", "settle", "chain", c.L.Name(), "channel", ch.ID.String(), "fees", tr.Fees())
	if err != nil {
		l.Warn(op+" failed", "err", err)
		return
	}
	l.Info(op)
}

// DefaultOpValue is attached to channel messages to pay the contract's gas.
const DefaultOpValue = 30_000_000

// NewChain is an OnChain for wallet w on l.
func NewChain(l Ledger, w *Wallet) *OnChain { return &OnChain{L: l, W: w} }

// Name implements Chain.
func (c *OnChain) Name() string { return c.L.Name() }

func (c *OnChain) opValue() uint64 {
	if c.OpValue == 0 {
		return DefaultOpValue
	}
	return c.OpValue
}

func (c *OnChain) isA(ch Channel) (bool, error) {
	pub := c.W.PublicKey()
	switch {
	case pub.Equal(ch.ClientKey):
		return true, nil
	case pub.Equal(ch.WorkerKey):
		return false, nil
	}
	return false, fmt.Errorf("channel %s: wallet key is neither party's", ch.ID)
}

// ErrContractFailed is returned (wrapped) when a transaction in the trace
// failed; the trace is returned too so callers can read the exit code.
var ErrContractFailed = errors.New("contract transaction failed")

func (c *OnChain) send(ctx context.Context, ch Channel, what string, value uint64, body *cell.Cell) (tr *Trace, err error) {
	addr, err := ch.Address()
	if err != nil {
		return nil, err
	}
	defer func() { c.logOp(what+" channel", ch, tr, err) }()
	tr, err = c.W.Send(ctx, c.L, Transfer{To: addr, Amount: value, Body: body, Bounce: true})
	if err != nil {
		return tr, fmt.Errorf("%s channel %s: %w", what, ch.ID, err)
	}
	if f := tr.Failed(); f != nil {
		return tr, fmt.Errorf("%s channel %s: %s exit code %d (action %d): %w", what, ch.ID, f.Account, f.ExitCode, f.ResultCode, ErrContractFailed)
	}
	return tr, nil
}

// Open implements Chain: one wallet message deploys the contract with a
// top-up of deposit for A, a second initialises it (both top-ups come
// before init in this contract).
func (c *OnChain) Open(ctx context.Context, ch Channel, deposit uint64) (tr *Trace, err error) {
	defer func() { c.logOp("open channel", ch, tr, err) }()
	return c.open(ctx, ch, deposit)
}

func (c *OnChain) open(ctx context.Context, ch Channel, deposit uint64) (*Trace, error) {
	isA, err := c.isA(ch)
	if err != nil {
		return nil, err
	}
	if !isA {
		return nil, fmt.Errorf("open channel %s: only the client (party A) opens and funds", ch.ID)
	}
	if deposit == 0 || deposit > maxContractCoins {
		return nil, fmt.Errorf("open channel %s: deposit %d out of range", ch.ID, deposit)
	}
	si, err := ch.StateInit()
	if err != nil {
		return nil, err
	}
	addr, err := ch.Address()
	if err != nil {
		return nil, err
	}
	tr, err := c.W.Send(ctx, c.L,
		Transfer{To: addr, Amount: deposit + c.opValue(), Body: TopUpBody(deposit, 0), StateInit: si},
		Transfer{To: addr, Amount: c.opValue(), Body: InitBody(ch.ID, deposit, 0, true, c.W.PrivateKey()), Bounce: true},
	)
	if err != nil {
		return tr, fmt.Errorf("open channel %s: %w", ch.ID, err)
	}
	if f := tr.Failed(); f != nil {
		return tr, fmt.Errorf("open channel %s: %s exit code %d: %w", ch.ID, f.Account, f.ExitCode, ErrContractFailed)
	}
	return tr, nil
}

// TopUp implements Chain.
func (c *OnChain) TopUp(ctx context.Context, ch Channel, amount uint64) (*Trace, error) {
	isA, err := c.isA(ch)
	if err != nil {
		return nil, err
	}
	addA, addB := amount, uint64(0)
	if !isA {
		addA, addB = 0, amount
	}
	return c.send(ctx, ch, "top up", amount+c.opValue(), TopUpBody(addA, addB))
}

// CooperativeClose implements Chain. Anyone may submit; the signatures authorise.
func (c *OnChain) CooperativeClose(ctx context.Context, ch Channel, cs CloseState, sigA, sigB [64]byte) (*Trace, error) {
	if cs.ChannelID != ch.ID {
		return nil, fmt.Errorf("close channel %s: close state is for channel %s", ch.ID, cs.ChannelID)
	}
	return c.send(ctx, ch, "close", c.opValue(), CoopCloseBody(cs, sigA, sigB))
}

// UncooperativeClose implements Chain; the message is signed by this wallet's channel key.
func (c *OnChain) UncooperativeClose(ctx context.Context, ch Channel, a, b SignedSemiChannel) (*Trace, error) {
	isA, err := c.isA(ch)
	if err != nil {
		return nil, err
	}
	body, err := StartUncoopBody(ch.ID, isA, a, b, c.W.PrivateKey())
	if err != nil {
		return nil, fmt.Errorf("start uncooperative close of channel %s: %w", ch.ID, err)
	}
	return c.send(ctx, ch, "start uncooperative close of", c.opValue(), body)
}

// Challenge implements Chain.
func (c *OnChain) Challenge(ctx context.Context, ch Channel, a, b SignedSemiChannel) (*Trace, error) {
	isA, err := c.isA(ch)
	if err != nil {
		return nil, err
	}
	body, err := ChallengeBody(ch.ID, isA, a, b, c.W.PrivateKey())
	if err != nil {
		return nil, fmt.Errorf("challenge channel %s: %w", ch.ID, err)
	}
	return c.send(ctx, ch, "challenge", c.opValue(), body)
}

// Settle implements Chain.
func (c *OnChain) Settle(ctx context.Context, ch Channel, sch SignedSemiChannel) (*Trace, error) {
	isA, err := c.isA(ch)
	if err != nil {
		return nil, err
	}
	body, err := SettleBody(ch.ID, isA, sch, c.W.PrivateKey())
	if err != nil {
		return nil, fmt.Errorf("settle channel %s: %w", ch.ID, err)
	}
	return c.send(ctx, ch, "settle", c.opValue(), body)
}

// Finish implements Chain. Anyone may send it.
func (c *OnChain) Finish(ctx context.Context, ch Channel) (*Trace, error) {
	return c.send(ctx, ch, "finish", c.opValue(), FinishBody())
}

// State implements Chain.
func (c *OnChain) State(ctx context.Context, ch Channel) (*ChannelState, error) {
	return ReadChannel(ctx, c.L, ch)
}

// ReadChannel reads the channel contract on l and computes its phase like the
// contract's get_channel_state, with the ledger's clock.
func ReadChannel(ctx context.Context, l Ledger, ch Channel) (*ChannelState, error) {
	addr, err := ch.Address()
	if err != nil {
		return nil, err
	}
	acc, err := l.Account(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("read channel %s: %w", ch.ID, err)
	}
	now, err := l.Now(ctx)
	if err != nil {
		return nil, fmt.Errorf("read channel %s: %w", ch.ID, err)
	}
	out := &ChannelState{Address: Friendly(addr), Balance: acc.Balance, LastLT: acc.LastLT, Now: now}
	if !acc.Active() {
		out.Status = StatusMissing
		if acc.LastLT != 0 {
			out.Status = StatusClosed
		}
		return out, nil
	}
	st, err := ParseStorage(acc.Data)
	if err != nil {
		return nil, fmt.Errorf("read channel %s: %w", ch.ID, err)
	}
	if err := ch.VerifyContract(acc.Code, st); err != nil {
		return nil, fmt.Errorf("read channel %s: %w", ch.ID, err)
	}
	out.Storage = &st
	out.Status = phase(st, now)
	return out, nil
}

func phase(st Storage, now uint32) ChannelStatus {
	if !st.Inited {
		// After a close the contract resets its storage to not-inited.
		if st.CommittedSeqnoA > 0 || st.CommittedSeqnoB > 0 {
			return StatusClosed
		}
		return StatusUninitialized
	}
	if st.Quarantine == nil {
		return StatusOpen
	}
	end := int64(st.Quarantine.Starts) + int64(st.Closing.QuarantineDuration)
	switch {
	case int64(now) < end:
		return StatusClosureStarted
	case int64(now) < end+int64(st.Closing.ConditionalCloseDuration):
		return StatusSettlingConditions
	}
	return StatusAwaitingFinish
}

// Watch implements Chain.
func (c *OnChain) Watch(ctx context.Context, ch Channel, every time.Duration) <-chan ChannelState {
	out := make(chan ChannelState, 1)
	go func() {
		defer close(out)
		t := time.NewTicker(every)
		defer t.Stop()
		var last *ChannelState
		for {
			st, err := c.State(ctx, ch)
			if err == nil && (last == nil || st.LastLT != last.LastLT || st.Status != last.Status) {
				select {
				case out <- *st:
					last = st
				case <-ctx.Done():
					return
				}
			}
			select {
			case <-t.C:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// LookupChannel reads the channel contract at addr from the ledger and rebuilds
// the Channel it holds, trusting nothing but the chain: the account must run the
// channel code, and the Channel rebuilt from its storage (id, keys, payout
// addresses, closing config, excess fee) must hash to addr, so nobody can make a
// contract at addr that claims other parties. The state says whether it is open
// and what the client deposited (Storage.BalanceA). A missing or closed account
// is an error.
func LookupChannel(ctx context.Context, l Ledger, addr *address.Address) (Channel, *ChannelState, error) {
	acc, err := l.Account(ctx, addr)
	if err != nil {
		return Channel{}, nil, fmt.Errorf("look up channel %s: %w", Friendly(addr), err)
	}
	if !acc.Active() {
		return Channel{}, nil, fmt.Errorf("look up channel %s: account is %s, not a live contract", Friendly(addr), acc.Status)
	}
	st, err := ParseStorage(acc.Data)
	if err != nil {
		return Channel{}, nil, fmt.Errorf("look up channel %s: %w", Friendly(addr), err)
	}
	ch := Channel{
		ID: st.ChannelID, ClientKey: st.KeyA, WorkerKey: st.KeyB,
		ClientAddr: st.Payments.DestA, WorkerAddr: st.Payments.DestB,
		Closing: st.Closing, ExcessFee: st.Payments.ExcessFee,
	}
	if err := ch.VerifyContract(acc.Code, st); err != nil {
		return Channel{}, nil, fmt.Errorf("look up channel %s: %w", Friendly(addr), err)
	}
	want, err := ch.Address()
	if err != nil {
		return Channel{}, nil, fmt.Errorf("look up channel %s: %w", Friendly(addr), err)
	}
	if !want.Equals(addr) {
		return Channel{}, nil, fmt.Errorf("look up channel %s: its storage belongs to %s", Friendly(addr), Friendly(want))
	}
	now, err := l.Now(ctx)
	if err != nil {
		return Channel{}, nil, fmt.Errorf("look up channel %s: %w", Friendly(addr), err)
	}
	out := &ChannelState{Address: Friendly(addr), Balance: acc.Balance, LastLT: acc.LastLT, Now: now, Storage: &st, Status: phase(st, now)}
	return ch, out, nil
}
