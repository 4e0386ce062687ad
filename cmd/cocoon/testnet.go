package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cocoon-network/cocoon/testnet"
)

func init() {
	tn := &cobra.Command{Use: "testnet", Short: "A local testnet of real cocoon processes on 127.0.0.1"}
	defDir := filepath.Join(os.TempDir(), "cocoon-testnet")

	var (
		dir, model     string
		nodes, workers int
	)
	up := &cobra.Command{
		Use:   "up",
		Short: "Start a dev ledger and N nodes (sim TEE, simulated money), print them, stop all on Ctrl-C",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if c, err := testnet.LoadCluster(dir); err == nil && c.Ledger != nil && c.Ledger.Alive() {
				return fmt.Errorf("a testnet is already running in %s (`cocoon testnet down --dir %s` stops it)", dir, dir)
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "starting %d nodes (%d workers) in %s — simulated TEE and dev ledger: NOT confidential, NOT real TON\n", nodes, workers, dir)
			c, err := testnet.Launch(ctx, testnet.LaunchConfig{
				Bin: self, Dir: dir, Nodes: nodes, Workers: workers, Model: model,
				LibDir: os.Getenv("COCOON_LLAMA_LIB"), Progress: out,
			})
			if err != nil {
				return fmt.Errorf("%w (logs in %s)", err, dir)
			}
			printCluster(cmd, c)
			fmt.Fprintf(out, "\nTry: curl -H \"Authorization: Bearer %s\" -d '{\"model\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":\"Tell me a story\"}],\"max_tokens\":48}' %s/v1/chat/completions\n",
				c.Nodes[0].Token, modelID(model), c.Nodes[0].URL)
			fmt.Fprintln(out, "Ctrl-C (or `cocoon testnet down`) stops everything; logs stay in "+dir)
			// Run until Ctrl-C, or until `cocoon testnet down` has stopped them all.
			for ctx.Err() == nil && c.Running() {
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
			fmt.Fprintln(out, "stopping the testnet")
			return c.Stop()
		},
	}
	up.Flags().StringVar(&dir, "dir", defDir, "where the datadirs and logs go")
	up.Flags().IntVarP(&nodes, "nodes", "n", 5, "number of nodes")
	up.Flags().IntVar(&workers, "workers", 3, "how many of them are workers")
	up.Flags().StringVar(&model, "model", defaultModel(), "GGUF model the workers serve ($COCOON_TEST_MODEL)")

	var sdir string
	status := &cobra.Command{
		Use:   "status",
		Short: "Show the processes of the testnet in --dir",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := testnet.LoadCluster(sdir)
			if err != nil {
				return err
			}
			printCluster(cmd, c)
			return nil
		},
	}
	status.Flags().StringVar(&sdir, "dir", defDir, "the testnet's directory")

	var ddir string
	down := &cobra.Command{
		Use:   "down",
		Short: "Stop every process of the testnet in --dir",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := testnet.LoadCluster(ddir)
			if err != nil {
				return err
			}
			if err := c.Stop(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "testnet in %s stopped; logs kept there\n", ddir)
			return nil
		},
	}
	down.Flags().StringVar(&ddir, "dir", defDir, "the testnet's directory")
	tn.AddCommand(up, status, down)
	rootCmd.AddCommand(tn)
}

func defaultModel() string {
	if m := os.Getenv("COCOON_TEST_MODEL"); m != "" {
		return m
	}
	return filepath.Join("..", "shared", "models", "stories260K.gguf")
}

func modelID(path string) string {
	b := filepath.Base(path)
	return b[:len(b)-len(filepath.Ext(b))]
}

func printCluster(cmd *cobra.Command, c *testnet.Cluster) {
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tROLE\tSTATE\tPEER ID\tURL\tTOKEN")
	for _, p := range append(append([]*testnet.Proc{}, c.Nodes...), c.Ledger) {
		state := "running"
		if !p.Alive() {
			state = "stopped"
		}
		role := p.Role
		if role == "ledger" {
			role = "ledger (simulated)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Name, role, state, p.PeerID, p.URL, p.Token)
	}
	tw.Flush()
}
