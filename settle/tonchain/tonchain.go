// Package tonchain is a settle.Ledger on the real TON blockchain, through
// tonutils-go's liteclient and a global network config (URL or file). Wallet
// and channel messages are the ones settle builds for every Ledger; this
// package only reads accounts and sends external messages.
package tonchain

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/xssnick/tonutils-go/address"
	"github.com/xssnick/tonutils-go/liteclient"
	"github.com/xssnick/tonutils-go/tlb"
	"github.com/xssnick/tonutils-go/ton"

	"github.com/cocoon-network/cocoon/settle"
)

// Network names and their public global configs.
var Configs = map[string]string{
	"mainnet": "https://ton.org/global.config.json",
	"testnet": "https://ton.org/testnet-global.config.json",
}

// API is the part of tonutils-go's ton.APIClientWrapped this package uses.
type API interface {
	CurrentMasterchainInfo(ctx context.Context) (*ton.BlockIDExt, error)
	GetAccount(ctx context.Context, block *ton.BlockIDExt, addr *address.Address) (*tlb.Account, error)
	SendExternalMessageWaitTransaction(ctx context.Context, ext *tlb.ExternalMessage) (*tlb.Transaction, *ton.BlockIDExt, []byte, error)
}

// Ledger implements settle.Ledger over a liteserver connection pool.
type Ledger struct {
	api      API
	network  string
	globalID int32
}

// New connects to network ("mainnet" or "testnet") using config, a URL or a
// file path of the global config; empty config means the network's public one.
func New(ctx context.Context, network, config string) (*Ledger, error) {
	gid, err := GlobalIDOf(network)
	if err != nil {
		return nil, err
	}
	if config == "" {
		config = Configs[network]
	}
	pool := liteclient.NewConnectionPool()
	if strings.HasPrefix(config, "http://") || strings.HasPrefix(config, "https://") {
		err = pool.AddConnectionsFromConfigUrl(ctx, config)
	} else {
		if _, serr := os.Stat(config); serr != nil {
			return nil, fmt.Errorf("ton %s: global config: %w", network, serr)
		}
		err = pool.AddConnectionsFromConfigFile(config)
	}
	if err != nil {
		return nil, fmt.Errorf("ton %s: connect liteservers from %s: %w", network, config, err)
	}
	api := ton.NewAPIClient(pool, ton.ProofCheckPolicyFast).WithRetry()
	return NewWithAPI(api, network, gid), nil
}

// NewWithAPI wraps an existing API (tests use a fake one).
func NewWithAPI(api API, network string, globalID int32) *Ledger {
	return &Ledger{api: api, network: network, globalID: globalID}
}

// GlobalIDOf maps a network name to its global id.
func GlobalIDOf(network string) (int32, error) {
	switch network {
	case "mainnet":
		return settle.MainnetGlobalID, nil
	case "testnet":
		return settle.TestnetGlobalID, nil
	}
	return 0, fmt.Errorf("ton network %q: want mainnet or testnet", network)
}

// Name implements settle.Ledger.
func (l *Ledger) Name() string { return "ton " + l.network }

// GlobalID implements settle.Ledger.
func (l *Ledger) GlobalID() int32 { return l.globalID }

// Now implements settle.Ledger: the masterchain follows the wall clock.
func (l *Ledger) Now(context.Context) (uint32, error) { return uint32(time.Now().Unix()), nil }

// Account implements settle.Ledger.
func (l *Ledger) Account(ctx context.Context, addr *address.Address) (*settle.AccountState, error) {
	block, err := l.api.CurrentMasterchainInfo(ctx)
	if err != nil {
		return nil, fmt.Errorf("ton: masterchain info: %w", err)
	}
	acc, err := l.api.GetAccount(ctx, block, addr)
	if err != nil {
		return nil, fmt.Errorf("ton: account %s: %w", settle.Friendly(addr), err)
	}
	return AccountState(acc), nil
}

// AccountState converts a liteserver account.
func AccountState(acc *tlb.Account) *settle.AccountState {
	out := &settle.AccountState{Status: string(tlb.AccountStatusNonExist)}
	if acc == nil || acc.State == nil || !acc.State.IsValid {
		return out
	}
	out.Status = string(acc.State.Status)
	if acc.State.Balance.Nano() != nil {
		out.Balance = acc.State.Balance.Nano().Uint64()
	}
	out.Code, out.Data, out.LastLT = acc.Code, acc.Data, acc.LastTxLT
	return out
}

// SendExternal implements settle.Ledger: it sends and waits for the
// destination's transaction; the trace holds that one transaction (what the
// contract did with the wallet's internal messages is read back with Account).
func (l *Ledger) SendExternal(ctx context.Context, msg *tlb.ExternalMessage) (*settle.Trace, error) {
	if msg == nil || msg.DstAddr == nil {
		return nil, errors.New("ton: external message without destination")
	}
	tx, _, _, err := l.api.SendExternalMessageWaitTransaction(ctx, msg)
	if err != nil {
		return nil, fmt.Errorf("ton: send to %s: %w", settle.Friendly(msg.DstAddr), err)
	}
	st, err := l.Account(ctx, msg.DstAddr)
	var bal uint64
	if err == nil {
		bal = st.Balance
	}
	return &settle.Trace{Txs: []settle.Tx{settle.TxFromResult(tx, msg.DstAddr, bal)}}, nil
}
