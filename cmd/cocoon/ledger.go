package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/cocoon-network/cocoon/settle/devledger"
)

func init() {
	ledgerCmd := &cobra.Command{Use: "ledger", Short: "The dev ledger: " + devledger.Label}
	var listen, state string
	serveCmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve a dev ledger on loopback for local testnets (" + devledger.Label + ")",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := devledger.CheckLoopback(listen); err != nil {
				return err
			}
			l, err := devledger.New()
			if err != nil {
				return err
			}
			if state != "" {
				if _, err := os.Stat(state); err == nil {
					if err := l.Load(state); err != nil {
						return err
					}
				} else if !errors.Is(err, os.ErrNotExist) {
					return fmt.Errorf("--state: %w", err)
				}
				l.PersistTo(state)
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("ledger serve: %w", err)
			}
			srv := l.NewServer()
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			errc := make(chan error, 1)
			go func() { errc <- srv.Serve(ln) }()
			url := "http://" + ln.Addr().String()
			slog.Info("dev ledger serving", "chain", devledger.Label, "url", url, "state", state)
			fmt.Fprintf(cmd.OutOrStdout(), "%s listening on %s\n", devledger.Label, url)
			select {
			case err := <-errc:
				return fmt.Errorf("ledger serve: %w", err)
			case <-ctx.Done():
			}
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("ledger serve: shutdown: %w", err)
			}
			return nil
		},
	}
	serveCmd.Flags().StringVar(&listen, "listen", "127.0.0.1:8590", "loopback address to serve on")
	serveCmd.Flags().StringVar(&state, "state", "", "file to keep the ledger in across restarts (optional)")
	ledgerCmd.AddCommand(serveCmd)
	rootCmd.AddCommand(ledgerCmd)
}
