package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cocoon-network/cocoon/runtime/llamalib"
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
			if workers < 1 || nodes <= workers {
				return fmt.Errorf("a testnet needs at least one worker and one client: -n %d --workers %d; give -n more than --workers (e.g. -n 5 --workers 3)", nodes, workers)
			}
			if _, err := os.Stat(model); err != nil {
				return fmt.Errorf("the workers' model %s is missing: pass --model PATH.gguf or set COCOON_TEST_MODEL (the shared test model is ../shared/models/stories260K.gguf)", model)
			}
			// The workers find llama.cpp as every node does: $COCOON_LLAMA_LIB,
			// else a build `cocoon runtime install --shared` put in the shared
			// cache (each worker's datadir is new and holds none).
			lib := os.Getenv("COCOON_LLAMA_LIB")
			if lib == "" && len(llamalib.Installed("", llamalib.CacheRoot())) == 0 {
				return errors.New("the workers need llama.cpp's libraries: run `cocoon runtime install --shared` (or `make deps`, then `export COCOON_LLAMA_LIB=$PWD/.cache/llama/lib`; `make run` does both)")
			}
			if lib != "" {
				if _, err := os.Stat(filepath.Join(lib, "libllama.so")); err != nil {
					return fmt.Errorf("COCOON_LLAMA_LIB=%s holds no libllama.so: run `make deps` and point COCOON_LLAMA_LIB at its .cache/llama/lib, or unset it after `cocoon runtime install --shared`", lib)
				}
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "starting %d nodes (%d workers) in %s — simulated TEE and dev ledger: NOT confidential, NOT real TON\n", nodes, workers, dir)
			prog := newStepWriter(out, 10*time.Second)
			c, err := launch(ctx, testnet.LaunchConfig{
				Bin: self, Dir: dir, Nodes: nodes, Workers: workers, Model: model,
				LibDir: lib, Progress: prog,
			})
			prog.stop()
			if err != nil {
				showFatalLogs(cmd.ErrOrStderr(), dir)
				if ctx.Err() != nil {
					return fmt.Errorf("interrupted while starting; %v (logs in %s)", err, dir)
				}
				return fmt.Errorf("%w (logs in %s; fix the cause and run `cocoon testnet up` again)", err, dir)
			}
			fmt.Fprintf(out, "ready in %s\n", prog.elapsed().Round(100*time.Millisecond))
			printCluster(cmd, c)
			fmt.Fprintf(out, "\nTry: curl -H \"Authorization: Bearer %s\" -d '{\"model\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":\"Tell me a story\"}],\"max_tokens\":48}' %s/v1/chat/completions\n",
				c.Nodes[0].Token, modelID(model), c.Nodes[0].URL)
			fmt.Fprintf(out, "Status page: %s/?token=%s (any node: its URL + /?token=<its token>)\n", c.Nodes[0].URL, url.QueryEscape(c.Nodes[0].Token))
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

// stepWriter passes the launcher's progress lines through, each prefixed with
// the time since the start, and says that the launch is still working when a
// step has been quiet for a while (waiting for the workers' ads can take up to
// a minute), so that a long start never looks hung.
type stepWriter struct {
	w     io.Writer
	start time.Time
	mu    sync.Mutex
	last  time.Time
	quit  chan struct{}
	done  chan struct{}
}

func newStepWriter(w io.Writer, quiet time.Duration) *stepWriter {
	s := &stepWriter{w: w, start: time.Now(), last: time.Now(), quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(quiet / 5)
		defer t.Stop()
		for {
			select {
			case <-s.quit:
				return
			case <-t.C:
				s.mu.Lock()
				if time.Since(s.last) >= quiet {
					fmt.Fprintf(s.w, "[%5.1fs]   still working (this step has taken %s so far)\n", s.elapsed().Seconds(), time.Since(s.last).Round(time.Second))
					s.last = time.Now()
				}
				s.mu.Unlock()
			}
		}
	}()
	return s
}

func (s *stepWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.last = time.Now()
	for _, line := range bytes.SplitAfter(p, []byte("\n")) {
		if len(line) > 0 {
			fmt.Fprintf(s.w, "[%5.1fs] %s", s.elapsed().Seconds(), line)
		}
	}
	return len(p), nil
}

func (s *stepWriter) elapsed() time.Duration { return time.Since(s.start) }

// stop ends the quiet-step reminders.
func (s *stepWriter) stop() { close(s.quit); <-s.done }

// launch runs testnet.Launch; a start stopped by Ctrl-C says so plainly
// (Launch has then stopped everything it started).
func launch(ctx context.Context, cfg testnet.LaunchConfig) (*testnet.Cluster, error) {
	c, err := testnet.Launch(ctx, cfg)
	if err != nil && ctx.Err() != nil {
		err = errors.New("stopped everything started so far")
	}
	return c, err
}

// showFatalLogs prints the last line of each process log in dir that ended with
// the process's own fatal error ("cocoon: ..."), so that the cause of a failed
// start (a missing library, a port in use) shows without opening the logs.
func showFatalLogs(w io.Writer, dir string) {
	logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	for _, l := range logs {
		b, err := os.ReadFile(l)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if last := lines[len(lines)-1]; strings.HasPrefix(last, "cocoon: ") {
			fmt.Fprintf(w, "%s: %s\n", filepath.Base(l), last)
		}
	}
}
