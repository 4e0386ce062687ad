package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cocoon-network/cocoon/client/local"
)

// apiTimeout bounds one call of the node's API that answers at once (status,
// peers, models).
const apiTimeout = 10 * time.Second

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func init() {
	var datadir string
	var asJSON, pageURL bool
	status := &cobra.Command{
		Use:   "status",
		Short: "Show the running node's status",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := local.FromDatadir(datadir)
			if err != nil {
				return err
			}
			if pageURL { // the sign-in URL carries the secret token: only on request
				fmt.Fprintf(cmd.OutOrStdout(), "%s/?token=%s\n", c.BaseURL, c.Token)
				return nil
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), apiTimeout)
			defer cancel()
			st, err := c.Status(ctx)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), st)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "peer ID\t%s\n", st.PeerID)
			fmt.Fprintf(tw, "version\t%s\n", st.Version)
			fmt.Fprintf(tw, "uptime\t%s\n", (time.Duration(st.UptimeSeconds) * time.Second).String())
			fmt.Fprintf(tw, "peers\t%d\n", st.Peers)
			rc := st.Reachability
			fmt.Fprintf(tw, "reachable\t%s\n", reachLine(rc.Verdict))
			for _, r := range rc.Relays {
				fmt.Fprintf(tw, "relay\t%s\n", r)
			}
			fmt.Fprintf(tw, "connections\t%d direct, %d relayed; hole punches %d upgraded, %d failed\n",
				rc.Direct, rc.Relayed, rc.HolePunches, rc.HolePunchFailures)
			if len(st.GPUs) == 0 {
				fmt.Fprintf(tw, "GPUs\tnone (%s)\n", st.GPUReason)
			}
			for _, g := range st.GPUs {
				fmt.Fprintf(tw, "GPU\t%s, %.1f GiB, driver %s\n", g.Name, float64(g.VRAMBytes)/(1<<30), g.Driver)
			}
			if len(st.Models) == 0 {
				fmt.Fprintf(tw, "serves\tnothing (client only)\n")
			}
			for _, m := range st.Models {
				fmt.Fprintf(tw, "serves\t%s (%s, context %d)\n", m.ID, m.Digest, m.ContextLength)
				if o := m.Offload; o != nil {
					line := fmt.Sprintf("llama.cpp %s build, %d of %d layers on the GPU", o.Lib, o.GPULayers, o.Layers)
					if o.Fallback != "" {
						line += " (fallback: " + o.Fallback + ")"
					}
					fmt.Fprintf(tw, "\t%s\n", line)
				}
			}
			if len(st.Models) > 0 {
				fmt.Fprintf(tw, "slots\t%d free of %d, %d queued\n", st.Slots.Free, st.Slots.Total, st.Slots.Queued)
			}
			for i, a := range st.Addrs {
				label := ""
				if i == 0 {
					label = "addresses"
				}
				fmt.Fprintf(tw, "%s\t%s\n", label, a)
			}
			fmt.Fprintf(tw, "status page\t%s/ (sign in: open the URL `cocoon status --page-url` prints)\n", c.BaseURL)
			return tw.Flush()
		},
	}
	status.Flags().StringVar(&datadir, "datadir", defaultDatadir(), "node data directory")
	status.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	status.Flags().BoolVar(&pageURL, "page-url", false, "print only the status page's sign-in URL (it contains the API token)")
	rootCmd.AddCommand(status)

	var pdatadir string
	var pJSON bool
	peers := &cobra.Command{
		Use:   "peers",
		Short: "List the running node's connected peers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := local.FromDatadir(pdatadir)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), apiTimeout)
			defer cancel()
			ps, err := c.Peers(ctx)
			if err != nil {
				return err
			}
			if pJSON {
				return printJSON(cmd.OutOrStdout(), ps)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PEER\tDIRECTION\tLATENCY\tADDRESS")
			for _, p := range ps {
				fmt.Fprintf(tw, "%s\t%s\t%.1f ms\t%s\n", p.ID, p.Direction, p.LatencyMS, strings.Join(p.Addrs, ","))
			}
			return tw.Flush()
		},
	}
	peers.Flags().StringVar(&pdatadir, "datadir", defaultDatadir(), "node data directory")
	peers.Flags().BoolVar(&pJSON, "json", false, "print JSON")
	rootCmd.AddCommand(peers)
}

// reachLine says what AutoNAT's verdict means for the node's peers.
func reachLine(verdict string) string {
	switch verdict {
	case "public":
		return "yes (public: peers dial it; it relays for private nodes if relay_service is on)"
	case "private":
		return "no (private, behind a NAT or firewall: dialled through its relays)"
	}
	return "unknown (AutoNAT has no verdict yet)"
}
