package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cocoon-network/cocoon/node"
	"github.com/cocoon-network/cocoon/node/gateway"
)

// apiClient talks to a running node's local API, found through its datadir.
type apiClient struct {
	base, token string
	http        *http.Client
}

func newAPIClient(datadir string) (*apiClient, error) {
	b, err := os.ReadFile(filepath.Join(datadir, node.APIAddrFile))
	if err != nil {
		return nil, fmt.Errorf("no running node for %s (start one with `cocoon node --datadir %s`): %w", datadir, datadir, err)
	}
	tok, err := node.LoadToken(datadir)
	if err != nil {
		return nil, err
	}
	return &apiClient{base: "http://" + strings.TrimSpace(string(b)), token: tok, http: &http.Client{Timeout: 10 * time.Second}}, nil
}

func (c *apiClient) get(path string, v any) error {
	req, err := http.NewRequest(http.MethodGet, c.base+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("node API at %s unreachable (is the node running?): %w", c.base, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, strings.TrimSpace(string(body)))
	}
	return json.Unmarshal(body, v)
}

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
			c, err := newAPIClient(datadir)
			if err != nil {
				return err
			}
			if pageURL { // the sign-in URL carries the secret token: only on request
				fmt.Fprintf(cmd.OutOrStdout(), "%s/?token=%s\n", c.base, c.token)
				return nil
			}
			var st gateway.Status
			if err := c.get("/api/v0/status", &st); err != nil {
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
			fmt.Fprintf(tw, "status page\t%s/ (sign in: open the URL `cocoon status --page-url` prints)\n", c.base)
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
			c, err := newAPIClient(pdatadir)
			if err != nil {
				return err
			}
			var ps []gateway.Peer
			if err := c.get("/api/v0/peers", &ps); err != nil {
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
