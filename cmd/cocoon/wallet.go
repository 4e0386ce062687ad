package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/cocoon-network/cocoon/node"
	"github.com/cocoon-network/cocoon/settle"
	"github.com/cocoon-network/cocoon/settle/devledger"
	"github.com/cocoon-network/cocoon/settle/tonchain"
)

// chainFlags select the node (its datadir, whose config names its wallet and
// channel store) and the network for the wallet and channel commands.
type chainFlags struct {
	datadir   string
	walletKey string // empty: the config's [settle] wallet, or <datadir>/wallet.key
	ledger    string // devledger URL
	ton       string // mainnet | testnet
	tonConfig string // global config URL or file
}

func (f *chainFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.datadir, "datadir", defaultDatadir(), "node data directory")
	cmd.Flags().StringVar(&f.walletKey, "wallet", "", "wallet mnemonic file (default: the config's [settle] wallet, or <datadir>/wallet.key)")
	cmd.Flags().StringVar(&f.ledger, "ledger", "", "dev ledger URL, e.g. http://127.0.0.1:8590 (simulated chain, not TON)")
	cmd.Flags().StringVar(&f.ton, "ton", "", "TON network: mainnet or testnet")
	cmd.Flags().StringVar(&f.tonConfig, "ton-config", "", "TON global config URL or file (default: the network's public one)")
}

// files are the wallet and channel store the node of the datadir uses: its
// config's [settle] wallet and store where it names them, else the defaults
// in the datadir (also for a datadir with no config); --wallet overrides
// the wallet. A config that does not load is an error, never skipped.
func (f *chainFlags) files() (wallet, store string, err error) {
	cfg := node.Config{Datadir: f.datadir}
	if _, serr := os.Stat(filepath.Join(f.datadir, node.ConfigFile)); serr == nil {
		if cfg, err = node.Load(f.datadir); err != nil {
			return "", "", err
		}
	}
	wallet, store = cfg.WalletPath(), cfg.StorePath()
	if f.walletKey != "" {
		wallet = f.walletKey
	}
	return wallet, store, nil
}

func (f *chainFlags) wallet() (*settle.Wallet, error) {
	path, _, err := f.files()
	if err != nil {
		return nil, err
	}
	return settle.LoadWallet(path)
}

var errNoChain = errors.New("no chain selected: pass --ledger URL (dev ledger) or --ton mainnet|testnet")

// openLedger returns the selected ledger, or errNoChain.
func (f *chainFlags) openLedger(ctx context.Context) (settle.Ledger, error) {
	switch {
	case f.ledger != "" && f.ton != "":
		return nil, errors.New("--ledger and --ton: choose one")
	case f.ledger != "":
		return devledger.Dial(ctx, f.ledger)
	case f.ton != "":
		return tonchain.New(ctx, f.ton, f.tonConfig)
	}
	return nil, errNoChain
}

func init() {
	var cf chainFlags
	walletCmd := &cobra.Command{
		Use:   "wallet",
		Short: "Show the node's TON wallet (V5R1): address, channel key, balance",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w, err := cf.wallet()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			out := cmd.OutOrStdout()
			l, err := cf.openLedger(ctx)
			if errors.Is(err, errNoChain) {
				fmt.Fprintf(out, "address (mainnet): %s\nchannel key: %x\n", settle.Friendly(w.Address(settle.MainnetGlobalID)), w.PublicKey())
				fmt.Fprintln(out, "balance: unknown (no chain selected: --ledger or --ton)")
				return nil
			}
			if err != nil {
				return err
			}
			addr := w.Address(l.GlobalID())
			st, err := l.Account(ctx, addr)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "chain: %s\naddress: %s\nchannel key: %x\nstatus: %s\nbalance: %d nanoTON\n",
				l.Name(), settle.Friendly(addr), w.PublicKey(), st.Status, st.Balance)
			return nil
		},
	}
	cf.register(walletCmd)

	var ff chainFlags
	var amount uint64
	faucetCmd := &cobra.Command{
		Use:   "faucet",
		Short: "Credit the wallet on the dev ledger (simulated funds, not TON)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ff.ledger == "" {
				return errors.New("faucet: only on the dev ledger: pass --ledger URL")
			}
			w, err := ff.wallet()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			c, err := devledger.Dial(ctx, ff.ledger)
			if err != nil {
				return err
			}
			addr := w.Address(c.GlobalID())
			if _, err := c.Faucet(ctx, addr, amount); err != nil {
				return err
			}
			st, err := c.Account(ctx, addr)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: credited %d nanoTON to %s; balance %d nanoTON\n", c.Name(), amount, settle.Friendly(addr), st.Balance)
			return nil
		},
	}
	ff.register(faucetCmd)
	faucetCmd.Flags().Uint64Var(&amount, "amount", 10_000_000_000, "nanoTON to credit")
	walletCmd.AddCommand(faucetCmd)
	rootCmd.AddCommand(walletCmd)
}
