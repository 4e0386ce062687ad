// Package devledger is an offline ledger for tests and testnets: SIMULATED,
// NOT TON. It keeps accounts, balances and logical time, and executes every
// message with tonutils-go's pure-Go TVM (tvm.EmulateTransaction) running the
// real contract code — the payment-channel contract and the V5R1 wallet —
// with a mainnet blockchain config snapshot, so fees, gas, bounces and the
// contract's rules are the real ones. Outgoing internal messages are
// delivered in order by transactions on their destinations.
//
// What it does not simulate: shards, blocks, masterchain, validators,
// message queues across shards. Time is the wall clock plus an offset that
// tests move forward with Advance.
//
// Ledger is used in-process; Serve exposes it on a loopback HTTP endpoint and
// Client implements settle.Ledger against that endpoint so that several node
// processes share one ledger (cocoon ledger serve).
package devledger

import (
	"context"
	_ "embed"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"sync"
	"time"

	"github.com/xssnick/tonutils-go/address"
	"github.com/xssnick/tonutils-go/tlb"
	"github.com/xssnick/tonutils-go/tvm"
	"github.com/xssnick/tonutils-go/tvm/cell"

	"github.com/cocoon-network/cocoon/settle"
)

// Label names the dev ledger everywhere it is shown.
const Label = "devledger (simulated chain, not TON)"

// GlobalID is the network id the dev ledger reports (mainnet's, so wallet
// addresses match those printed by cocoon init).
const GlobalID = -239

// mainnetConfig is the blockchain config root of a mainnet block (global
// version 13), from tonutils-go v1.18.0 tvm/testdata/transaction_replay_regression.json
// ("config.config_root_boc_base64", 83,735 bytes). With it, fees and gas
// limits are mainnet's.
//
//go:embed mainnet-config.boc
var mainnetConfig []byte

// maxTraceTxs bounds the transactions one external message may cause.
const maxTraceTxs = 256

// FaucetAddress is the source of faucet transfers (the zero address).
var FaucetAddress = address.NewAddress(0, 0, make([]byte, 32))

type account struct {
	addr *address.Address
	acc  *tvm.PreparedAccount
	stat *cell.Cell
}

// Ledger is the in-process dev ledger. It is safe for concurrent use: one
// message (with everything it causes) executes at a time.
type Ledger struct {
	mu       sync.Mutex
	machine  *tvm.TVM
	cfg      *tvm.PreparedBlockchainConfig
	accounts map[string]*account
	lt       uint64
	offset   time.Duration
	clock    func() time.Time
	seq      uint64
	log      *slog.Logger
	onChange func()
}

// Option configures a Ledger.
type Option func(*Ledger)

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(d *Ledger) { d.log = l } }

// WithClock sets the wall clock (default time.Now).
func WithClock(f func() time.Time) Option { return func(d *Ledger) { d.clock = f } }

// New makes an empty ledger.
func New(opts ...Option) (*Ledger, error) {
	root, err := cell.FromBOC(mainnetConfig)
	if err != nil {
		return nil, fmt.Errorf("devledger: load config: %w", err)
	}
	cfg, err := tvm.PrepareBlockchainConfig(root)
	if err != nil {
		return nil, fmt.Errorf("devledger: prepare config: %w", err)
	}
	d := &Ledger{
		machine:  tvm.NewTVM(),
		cfg:      cfg,
		accounts: map[string]*account{},
		lt:       1_000_000,
		clock:    time.Now,
		log:      slog.Default(),
	}
	for _, o := range opts {
		o(d)
	}
	d.log = d.log.With("subsys", "devledger", "chain", Label)
	return d, nil
}

// Name implements settle.Ledger.
func (d *Ledger) Name() string { return Label }

// GlobalID implements settle.Ledger.
func (d *Ledger) GlobalID() int32 { return GlobalID }

// Now implements settle.Ledger: wall clock plus the Advance offset.
func (d *Ledger) Now(context.Context) (uint32, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.now(), nil
}

func (d *Ledger) now() uint32 { return uint32(d.clock().Add(d.offset).Unix()) }

// Advance moves ledger time forward (tests: quarantine windows).
func (d *Ledger) Advance(dt time.Duration) {
	d.mu.Lock()
	d.offset += dt
	d.mu.Unlock()
	d.changed()
}

func key(a *address.Address) string {
	return fmt.Sprintf("%d:%x", a.Workchain(), a.Data())
}

// Account implements settle.Ledger.
func (d *Ledger) Account(_ context.Context, addr *address.Address) (*settle.AccountState, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	a := d.accounts[key(addr)]
	if a == nil {
		return &settle.AccountState{Status: string(tlb.AccountStatusNonExist)}, nil
	}
	return accountState(a.acc), nil
}

func accountState(p *tvm.PreparedAccount) *settle.AccountState {
	st := p.State()
	out := &settle.AccountState{Status: string(tlb.AccountStatusNonExist), LastLT: p.ShardAccount().LastTransLT}
	if st == nil || !st.IsValid {
		return out
	}
	out.Status = string(st.Status)
	if st.Balance.Nano() != nil {
		out.Balance = st.Balance.Nano().Uint64()
	}
	if st.StateInit != nil {
		out.Code, out.Data = st.StateInit.Code, st.StateInit.Data
	}
	return out
}

// Balance returns an account's balance in nanoTON (0 when absent).
func (d *Ledger) Balance(addr *address.Address) uint64 {
	st, _ := d.Account(context.Background(), addr)
	return st.Balance
}

func (d *Ledger) get(addr *address.Address) (*account, error) {
	if a := d.accounts[key(addr)]; a != nil {
		return a, nil
	}
	shard := &tlb.ShardAccount{Account: cell.BeginCell().MustStoreBoolBit(false).EndCell(), LastTransHash: make([]byte, 32)}
	p, err := tvm.PrepareAccount(shard, addr)
	if err != nil {
		return nil, err
	}
	return &account{addr: addr, acc: p}, nil
}

// SendExternal implements settle.Ledger: it runs the external message and
// every internal message it causes, and returns the transactions in order.
func (d *Ledger) SendExternal(_ context.Context, msg *tlb.ExternalMessage) (*settle.Trace, error) {
	if msg == nil || msg.DstAddr == nil {
		return nil, errors.New("devledger: external message without destination")
	}
	c, err := tlb.ToCell(&tlb.Message{MsgType: tlb.MsgTypeExternalIn, Msg: msg})
	if err != nil {
		return nil, fmt.Errorf("devledger: serialize external message: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	tr, err := d.run(c, msg.DstAddr)
	if err == nil {
		d.changedLocked()
	}
	return tr, err
}

// SendExternalBOC is SendExternal for a serialized Message cell (HTTP service).
func (d *Ledger) SendExternalBOC(boc []byte) (*settle.Trace, error) {
	c, err := cell.FromBOC(boc)
	if err != nil {
		return nil, fmt.Errorf("devledger: parse message: %w", err)
	}
	pm, err := tvm.PrepareMessage(c)
	if err != nil {
		return nil, fmt.Errorf("devledger: %w", err)
	}
	if pm.Message().MsgType != tlb.MsgTypeExternalIn {
		return nil, errors.New("devledger: only external inbound messages can be sent")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	tr, err := d.run(c, pm.Message().Msg.DestAddr())
	if err == nil {
		d.changedLocked()
	}
	return tr, err
}

// Faucet credits amount nanoTON to addr out of thin air: an internal message
// from FaucetAddress, non-bounceable. Dev ledger only.
func (d *Ledger) Faucet(addr *address.Address, amount uint64) (*settle.Trace, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	im := &tlb.InternalMessage{
		IHRDisabled: true, SrcAddr: FaucetAddress, DstAddr: addr,
		Amount: tlb.FromNanoTONU(amount), CreatedLT: d.lt, CreatedAt: d.now(),
		Body: cell.BeginCell().EndCell(),
	}
	c, err := tlb.ToCell(&tlb.Message{MsgType: tlb.MsgTypeInternal, Msg: im})
	if err != nil {
		return nil, fmt.Errorf("devledger: faucet message: %w", err)
	}
	tr, err := d.run(c, addr)
	if err == nil {
		d.log.Info("faucet (simulated funds)", "to", settle.Friendly(addr), "nanoton", amount)
		d.changedLocked()
	}
	return tr, err
}

func (d *Ledger) run(first *cell.Cell, dst *address.Address) (*settle.Trace, error) {
	type pending struct {
		c   *cell.Cell
		msg *tlb.Message
		dst *address.Address
	}
	now := d.now()
	d.seq++
	seed := make([]byte, 32)
	binary.BigEndian.PutUint64(seed, d.seq)
	block, err := d.cfg.NewBlockContext(tvm.BlockOptions{Now: now, RandSeed: seed, BlockLT: int64(d.lt)})
	if err != nil {
		return nil, fmt.Errorf("devledger: block context: %w", err)
	}
	pm, err := tvm.PrepareMessage(first)
	if err != nil {
		return nil, fmt.Errorf("devledger: %w", err)
	}
	queue := []pending{{c: first, msg: pm.Message(), dst: dst}}
	tr := &settle.Trace{}
	for len(queue) > 0 {
		if len(tr.Txs) >= maxTraceTxs {
			return tr, fmt.Errorf("devledger: more than %d transactions from one message", maxTraceTxs)
		}
		p := queue[0]
		queue = queue[1:]
		a, err := d.get(p.dst)
		if err != nil {
			return tr, fmt.Errorf("devledger: account %s: %w", settle.Friendly(p.dst), err)
		}
		prepared, err := tvm.PrepareParsedMessage(p.c, p.msg)
		if err != nil {
			return tr, fmt.Errorf("devledger: %w", err)
		}
		res, err := d.machine.EmulateTransaction(block, a.acc, prepared, tvm.TransactionOptions{
			LogicalTime:        int64(d.lt + 1),
			AccountStorageStat: a.stat,
		})
		if err != nil {
			return tr, fmt.Errorf("devledger: execute on %s: %w", settle.Friendly(p.dst), err)
		}
		if p.msg.MsgType == tlb.MsgTypeExternalIn && !res.Accepted {
			return tr, fmt.Errorf("devledger: %s (exit code %d): %w", settle.Friendly(p.dst), res.ExitCode, settle.ErrRefused)
		}
		tx, err := res.ParseTransaction()
		if err != nil {
			return tr, fmt.Errorf("devledger: %w", err)
		}
		a.acc = res.NextAccount
		a.stat = res.AccountStorageStat
		d.accounts[key(p.dst)] = a
		d.lt = res.EndLT
		bal := accountState(a.acc).Balance
		tr.Txs = append(tr.Txs, settle.TxFromResult(tx, p.dst, bal))
		for _, om := range res.OutMessages {
			if om.Msg == nil || om.Msg.MsgType != tlb.MsgTypeInternal {
				continue
			}
			queue = append(queue, pending{c: om.Cell, msg: om.Msg, dst: om.Msg.Msg.DestAddr()})
		}
	}
	return tr, nil
}

// Total is the sum of all account balances (the money supply; the faucet and
// fees change it).
func (d *Ledger) Total() *big.Int {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := new(big.Int)
	for _, a := range d.accounts {
		s.Add(s, new(big.Int).SetUint64(accountState(a.acc).Balance))
	}
	return s
}

func (d *Ledger) changed() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.changedLocked()
}

func (d *Ledger) changedLocked() {
	if d.onChange != nil {
		d.onChange()
	}
}
