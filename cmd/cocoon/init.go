package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cocoon-network/cocoon/client/local"
	"github.com/cocoon-network/cocoon/enclave"
	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/node"
	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/llamalib"
	"github.com/cocoon-network/cocoon/settle"
)

// workerFlags are `cocoon init --worker`'s flags.
type workerFlags struct {
	models           []string
	pricePrompt      int64
	priceCompletion  int64
	tee              string
	chain, ledgerURL string
	tonNetwork       string
	installRuntime   bool
	registry         string
	nonInteractive   bool
}

func init() {
	var (
		datadir string
		force   bool
		worker  bool
		wf      workerFlags
	)
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create a datadir: config.toml, identity key and API token (--worker: a worker's config)",
		Long: `Create a datadir: config.toml (every field commented), identity.key, api.token and
the TON wallet's wallet.key. An existing identity and wallet are kept.

With --worker it writes a worker's config: the GPUs are listed, then the model
files, prices, enclave kind and chain are taken from the flags or asked for
(--non-interactive: never asked; a missing value is an error naming its flag);
--install-runtime runs what 'cocoon runtime install' runs. An existing
config.toml is kept as config.toml.bak.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !worker {
				for _, name := range []string{"model", "price-prompt", "price-completion", "tee", "chain", "ledger-url", "ton-network", "install-runtime", "registry", "non-interactive"} {
					if cmd.Flags().Changed(name) {
						return fmt.Errorf("--%s: only with --worker", name)
					}
				}
				return initDatadir(cmd.OutOrStdout(), datadir, force)
			}
			return initWorker(cmd, datadir, force, wf)
		},
	}
	f := cmd.Flags()
	f.StringVar(&datadir, "datadir", defaultDatadir(), "node data directory ($COCOON_HOME, else ~/.cocoon)")
	f.BoolVar(&force, "force", false, "replace an existing identity (the old peer ID is lost)")
	f.BoolVar(&worker, "worker", false, "write a worker's config: models, prices, enclave kind, chain")
	f.StringArrayVar(&wf.models, "model", nil, "GGUF model file to serve (repeatable)")
	f.Int64Var(&wf.pricePrompt, "price-prompt", -1, "nanoTON per 1M prompt tokens (asked: the median of the ads a running node sees, else 100000000)")
	f.Int64Var(&wf.priceCompletion, "price-completion", -1, "nanoTON per 1M completion tokens (asked: the median of the ads a running node sees, else 400000000)")
	f.StringVar(&wf.tee, "tee", "auto", "enclave kind: auto (configfs-tsm and the TDX/SEV-SNP guest devices, else none), tdx, sev-snp, none, or sim (simulated: testnets only)")
	f.StringVar(&wf.chain, "chain", "", "where channels settle: ton or devledger (a simulated chain)")
	f.StringVar(&wf.ledgerURL, "ledger-url", "", "the devledger's URL (--chain devledger)")
	f.StringVar(&wf.tonNetwork, "ton-network", "", "mainnet or testnet (--chain ton)")
	f.BoolVar(&wf.installRuntime, "install-runtime", false, "install llama.cpp's libraries for this machine's GPU (as 'cocoon runtime install')")
	f.StringVar(&wf.registry, "registry", llamalib.DefaultRegistry, "npm registry base URL for --install-runtime")
	f.BoolVar(&wf.nonInteractive, "non-interactive", false, "never ask: a missing value is an error naming its flag")
	rootCmd.AddCommand(cmd)
}

// initDatadir is plain `cocoon init`: identity, token, template config, wallet.
func initDatadir(out io.Writer, datadir string, force bool) error {
	id, err := node.Init(datadir, force)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "initialised %s\npeer ID: %s\n", datadir, id)
	return initWallet(out, datadir)
}

func initWallet(out io.Writer, datadir string) error {
	walletPath := filepath.Join(datadir, node.WalletFile)
	if _, err := os.Stat(walletPath); err == nil {
		fmt.Fprintf(out, "wallet: kept %s\n", walletPath)
		return nil
	}
	addr, err := settle.CreateWalletKey(walletPath)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "TON wallet: %s (mnemonic in %s: back it up)\n", addr, walletPath)
	return nil
}

// initWorker is `cocoon init --worker`. Every flag is checked before the
// datadir is touched, so a refused flag leaves nothing behind.
func initWorker(cmd *cobra.Command, datadir string, force bool, wf workerFlags) error {
	out := cmd.OutOrStdout()
	f := cmd.Flags()
	ask := newAsker(cmd.InOrStdin(), out, wf.nonInteractive)

	gpus, why := runtime.DetectGPUs()
	for _, g := range gpus {
		fmt.Fprintf(out, "GPU: %s, %.1f GiB VRAM (%.1f GiB free), driver %s\n", g.Name, float64(g.VRAMBytes)/(1<<30), float64(g.FreeBytes)/(1<<30), g.Driver)
	}
	if len(gpus) == 0 {
		fmt.Fprintf(out, "GPU: none (%s): models run on the CPU\n", why)
	}

	// Models.
	models := wf.models
	if len(models) == 0 {
		line, err := ask.value("model", "GGUF model file(s) to serve, separated by spaces", "")
		if err != nil {
			return err
		}
		models = strings.Fields(line)
		if len(models) == 0 {
			return errors.New("--model: no model file given")
		}
	}
	for i, m := range models {
		abs, err := filepath.Abs(m)
		if err != nil {
			return fmt.Errorf("--model %s: %w", m, err)
		}
		if err := checkGGUF(abs); err != nil {
			return fmt.Errorf("--model %s: %w", m, err)
		}
		models[i] = abs
	}
	var size uint64
	for _, m := range models {
		if st, err := os.Stat(m); err == nil {
			size += uint64(st.Size())
		}
	}
	if len(gpus) > 0 && size > gpus[0].FreeBytes {
		fmt.Fprintf(out, "note: the models (%.1f GiB) exceed the first GPU's %.1f GiB of free VRAM: lower runtime.gpu_layers if they do not load\n",
			float64(size)/(1<<30), float64(gpus[0].FreeBytes)/(1<<30))
	}

	// Prices.
	prompt, completion := wf.pricePrompt, wf.priceCompletion
	if f.Changed("price-prompt") && prompt < 0 {
		return fmt.Errorf("--price-prompt: %d is negative", prompt)
	}
	if f.Changed("price-completion") && completion < 0 {
		return fmt.Errorf("--price-completion: %d is negative", completion)
	}
	if !f.Changed("price-prompt") || !f.Changed("price-completion") {
		if wf.nonInteractive {
			name := "price-prompt"
			if f.Changed("price-prompt") {
				name = "price-completion"
			}
			return fmt.Errorf("--%s: required with --non-interactive (nanoTON per 1M tokens)", name)
		}
		sp, sc, from := suggestPrices(cmd.Context(), datadir, models)
		fmt.Fprintf(out, "suggested prices: %s\n", from)
		var err error
		if !f.Changed("price-prompt") {
			if prompt, err = ask.price("price-prompt", "nanoTON per 1M prompt tokens", sp); err != nil {
				return err
			}
		}
		if !f.Changed("price-completion") {
			if completion, err = ask.price("price-completion", "nanoTON per 1M completion tokens", sc); err != nil {
				return err
			}
		}
	}
	if prompt == 0 && completion == 0 {
		return errors.New("--price-prompt: both prices are 0: a worker must charge for something")
	}

	// Chain (before the enclave: sim is refused on TON mainnet).
	chain := wf.chain
	if chain == "" {
		var err error
		if chain, err = ask.value("chain", "chain to settle on: ton or devledger (a simulated chain for testnets)", ""); err != nil {
			return err
		}
	}
	opts := node.WorkerOptions{Models: models, PricePrompt: prompt, PriceCompletion: completion, Chain: chain}
	switch chain {
	case node.ChainDevLedger:
		if wf.tonNetwork != "" {
			return errors.New("--ton-network: only with --chain ton")
		}
		opts.DevLedgerURL = wf.ledgerURL
		if opts.DevLedgerURL == "" {
			var err error
			if opts.DevLedgerURL, err = ask.value("ledger-url", "the devledger's URL (cocoon ledger serve prints it)", ""); err != nil {
				return err
			}
		}
		if !strings.HasPrefix(opts.DevLedgerURL, "http://") && !strings.HasPrefix(opts.DevLedgerURL, "https://") {
			return fmt.Errorf("--ledger-url: %q is not an http(s) URL", opts.DevLedgerURL)
		}
	case node.ChainTON:
		if wf.ledgerURL != "" {
			return errors.New("--ledger-url: only with --chain devledger")
		}
		opts.TONNetwork = wf.tonNetwork
		if opts.TONNetwork == "" {
			var err error
			if opts.TONNetwork, err = ask.value("ton-network", "TON network: mainnet or testnet", "mainnet"); err != nil {
				return err
			}
		}
		if opts.TONNetwork != "mainnet" && opts.TONNetwork != "testnet" {
			return fmt.Errorf("--ton-network: %q is not mainnet or testnet", opts.TONNetwork)
		}
	default:
		return fmt.Errorf("--chain: %q is not ton or devledger", chain)
	}

	// Enclave kind.
	switch wf.tee {
	case "auto":
		kind, why := detectTEE("/")
		fmt.Fprintf(out, "enclave: %s (%s)\n", kind.Tier(), why)
		if kind == tee.None {
			fmt.Fprintln(out, "note: a worker without a TEE sees the prompts; clients buy from it only if their enclave.policy.allowed_kinds lists none")
		}
		opts.Attester = kind
	case "sim":
		if opts.Chain == node.ChainTON && opts.TONNetwork == "mainnet" {
			return errors.New("--tee: sim (simulated, not confidential) is for testnets, not TON mainnet")
		}
		opts.Attester = tee.Sim
	default:
		k, err := tee.Parse(wf.tee)
		if err != nil {
			return fmt.Errorf("--tee: %q is not auto, tdx, sev-snp, none or sim", wf.tee)
		}
		opts.Attester = k
	}

	// Render (and so validate) before anything is written.
	if _, err := node.RenderWorkerConfig(opts); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(datadir, node.IdentityFile)); err == nil && !force {
		fmt.Fprintf(out, "identity: kept %s\n", filepath.Join(datadir, node.IdentityFile))
	} else if err := initDatadir(out, datadir, force); err != nil {
		return err
	}
	if err := initWallet(io.Discard, datadir); err != nil { // initDatadir made it unless the identity was kept
		return err
	}
	backup, err := node.WriteWorkerConfig(datadir, opts)
	if err != nil {
		return err
	}
	if backup != "" {
		fmt.Fprintf(out, "config: the previous one is kept as %s\n", backup)
	}
	fmt.Fprintf(out, "config: %s (%d model(s), %d/%d nanoTON per 1M prompt/completion tokens, enclave %s, chain %s)\n",
		filepath.Join(datadir, node.ConfigFile), len(models), prompt, completion, opts.Attester, chain)

	// The runtime.
	install := wf.installRuntime
	host := llamalib.DetectHost()
	if _, err := llamalib.Choose(llamalib.Options{DataDir: datadir, Host: &host}); err != nil && !install {
		if !wf.nonInteractive && os.Getenv("COCOON_LLAMA_LIB") == "" {
			yes, err := ask.yes(fmt.Sprintf("no llama.cpp runtime installed; install the %s build now?", bestKind(host)))
			if err != nil {
				return err
			}
			install = yes
		}
		if !install {
			fmt.Fprintf(out, "runtime: none found (%v): run `cocoon runtime install --datadir %s`\n", err, datadir)
		}
	}
	if install {
		kind := bestKind(host)
		fmt.Fprintf(out, "this machine: %s: installing %s\n", host.Why, kind)
		if err := installRuntime(cmd.Context(), out, cmd.ErrOrStderr(), llamalib.DataDirRoot(datadir), kind, wf.registry); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "start the worker:\n  cocoon node --datadir %s\n", datadir)
	return nil
}

// installRuntime is what `cocoon runtime install KIND` does: the kind's build
// and, for a GPU kind, the CPU build the node falls back to.
func installRuntime(ctx context.Context, out, logTo io.Writer, root string, kind llamalib.Kind, registry string) error {
	opt := llamalib.InstallOptions{Registry: registry, Logger: slog.New(slog.NewTextHandler(logTo, nil))}
	kinds := []llamalib.Kind{kind}
	if kind.GPU() {
		kinds = append(kinds, llamalib.CPU)
	}
	for _, k := range kinds {
		dir, err := llamalib.Install(ctx, root, k, opt)
		if err != nil {
			return fmt.Errorf("--install-runtime: %w", err)
		}
		fmt.Fprintf(out, "llama.cpp %s build: %s\n", k, dir)
	}
	return nil
}

// checkGGUF says whether path is a GGUF file the embedded engine can read:
// it exists, is a regular file and opens with the magic and a version 2 or 3
// header (runtime/llamacpp checks the same at load, unexported).
func checkGGUF(path string) error {
	fh, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return errors.New("no such file")
		}
		return err
	}
	defer fh.Close()
	if st, err := fh.Stat(); err != nil {
		return err
	} else if !st.Mode().IsRegular() {
		return errors.New("not a regular file")
	}
	head := make([]byte, 8)
	if _, err := io.ReadFull(fh, head); err != nil || !bytes.Equal(head[:4], []byte("GGUF")) {
		return errors.New("not a GGUF file (no GGUF magic)")
	}
	if v := uint32(head[4]) | uint32(head[5])<<8 | uint32(head[6])<<16 | uint32(head[7])<<24; v != 2 && v != 3 {
		return fmt.Errorf("not a GGUF file the engine reads (version %d, want 2 or 3)", v)
	}
	return nil
}

// detectTEE finds the enclave kind of the machine under root ("/" but in
// tests): the TDX or SEV-SNP guest device, and configfs-tsm, through which
// the node makes its evidence; with neither device, tee.None.
func detectTEE(root string) (tee.Kind, string) {
	exists := func(p string) bool { _, err := os.Stat(filepath.Join(root, p)); return err == nil }
	const tsm = "sys/kernel/config/tsm/report"
	hasTSM := exists(tsm)
	var kind tee.Kind
	var dev string
	switch {
	case exists("dev/tdx_guest"):
		kind, dev = tee.TDX, "/dev/tdx_guest"
	case exists("dev/sev-guest"):
		kind, dev = tee.SEVSNP, "/dev/sev-guest"
	case hasTSM && root == "/":
		// configfs-tsm without a device node we know: ask its provider.
		if a, err := enclave.NewTSMAttester(nil); err == nil {
			return a.Kind(), "configfs-tsm provider"
		}
	}
	switch {
	case kind == "":
		return tee.None, "no /dev/tdx_guest, /dev/sev-guest or configfs-tsm provider"
	case !hasTSM:
		return kind, dev + " found, but no /" + tsm + ": the node needs configfs-tsm (Linux 6.7 or later) to attest"
	}
	return kind, dev + " and configfs-tsm"
}

// suggestPrices is the median of the prices a node running on datadir sees
// in the ads (its /v1/models lists each model's lowest and highest price;
// the models given are preferred when some worker sells them), else the
// defaults. from says which.
func suggestPrices(ctx context.Context, datadir string, models []string) (prompt, completion int64, from string) {
	prompt, completion = node.DefaultPricePrompt, node.DefaultPriceCompletion
	from = fmt.Sprintf("the defaults (no node running on %s to read ads from)", datadir)
	api, err := local.FromDatadir(datadir)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	list, err := api.Models(ctx)
	if err != nil {
		from = fmt.Sprintf("the defaults (the node on %s: %v)", datadir, err)
		return
	}
	ids := map[string]bool{}
	for _, m := range models {
		ids[runtime.ModelIDFromPath(m)] = true
	}
	collect := func(only bool) (ps, cs []float64) {
		for _, m := range list {
			price, ok := m.Extra["price_nanoton_per_1m"].(map[string]any)
			if !ok || local.Workers(m) == 0 || (only && !ids[m.ID]) {
				continue
			}
			for _, k := range []string{"prompt_min", "prompt_max"} {
				if v, ok := price[k].(float64); ok {
					ps = append(ps, v)
				}
			}
			for _, k := range []string{"completion_min", "completion_max"} {
				if v, ok := price[k].(float64); ok {
					cs = append(cs, v)
				}
			}
		}
		return
	}
	ps, cs := collect(true)
	what := "these models'"
	if len(ps) == 0 {
		ps, cs = collect(false)
		what = "all models'"
	}
	if len(ps) == 0 || len(cs) == 0 {
		from = "the defaults (the node sees no ads yet)"
		return
	}
	return int64(median(ps)), int64(median(cs)), fmt.Sprintf("the median of %s lowest and highest prices in the ads the node sees", what)
}

func median(v []float64) float64 {
	slices.Sort(v)
	if n := len(v); n%2 == 1 {
		return v[n/2]
	} else {
		return (v[n/2-1] + v[n/2]) / 2
	}
}

// asker asks for the values the flags did not give; non-interactive, it
// answers every question with an error naming the flag.
type asker struct {
	in    *bufio.Reader
	out   io.Writer
	never bool
}

func newAsker(in io.Reader, out io.Writer, never bool) *asker {
	return &asker{in: bufio.NewReader(in), out: out, never: never}
}

// value asks for flag's value; def is taken on an empty answer.
func (a *asker) value(flag, question, def string) (string, error) {
	if a.never {
		return "", fmt.Errorf("--%s: required with --non-interactive", flag)
	}
	if def != "" {
		fmt.Fprintf(a.out, "%s [%s]: ", question, def)
	} else {
		fmt.Fprintf(a.out, "%s: ", question)
	}
	line, err := a.in.ReadString('\n')
	line = strings.TrimSpace(line)
	if err != nil && line == "" {
		return "", fmt.Errorf("--%s: no answer on stdin (give the flag, or --non-interactive)", flag)
	}
	if line == "" {
		line = def
	}
	return line, nil
}

func (a *asker) price(flag, question string, def int64) (int64, error) {
	s, err := a.value(flag, question, strconv.FormatInt(def, 10))
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("--%s: %q is not a price (a whole number of nanoTON, not negative)", flag, s)
	}
	return v, nil
}

func (a *asker) yes(question string) (bool, error) {
	s, err := a.value("install-runtime", question+" [Y/n]", "")
	if err != nil {
		return false, err
	}
	return s == "" || strings.EqualFold(s, "y") || strings.EqualFold(s, "yes"), nil
}
