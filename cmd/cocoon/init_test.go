package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/client/local"
	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/node"
	"github.com/cocoon-network/cocoon/runtime/llamalib"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

// startLedger runs `cocoon ledger serve` on loopback and returns its URL.
func startLedger(t *testing.T) string {
	t.Helper()
	ledger := exec.Command(bin, "ledger", "serve", "--listen", "127.0.0.1:0")
	out := &syncBuffer{}
	ledger.Stdout = out
	if err := ledger.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ledger.Process.Kill(); ledger.Wait() })
	var url string
	waitFor(t, 10*time.Second, "ledger URL", func() bool {
		for _, f := range strings.Fields(out.String()) {
			if strings.HasPrefix(f, "http://127.0.0.1:") {
				url = f
				return true
			}
		}
		return false
	})
	return url
}

// workerArgs are a complete non-interactive `cocoon init --worker`.
func workerArgs(dir, model, ledger string) []string {
	return []string{"init", "--worker", "--non-interactive", "--datadir", dir, "--model", model,
		"--price-prompt", "1000", "--price-completion", "2000", "--tee", "sim", "--chain", "devledger", "--ledger-url", ledger}
}

// startWorker writes a worker's datadir with `cocoon init --worker
// --non-interactive` and starts `cocoon node` on it, loopback only.
func startWorker(t *testing.T, ledger string) *proc {
	t.Helper()
	model := testModel(t)
	dir := filepath.Join(t.TempDir(), "worker")
	out, stderr, err := run(t, workerArgs(dir, model, ledger)...)
	if err != nil {
		t.Fatalf("cocoon init --worker: %v\n%s%s", err, out, stderr)
	}
	if !strings.Contains(out, "cocoon node --datadir "+dir) {
		t.Fatalf("init --worker did not print the command to start:\n%s", out)
	}
	return startNode(t, dir)
}

// TestInitWorker is must-show 3: the config `cocoon init --worker
// --non-interactive` writes is one `cocoon node` starts with and serves the
// model from: its /v1/models lists it, its own gateway answers a chat.
func TestInitWorker(t *testing.T) {
	p := startWorker(t, startLedger(t))
	b, err := os.ReadFile(filepath.Join(p.datadir, node.ConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"[[runtime.models]]", "[[market.prices]]", `attester = "sim"`, "allow_sim = true",
		`chain = "devledger"`, "prompt = 1000", "completion = 2000", "# How this node runs inference"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("config.toml lacks %q", want)
		}
	}
	api, err := local.FromDatadir(p.datadir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	waitFor(t, 15*time.Second, "/v1/models to list stories260K", func() bool {
		ms, err := api.Models(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			if m.ID == "stories260K" {
				return true
			}
		}
		return false
	})
	greedy, n := 0.0, 16
	out, _, err := api.ChatCompletion(ctx, openaiapi.ChatCompletionRequest{Model: "stories260K",
		Messages: []openaiapi.ChatMessage{{Role: "user", Content: "Tell me a story"}}, MaxTokens: &n, Temperature: &greedy})
	if err != nil || len(out.Choices) != 1 || out.Choices[0].Message.Content == "" || out.Usage == nil || out.Usage.CompletionTokens == 0 {
		t.Fatalf("chat completion through the worker's own gateway: %+v, %v", out, err)
	}
	st := p.status(t)
	if len(st.Models) != 1 || st.Models[0].ID != "stories260K" {
		t.Fatalf("status models = %+v", st.Models)
	}
}

// TestInitWorkerBadFlags: each bad flag is refused on one line naming it,
// and leaves no datadir behind.
func TestInitWorkerBadFlags(t *testing.T) {
	model := testModel(t)
	notGGUF := filepath.Join(t.TempDir(), "model.gguf")
	os.WriteFile(notGGUF, []byte("this is not a model, only text of some length"), 0o644)
	const ledger = "http://127.0.0.1:1"
	with := func(flag, value string) []string { // the complete set with flag set to value
		args := workerArgs("DIR", model, ledger)
		for i := range args {
			if args[i] == flag {
				args[i+1] = value
				return args
			}
		}
		return append(args, flag, value)
	}
	without := func(flag string) []string {
		args := workerArgs("DIR", model, ledger)
		for i := range args {
			if args[i] == flag {
				return append(args[:i:i], args[i+2:]...)
			}
		}
		panic(flag)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"missing model file", with("--model", "/nonexistent/model.gguf"), "--model"},
		{"not a GGUF", with("--model", notGGUF), "--model"},
		{"a directory", with("--model", t.TempDir()), "--model"},
		{"negative prompt price", with("--price-prompt", "-5"), "--price-prompt"},
		{"negative completion price", with("--price-completion", "-1"), "--price-completion"},
		{"price not a number", with("--price-prompt", "cheap"), "--price-prompt"},
		{"unknown tee", with("--tee", "sgx"), "--tee"},
		{"unknown chain", with("--chain", "ethereum"), "--chain"},
		{"ledger URL not a URL", with("--ledger-url", "ledger.example"), "--ledger-url"},
		{"no model", without("--model"), "--model"},
		{"no prompt price", without("--price-prompt"), "--price-prompt"},
		{"no completion price", without("--price-completion"), "--price-completion"},
		{"no chain", without("--chain"), "--chain"},
		{"no ledger URL", without("--ledger-url"), "--ledger-url"},
		{"worker flag without --worker", []string{"init", "--datadir", "DIR", "--model", model}, "--model"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "w")
			for i := range tc.args {
				if tc.args[i] == "DIR" {
					tc.args[i] = dir
				}
			}
			_, stderr, err := run(t, tc.args...)
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			if err == nil || len(lines) != 1 || !strings.Contains(lines[0], tc.want) {
				t.Fatalf("cocoon %v: %v, stderr:\n%s\nwant a failure, one line naming %s", tc.args, err, stderr, tc.want)
			}
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("a refused init left %s behind", dir)
			}
		})
	}
	// sim is refused on TON mainnet (the chain flags are replaced whole).
	args := []string{"init", "--worker", "--non-interactive", "--datadir", filepath.Join(t.TempDir(), "w"), "--model", model,
		"--price-prompt", "1", "--price-completion", "2", "--tee", "sim", "--chain", "ton", "--ton-network", "mainnet"}
	if _, stderr, err := run(t, args...); err == nil || !strings.Contains(stderr, "--tee") {
		t.Fatalf("--tee sim on TON mainnet: %v, %s; want a refusal naming --tee", err, stderr)
	}
}

// TestInitWorkerInteractive answers the questions on stdin: the suggested
// prices (the defaults: no node runs on the datadir) are taken on an empty
// answer.
func TestInitWorkerInteractive(t *testing.T) {
	model := testModel(t)
	dir := filepath.Join(t.TempDir(), "w")
	cmd := exec.Command(bin, "init", "--worker", "--datadir", dir, "--tee", "none")
	cmd.Env = append(os.Environ(), "COCOON_LLAMA_LIB="+os.Getenv("COCOON_LLAMA_LIB"))
	cmd.Stdin = strings.NewReader(model + "\n\n\ndevledger\nhttp://127.0.0.1:1\n")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("interactive init --worker: %v\n%s", err, out)
	}
	b, _ := os.ReadFile(filepath.Join(dir, node.ConfigFile))
	for _, want := range []string{"prompt = 100000000", "completion = 400000000", `attester = "none"`, `devledger_url = "http://127.0.0.1:1"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("config.toml lacks %q; output:\n%s", want, out)
		}
	}
}

// TestRenderWorkerConfig: the rendering parses back to the options given,
// with the template's comments kept.
func TestRenderWorkerConfig(t *testing.T) {
	model := testModel(t)
	b, err := node.RenderWorkerConfig(node.WorkerOptions{Models: []string{model}, PricePrompt: 7, PriceCompletion: 9,
		Attester: tee.None, Chain: node.ChainTON, TONNetwork: "testnet"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := node.Defaults()
	if err := node.Parse(b, &cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.Runtime.Models) != 1 || cfg.Runtime.Models[0].Path != model || cfg.Runtime.Models[0].ID != "stories260K" ||
		len(cfg.Market.Prices) != 1 || cfg.Market.Prices[0] != (node.ModelPrice{Model: "stories260K", Prompt: 7, Completion: 9}) ||
		cfg.Enclave.Attester != tee.None || cfg.Enclave.Policy.AllowSim || cfg.Settle.Chain != node.ChainTON || cfg.Settle.TONNetwork != "testnet" {
		t.Fatalf("RenderWorkerConfig parsed back to %+v", cfg)
	}
	if !strings.Contains(string(b), "# libp2p listen addresses") {
		t.Error("the template's comments are gone")
	}
	if _, err := node.RenderWorkerConfig(node.WorkerOptions{Models: []string{"/nonexistent.gguf"}, PricePrompt: 1,
		Attester: tee.None, Chain: node.ChainDevLedger, DevLedgerURL: "http://x"}); err == nil {
		t.Error("RenderWorkerConfig of a missing model file: no error")
	}
}

// TestDetectTEE reads the guest devices and configfs-tsm under a fake root.
func TestDetectTEE(t *testing.T) {
	for _, tc := range []struct {
		files []string
		want  tee.Kind
		why   string
	}{
		{nil, tee.None, "no /dev/tdx_guest"},
		{[]string{"dev/tdx_guest", "sys/kernel/config/tsm/report/"}, tee.TDX, "configfs-tsm"},
		{[]string{"dev/sev-guest", "sys/kernel/config/tsm/report/"}, tee.SEVSNP, "configfs-tsm"},
		{[]string{"dev/tdx_guest"}, tee.TDX, "Linux 6.7"},
	} {
		root := t.TempDir()
		for _, f := range tc.files {
			p := filepath.Join(root, f)
			os.MkdirAll(filepath.Dir(p), 0o755)
			if strings.HasSuffix(f, "/") {
				os.MkdirAll(p, 0o755)
			} else {
				os.WriteFile(p, nil, 0o600)
			}
		}
		if k, why := detectTEE(root); k != tc.want || !strings.Contains(why, tc.why) {
			t.Errorf("detectTEE(%v) = %s, %q; want %s, mentioning %q", tc.files, k, why, tc.want, tc.why)
		}
	}
}

// TestInitWorkerInstallRuntime: --install-runtime installs what `cocoon
// runtime install` would (here the CPU build, from a loopback registry) into
// the datadir, where `cocoon node` finds it with no COCOON_LLAMA_LIB.
func TestInitWorkerInstallRuntime(t *testing.T) {
	if h := llamalib.DetectHost(); h.NVIDIA || h.Vulkan {
		t.Skipf("this machine has a GPU driver (%s): the loopback registry holds only the CPU build", h.Why)
	}
	model := testModel(t)
	reg := npmRegistry(t, cpuTarball(t))
	dir := filepath.Join(t.TempDir(), "w")
	args := append(workerArgs(dir, model, "http://127.0.0.1:1"), "--install-runtime", "--registry", reg)
	out, stderr, err := runEnv(t, bareEnv(t), args...)
	if err != nil {
		t.Fatalf("init --worker --install-runtime: %v\n%s%s", err, out, stderr)
	}
	if !strings.Contains(out, "llama.cpp cpu build: "+filepath.Join(dir, "runtime")) {
		t.Fatalf("init --worker --install-runtime output:\n%s", out)
	}
	if libs := llamalib.Installed(dir, ""); len(libs) == 0 {
		t.Fatalf("nothing installed in %s", dir)
	}
}
