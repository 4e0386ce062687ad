package node

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-configfs-tsm/configfs/linuxtsm"

	"github.com/cocoon-network/cocoon/enclave"
	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/market/service"
	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/backends"
	"github.com/cocoon-network/cocoon/settle"
	"github.com/cocoon-network/cocoon/settle/devledger"
	"github.com/cocoon-network/cocoon/settle/tonchain"
)

// Default money files inside a datadir.
const StoreFile = "channels.db"

// tonConnectTimeout bounds fetching TON's global config and reaching its liteservers.
const tonConnectTimeout = 30 * time.Second

// errNoWallet is why a node without a wallet pays no worker.
var errNoWallet = errors.New("no wallet: this node has no " + WalletFile + " and pays no worker")

// StorePath and WalletPath are the [settle] files, defaults resolved.
func (c *Config) StorePath() string {
	if c.Settle.Store != "" {
		return c.Settle.Store
	}
	return filepath.Join(c.Datadir, StoreFile)
}

// WalletPath is the wallet's mnemonic file.
func (c *Config) WalletPath() string {
	if c.Settle.Wallet != "" {
		return c.Settle.Wallet
	}
	return filepath.Join(c.Datadir, WalletFile)
}

// startMarket opens the money side (store, wallet, chain), starts the client
// service, the backend and, on a node that sells, the worker service: the client
// first, because it installs the ads validator that the worker's own first ad
// must find (see market/service/client.go).
func (n *Node) startMarket(ctx context.Context, cfg Config, opt Options) error {
	log := n.Log
	var err error
	if n.Store, err = settle.OpenStore(cfg.StorePath(), log); err != nil {
		return err
	}
	switch _, serr := os.Stat(cfg.WalletPath()); {
	case serr == nil:
		if n.Wallet, err = settle.LoadWallet(cfg.WalletPath()); err != nil {
			return fmt.Errorf("settle.wallet: %w", err)
		}
	case errors.Is(serr, os.ErrNotExist):
		log.Info("no wallet: this node buys and sells nothing", "wallet", cfg.WalletPath())
	default:
		return fmt.Errorf("settle.wallet: %w", serr)
	}
	ledger := opt.Ledger
	if ledger == nil && cfg.Settle.Chain == ChainDevLedger {
		if ledger, err = devledger.Dial(ctx, cfg.Settle.DevLedgerURL); err != nil {
			return fmt.Errorf("settle.devledger_url: %w", err)
		}
	}
	if ledger == nil && cfg.Settle.Chain == ChainTON {
		tctx, cancel := context.WithTimeout(ctx, tonConnectTimeout)
		ledger, err = tonchain.New(tctx, cfg.Settle.TONNetwork, cfg.Settle.TONConfig)
		cancel()
		if err != nil {
			return fmt.Errorf("settle.ton_config: %w", err)
		}
	}
	globalID := int32(settle.MainnetGlobalID)
	if ledger != nil {
		globalID = ledger.GlobalID()
		if n.Wallet != nil {
			n.Chain = settle.NewChain(ledger, n.Wallet)
			n.Chain.Log = log
		}
		log.Info("settling on "+ledger.Name(), "chain", ledger.Name())
	}

	verifier, err := enclave.NewVerifier(cfg.Enclave.Policy, nil)
	if err != nil {
		return fmt.Errorf("enclave.policy: %w", err)
	}
	payer := func(market.Candidate) (market.Payer, error) { return nil, errNoWallet }
	if n.Wallet != nil {
		n.Payer, n.Payee = n.Store.Payer(n.Wallet), n.Store.Payee(n.Wallet)
		n.Payers = service.NewPayers(n.Payer)
		payer = n.Payers.Payer
	}
	if n.Client, err = service.NewClient(service.ClientConfig{
		Node: n.P2P, Payer: payer, Verifier: verifier, Policy: cfg.clientPolicy(), Logger: log,
		Observer: market.Observers(n.Metrics, n.Activity), Models: cfg.adModels(),
		TopicIdle: cfg.Market.TopicIdle.Duration,
	}); err != nil {
		return fmt.Errorf("start market client: %w", err)
	}

	prices := cfg.prices()
	if len(prices) > 0 && len(cfg.Runtime.Models) > 0 && n.Wallet == nil {
		return fmt.Errorf("market.prices: selling needs a wallet at %s (settle.wallet)", cfg.WalletPath())
	}
	if len(cfg.Runtime.Models) > 0 || cfg.Runtime.Backend == runtime.KindOpenAI {
		if n.Backend, err = backends.FromConfig(ctx, cfg.Runtime, log); err != nil {
			return err
		}
	}
	if n.Backend == nil || len(prices) == 0 {
		return nil
	}
	if n.Wallet == nil {
		return fmt.Errorf("market.prices: selling needs a wallet at %s (settle.wallet)", cfg.WalletPath())
	}
	own, att, err := attester(ctx, cfg.Enclave)
	if err != nil {
		return err
	}
	if own.Kind == tee.Sim {
		log.Warn("simulated TEE: this worker's answers are NOT confidential (testnets only)")
	}
	gpus := make([]market.GPU, 0, len(n.GPUs))
	for _, g := range n.GPUs {
		gpus = append(gpus, market.GPU{Name: g.Name, VRAM: g.VRAMBytes})
	}
	// A worker learns the channels clients open to it from the chain itself, when
	// the client names one in its Open.
	var channels service.ChannelLookup
	if ledger != nil {
		channels = service.CachedChannels(service.LedgerChannels(ledger), 0)
	}
	if n.Worker, err = service.NewWorker(service.WorkerConfig{
		Node: n.P2P, Backend: n.Backend, Prices: prices, Payee: service.NewPayees(n.Payee, channels, cfg.Market.ClientCreditTokens),
		Settlement: market.Settlement{
			WalletAddress: settle.Friendly(n.Wallet.Address(globalID)),
			ChannelKey:    n.Wallet.PublicKey(), MinDeposit: uint64(cfg.Market.MinDeposit),
		},
		TEE: own, Attester: att, GPUs: gpus, CreditTokens: cfg.Market.CreditTokens, Logger: log,
		Observer: market.Observers(n.Metrics, n.Activity),
	}); err != nil {
		return fmt.Errorf("start market worker: %w", err)
	}
	return nil
}

// attester builds the [enclave] attester and the TEE the ads announce.
func attester(ctx context.Context, c EnclaveConfig) (market.TEE, enclave.Attester, error) {
	switch c.Attester {
	case tee.Sim:
		return market.TEE{Kind: tee.Sim, Measurement: enclave.DefaultSimMeasurement[:]},
			enclave.NewSimAttester(nil, enclave.DefaultSimMeasurement, nil), nil
	case tee.TDX, tee.SEVSNP:
		client, err := linuxtsm.MakeClient()
		if err != nil {
			return market.TEE{}, nil, fmt.Errorf("enclave.attester %s: %w: %w", c.Attester, enclave.ErrNoTSM, err)
		}
		a, err := enclave.NewTSMAttester(client)
		if err != nil {
			return market.TEE{}, nil, fmt.Errorf("enclave.attester %s: %w", c.Attester, err)
		}
		if a.Kind() != c.Attester {
			return market.TEE{}, nil, fmt.Errorf("enclave.attester: %s configured, but this machine's TEE is %s", c.Attester, a.Kind())
		}
		mctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		m, err := enclave.SelfMeasurement(mctx, a)
		cancel()
		if err != nil {
			return market.TEE{}, nil, fmt.Errorf("enclave.attester %s: %w", c.Attester, err)
		}
		if want, _ := hex.DecodeString(c.Measurement); len(want) > 0 && !bytes.Equal(want, m) { // validated
			return market.TEE{}, nil, fmt.Errorf("enclave.measurement: configured %x, but this machine's %s report says %x", want, c.Attester, m)
		}
		return market.TEE{Kind: c.Attester, Measurement: m}, a, nil
	}
	return market.TEE{Kind: tee.None}, nil, nil
}
