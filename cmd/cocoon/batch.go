package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/cocoon-network/cocoon/client/batch"
)

func init() {
	var (
		datadir, outPath string
		parallel         int
		timeout, grace   time.Duration
	)
	batch := &cobra.Command{
		Use:   "batch IN.jsonl -o OUT.jsonl",
		Short: "Run a file of OpenAI batch requests across the network's workers, resumably",
		Long: `Run a file of requests in the OpenAI Batch API input format through this node's
gateway, several at a time, and write the answers in the OpenAI batch output format.

Each line of IN is {"custom_id": "...", "method": "POST", "url": "/v1/chat/completions"
or "/v1/completions", "body": {...}}. The whole file is checked before anything is sent;
"stream" is refused (answers are written whole).

Each line of OUT is {"id": "batch_req_...", "custom_id": ..., "response": {"status_code",
"request_id", "body"}, "error": null}, in the order the answers arrive. An answer with an
error status is written with that status and body, as OpenAI does. cocoon adds
response.headers with x-cocoon-worker (the worker that answered) and x-cocoon-tee; the
cost is the body's usage.cost_nanoton. OpenAI's clients ignore both.

OUT is appended to: a re-run skips the custom_ids already in it, so an interrupted or
partly failed batch is finished by running the same command again. Requests that never
got an answer (node unreachable, connection cut) are not written and are retried then.

Lines of IN may be up to 1 MiB. By default as many requests run at once as there are
workers offering the model; the node's market runs one job per worker at a time and
prefers idle workers.

Ctrl-C (or SIGTERM) stops starting requests and waits up to --grace for those in
flight; a second one cancels them at once. After several requests in a row got no
answer the run stops too. Either way, run the same command again to finish.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if outPath == "" {
				return errors.New("batch: -o OUT.jsonl is required (the answers go there; an existing file is resumed)")
			}
			if parallel < 0 {
				return fmt.Errorf("batch: --parallel %d: must be at least 1 (0: one per worker)", parallel)
			}
			b, err := batch.Open(cmd.Context(), batch.Config{In: args[0], Out: outPath, Datadir: datadir,
				Parallel: parallel, Timeout: timeout, Grace: grace, Stdout: cmd.OutOrStdout(), Stderr: cmd.ErrOrStderr()})
			if err != nil {
				return err
			}
			defer b.Close()
			// Installed only now: a Ctrl-C while the input is checked stops the
			// command at once, as it should; from here on it stops the run gently.
			sigs := make(chan os.Signal, 2)
			signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
			defer signal.Stop(sigs)
			return b.Run(cmd.Context(), sigs)
		},
	}
	f := batch.Flags()
	f.StringVarP(&outPath, "output", "o", "", "output file (OpenAI batch output format); an existing one is resumed")
	f.StringVar(&datadir, "datadir", defaultDatadir(), "node data directory (its gateway sends the requests)")
	f.IntVar(&parallel, "parallel", 0, "requests at once (0: the number of workers offering the model)")
	f.DurationVar(&timeout, "timeout", 10*time.Minute, "longest wait for one answer")
	f.DurationVar(&grace, "grace", 30*time.Second, "on Ctrl-C, how long requests in flight may finish")
	rootCmd.AddCommand(batch)
}
