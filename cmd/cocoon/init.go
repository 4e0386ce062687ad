package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/cocoon-network/cocoon/node"
	"github.com/cocoon-network/cocoon/settle"
)

func init() {
	var datadir string
	var force bool
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create a datadir: config.toml, identity key and API token",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := node.Init(datadir, force)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "initialised %s\npeer ID: %s\n", datadir, id)
			walletPath := filepath.Join(datadir, node.WalletFile)
			if _, err := os.Stat(walletPath); err == nil {
				fmt.Fprintf(cmd.OutOrStdout(), "wallet: kept %s\n", walletPath)
				return nil
			}
			addr, err := settle.CreateWalletKey(walletPath)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "TON wallet: %s (mnemonic in %s: back it up)\n", addr, walletPath)
			return nil
		},
	}
	cmd.Flags().StringVar(&datadir, "datadir", defaultDatadir(), "node data directory ($COCOON_HOME, else ~/.cocoon)")
	cmd.Flags().BoolVar(&force, "force", false, "replace an existing identity (the old peer ID is lost)")
	rootCmd.AddCommand(cmd)
}
