package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cocoon-network/cocoon/settle"
)

// channelEnv is what channel commands work with.
type channelEnv struct {
	w     *settle.Wallet
	store *settle.Store
	l     settle.Ledger
	chain *settle.OnChain
}

func (f *chainFlags) channelEnv(ctx context.Context, needChain bool) (*channelEnv, error) {
	w, err := f.wallet()
	if err != nil {
		return nil, err
	}
	_, store, err := f.files()
	if err != nil {
		return nil, err
	}
	st, err := settle.OpenStore(store, nil)
	if err != nil {
		return nil, err
	}
	env := &channelEnv{w: w, store: st}
	l, err := f.openLedger(ctx)
	switch {
	case errors.Is(err, errNoChain) && !needChain:
	case err != nil:
		st.Close()
		return nil, err
	default:
		env.l, env.chain = l, settle.NewChain(l, w)
	}
	return env, nil
}

// find returns the stored channel and whether this node is its client.
func (e *channelEnv) find(id settle.ChannelID) (settle.Record, bool, error) {
	if r, err := e.store.Payer(e.w).Latest(id); err == nil {
		return r, true, nil
	}
	r, err := e.store.Payee(e.w).Latest(id)
	if err != nil {
		return r, false, fmt.Errorf("channel %s: not in %s", id, "the channel store")
	}
	return r, false, nil
}

func parseSig(s string) ([64]byte, error) {
	var sig [64]byte
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 64 {
		return sig, fmt.Errorf("signature %q: want 128 hex digits", s)
	}
	copy(sig[:], b)
	return sig, nil
}

func printTrace(cmd *cobra.Command, name string, tr *settle.Trace) {
	if tr == nil {
		return
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s: %d transactions, %d nanoTON fees\n", name, len(tr.Txs), tr.Fees())
	for _, tx := range tr.Txs {
		fmt.Fprintf(cmd.OutOrStdout(), "  %s lt %d exit %d fees %d in %d out %d\n", tx.Account, tx.LT, tx.ExitCode, tx.Fees, tx.InValue, tx.OutValue)
	}
}

func init() {
	channelCmd := &cobra.Command{Use: "channel", Short: "Payment channels: open, top up, close, list"}

	// open
	var of chainFlags
	var workerKey, workerAddr string
	var deposit uint64
	closing := settle.DefaultClosing
	openCmd := &cobra.Command{
		Use:   "open",
		Short: "Deploy and fund a channel to a worker (this node is the client, party A)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Minute)
			defer cancel()
			env, err := of.channelEnv(ctx, true)
			if err != nil {
				return err
			}
			defer env.store.Close()
			wk, err := hex.DecodeString(workerKey)
			if err != nil || len(wk) != 32 {
				return fmt.Errorf("--worker-key %q: want 64 hex digits", workerKey)
			}
			wa, err := settle.ParseAddress(workerAddr)
			if err != nil {
				return fmt.Errorf("--worker-addr: %w", err)
			}
			id, err := settle.NewChannelID()
			if err != nil {
				return err
			}
			ch := settle.Channel{ID: id, ClientKey: env.w.PublicKey(), WorkerKey: wk,
				ClientAddr: env.w.Address(env.l.GlobalID()), WorkerAddr: wa, Closing: closing}
			// Record first: a crash after deploying must not lose the channel.
			if err := env.store.Payer(env.w).AddChannel(ch, deposit); err != nil {
				return err
			}
			tr, err := env.chain.Open(ctx, ch, deposit)
			printTrace(cmd, env.l.Name(), tr)
			if err != nil {
				return err
			}
			addr, _ := ch.Address()
			fmt.Fprintf(cmd.OutOrStdout(), "channel %s opened at %s with %d nanoTON on %s\n", id, settle.Friendly(addr), deposit, env.l.Name())
			return nil
		},
	}
	of.register(openCmd)
	openCmd.Flags().StringVar(&workerKey, "worker-key", "", "worker's channel key (hex, from its ad or `cocoon wallet`)")
	openCmd.Flags().StringVar(&workerAddr, "worker-addr", "", "worker's payout address")
	openCmd.Flags().Uint64Var(&deposit, "deposit", 0, "nanoTON to lock for the worker")
	openCmd.Flags().Uint32Var(&closing.QuarantineDuration, "quarantine", closing.QuarantineDuration, "seconds an uncooperative close can be challenged")
	openCmd.Flags().Uint64Var(&closing.MisbehaviorFine, "fine", closing.MisbehaviorFine, "nanoTON fine for presenting a stale state")
	openCmd.Flags().Uint32Var(&closing.ConditionalCloseDuration, "settle-window", closing.ConditionalCloseDuration, "seconds after the quarantine before finish")
	openCmd.MarkFlagRequired("worker-key")
	openCmd.MarkFlagRequired("worker-addr")
	openCmd.MarkFlagRequired("deposit")

	// topup
	var tf chainFlags
	var tid string
	var tamount uint64
	topupCmd := &cobra.Command{
		Use:   "topup",
		Short: "Add funds to this node's side of a channel (the contract takes top-ups only before init)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Minute)
			defer cancel()
			env, err := tf.channelEnv(ctx, true)
			if err != nil {
				return err
			}
			defer env.store.Close()
			id, err := settle.ParseChannelID(tid)
			if err != nil {
				return err
			}
			r, isClient, err := env.find(id)
			if err != nil {
				return err
			}
			if st, err := env.chain.State(ctx, r.Channel); err == nil && st.Status != settle.StatusUninitialized {
				return fmt.Errorf("channel %s is %s: the contract takes top-ups only before init; open a new channel for more funds", id, st.Status)
			}
			tr, err := env.chain.TopUp(ctx, r.Channel, tamount)
			printTrace(cmd, env.l.Name(), tr)
			if err != nil {
				return err
			}
			st, err := env.chain.State(ctx, r.Channel)
			if err != nil {
				return err
			}
			if isClient && st.Storage != nil {
				if err := env.store.Payer(env.w).AddChannel(r.Channel, st.Storage.BalanceA); err != nil {
					return err
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "channel %s: balance A %d, B %d nanoTON\n", id, st.Storage.BalanceA, st.Storage.BalanceB)
			return nil
		},
	}
	tf.register(topupCmd)
	topupCmd.Flags().StringVar(&tid, "id", "", "channel id (hex)")
	topupCmd.Flags().Uint64Var(&tamount, "amount", 0, "nanoTON to add")
	topupCmd.MarkFlagRequired("id")
	topupCmd.MarkFlagRequired("amount")

	// close
	var cf chainFlags
	var cid, clientSig string
	var finish bool
	closeCmd := &cobra.Command{
		Use:   "close",
		Short: "Close a channel",
		Long: `Close a channel.

Client (party A): prints its signature of the cooperative close for the newest
voucher; give it to the worker.
Worker (party B): with --client-sig, countersigns and submits the cooperative
close; without it, starts an uncooperative close with the newest voucher (or
challenges a close the client started with a stale one).
Anyone: --finish pays out after the quarantine and settle windows.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Minute)
			defer cancel()
			id, err := settle.ParseChannelID(cid)
			if err != nil {
				return err
			}
			env, err := cf.channelEnv(ctx, true)
			if err != nil {
				return err
			}
			defer env.store.Close()
			r, isClient, err := env.find(id)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if finish {
				tr, err := env.chain.Finish(ctx, r.Channel)
				printTrace(cmd, env.l.Name(), tr)
				return err
			}
			if isClient {
				cs, sigA, err := env.store.Payer(env.w).CloseState(id)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "cooperative close of channel %s: worker gets %d, client keeps %d nanoTON\nclient signature: %x\n", id, cs.BalanceB, cs.BalanceA, sigA)
				return env.store.Payer(env.w).MarkClosed(id)
			}
			payee := env.store.Payee(env.w)
			if clientSig != "" {
				sigA, err := parseSig(clientSig)
				if err != nil {
					return err
				}
				cs := settle.CloseState{ChannelID: id, BalanceA: r.Deposit - r.Sent, BalanceB: r.Sent, SeqnoA: r.Seqno + 1, SeqnoB: 1}
				sigB, err := payee.Countersign(cs, sigA)
				if err != nil {
					return err
				}
				tr, err := env.chain.CooperativeClose(ctx, r.Channel, cs, sigA, sigB)
				printTrace(cmd, env.l.Name(), tr)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "channel %s closed cooperatively: worker paid %d nanoTON\n", id, cs.BalanceB)
				return payee.MarkClosed(id)
			}
			newest, err := payee.Newest(id)
			if err != nil {
				return err
			}
			own, err := payee.OwnState(id)
			if err != nil {
				return err
			}
			st, err := env.chain.State(ctx, r.Channel)
			if err != nil {
				return err
			}
			var tr *settle.Trace
			if st.Status == settle.StatusClosureStarted && st.Storage.Quarantine.CommittedByA {
				tr, err = env.chain.Challenge(ctx, r.Channel, newest, own)
			} else {
				tr, err = env.chain.UncooperativeClose(ctx, r.Channel, newest, own)
			}
			printTrace(cmd, env.l.Name(), tr)
			if err != nil {
				return err
			}
			if err := payee.MarkClosed(id); err != nil {
				return err
			}
			fmt.Fprintf(out, "channel %s: uncooperative close with %d nanoTON for the worker; run --finish after %d s\n", id, r.Sent, r.Channel.Closing.QuarantineDuration+r.Channel.Closing.ConditionalCloseDuration)
			return nil
		},
	}
	cf.register(closeCmd)
	closeCmd.Flags().StringVar(&cid, "id", "", "channel id (hex)")
	closeCmd.Flags().StringVar(&clientSig, "client-sig", "", "worker: the client's signature of the cooperative close")
	closeCmd.Flags().BoolVar(&finish, "finish", false, "finish an uncooperative close after its windows")
	closeCmd.MarkFlagRequired("id")

	// list
	var lf chainFlags
	listCmd := &cobra.Command{
		Use:   "list",
		Short: "List the node's channels (newest signed state; on-chain status with --ledger or --ton)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			env, err := lf.channelEnv(ctx, false)
			if err != nil {
				return err
			}
			defer env.store.Close()
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ROLE\tCHANNEL\tADDRESS\tDEPOSIT\tSEQNO\tPAID\tLOCAL\tON-CHAIN")
			for _, role := range []string{"client", "worker"} {
				var recs []settle.Record
				if role == "client" {
					recs, err = env.store.Payer(env.w).Channels()
				} else {
					recs, err = env.store.Payee(env.w).Channels()
				}
				if err != nil {
					return err
				}
				for _, r := range recs {
					addr, _ := r.Channel.Address()
					local, onchain := "open", "-"
					if r.Closed {
						local = "closing"
					}
					if env.chain != nil {
						if st, err := env.chain.State(ctx, r.Channel); err == nil {
							onchain = st.Status.String()
						} else {
							onchain = "error: " + err.Error()
						}
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\n", role, r.Channel.ID, settle.Friendly(addr), r.Deposit, r.Seqno, r.Sent, local, onchain)
				}
			}
			if env.l != nil {
				fmt.Fprintf(tw, "chain: %s\n", env.l.Name())
			}
			return tw.Flush()
		},
	}
	lf.register(listCmd)

	channelCmd.AddCommand(openCmd, topupCmd, closeCmd, listCmd)
	rootCmd.AddCommand(channelCmd)
}
