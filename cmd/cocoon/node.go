package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/cocoon-network/cocoon/node"
	"github.com/cocoon-network/cocoon/runtime"
)

func init() {
	var (
		datadir, api, logFormat  string
		dhtMode                  string
		listen, bootstrap, serve []string
		mdns                     bool
	)
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Run a cocoon node until SIGINT or SIGTERM",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := node.Load(datadir)
			if err != nil {
				return err
			}
			if err := node.CheckDatadir(cfg.Datadir); err != nil {
				return err
			}
			f := cmd.Flags()
			if f.Changed("listen") {
				cfg.P2P.Listen = listen
			}
			if f.Changed("bootstrap") {
				cfg.P2P.Bootstrap = bootstrap
			}
			if f.Changed("api") {
				cfg.API.Listen = api
			}
			if f.Changed("mdns") {
				cfg.P2P.MDNS = mdns
			}
			for _, path := range serve {
				cfg.Runtime.Models = append(cfg.Runtime.Models, runtime.ModelConfig{Path: path})
			}
			if f.Changed("dht-mode") {
				cfg.P2P.DHTMode = dhtMode
			}
			if f.Changed("log-format") {
				cfg.Log.Format = logFormat
			}
			if err := cfg.Validate(); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			n, err := node.New(ctx, cfg, node.Options{Version: version})
			if err != nil {
				return err
			}
			<-ctx.Done()
			stop() // a second signal kills the process at once
			done := make(chan error, 1)
			go func() { done <- n.Close() }()
			select {
			case err := <-done:
				return err
			case <-time.After(5 * time.Second):
				return fmt.Errorf("node did not stop within 5 s")
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&datadir, "datadir", defaultDatadir(), "node data directory")
	f.StringArrayVar(&listen, "listen", nil, "libp2p listen multiaddr (repeatable; overrides p2p.listen)")
	f.StringArrayVar(&bootstrap, "bootstrap", nil, "bootstrap peer multiaddr ending in /p2p/<id> (repeatable)")
	f.StringVar(&api, "api", node.DefaultAPI, "local API HOST:PORT (overrides api.listen)")
	f.BoolVar(&mdns, "mdns", false, "discover peers on the LAN with mDNS (overrides p2p.mdns)")
	f.StringArrayVar(&serve, "serve", nil, "serve this GGUF model file with the embedded llama.cpp (repeatable; adds to runtime.models)")
	f.StringVar(&dhtMode, "dht-mode", "auto", "Kademlia mode: auto, server or client (overrides p2p.dht_mode)")
	f.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	rootCmd.AddCommand(cmd)
}
