package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/market"
)

// startLedger runs `cocoon ledger serve` on a free loopback port and returns its URL.
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

// configure rewrites lines of a datadir's config.toml.
func configure(t *testing.T, dir string, repl ...string) {
	t.Helper()
	path := filepath.Join(dir, "config.toml")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for i := 0; i < len(repl); i += 2 {
		if !strings.Contains(s, repl[i]) {
			t.Fatalf("config.toml has no %q", repl[i])
		}
		s = strings.Replace(s, repl[i], repl[i+1], 1)
	}
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// channelPaid sums the PAID column of `cocoon channel list` rows of one role.
func channelPaid(t *testing.T, dir, ledger, role string) (total uint64, rows int) {
	t.Helper()
	out, stderr, err := run(t, "channel", "list", "--datadir", dir, "--ledger", ledger)
	if err != nil {
		t.Fatalf("cocoon channel list: %v: %s", err, stderr)
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 6 && f[0] == role {
			paid, err := strconv.ParseUint(f[5], 10, 64)
			if err != nil {
				t.Fatalf("channel list row %q: %v", line, err)
			}
			total += paid
			rows++
		}
	}
	return total, rows
}

// TestNetworkWithOpenAIClient runs real processes on 127.0.0.1: a shared devledger
// service, two workers serving the shared model with the simulated TEE, and a
// client node. The unmodified OpenAI JavaScript SDK lists models and streams a
// chat completion through the client's gateway; then what the workers can claim
// is checked against what the client paid and was told.
func TestNetworkWithOpenAIClient(t *testing.T) {
	sdk := os.Getenv("COCOON_OPENAI_SDK")
	if sdk == "" {
		sdk, _ = filepath.Abs("../../.cache/openai-sdk/node_modules/openai")
	}
	if _, err := os.Stat(sdk); err != nil {
		t.Fatalf("the OpenAI SDK is not installed at %s: run `make deps`", sdk)
	}
	model := os.Getenv("COCOON_TEST_MODEL")
	if model == "" {
		model = "../../../shared/models/stories260K.gguf"
	}
	if os.Getenv("COCOON_LLAMA_LIB") == "" {
		lib, _ := filepath.Abs("../../.cache/llama/lib")
		t.Setenv("COCOON_LLAMA_LIB", lib)
	}
	ledger := startLedger(t)
	price := market.Price{Prompt: 1_000_000, Completion: 3_000_000} // nanoTON per 1M tokens
	devledger := []string{`chain = "none"`, `chain = "devledger"`, `devledger_url = ""`, fmt.Sprintf("devledger_url = %q", ledger),
		`allow_sim = false`, `allow_sim = true`, `allowed_kinds = ["tdx", "sev-snp"]`, `allowed_kinds = ["sim"]`}

	var workers []string
	for range 2 {
		dir := initDir(t)
		configure(t, dir, append(devledger, `prices = []`,
			fmt.Sprintf("prices = [{model = \"stories260K\", prompt = %d, completion = %d}]", price.Prompt, price.Completion),
			`attester = "none"`, `attester = "sim"`)...)
		workers = append(workers, dir)
	}
	client := initDir(t)
	configure(t, client, append(devledger, `accept_tee = ["tdx", "sev-snp"]`, `accept_tee = ["sim"]`)...)
	if _, stderr, err := run(t, "wallet", "faucet", "--datadir", client, "--ledger", ledger); err != nil {
		t.Fatalf("faucet: %v: %s", err, stderr)
	}
	field := func(out, name string) string {
		for _, line := range strings.Split(out, "\n") {
			if v, ok := strings.CutPrefix(line, name+": "); ok {
				return strings.TrimSpace(v)
			}
		}
		t.Fatalf("no %q in %q", name, out)
		return ""
	}
	for _, w := range workers {
		wo, stderr, err := run(t, "wallet", "--datadir", w, "--ledger", ledger)
		if err != nil {
			t.Fatalf("wallet: %v: %s", err, stderr)
		}
		if _, stderr, err := run(t, "channel", "open", "--datadir", client, "--ledger", ledger, "--deposit", "1000000000",
			"--worker-addr", field(wo, "address"), "--worker-key", field(wo, "channel key")); err != nil {
			t.Fatalf("channel open: %v: %s", err, stderr)
		}
	}

	w0 := startNode(t, workers[0], "--serve", model, "--dht-mode", "server")
	var boot string
	for _, a := range w0.status(t).Addrs {
		if strings.Contains(a, "/tcp/") {
			boot = a
		}
	}
	w1 := startNode(t, workers[1], "--serve", model, "--dht-mode", "server", "--bootstrap", boot)
	c := startNode(t, client, "--dht-mode", "server", "--bootstrap", boot)
	waitFor(t, 40*time.Second, "both workers' ads at the client", func() bool {
		out, _, err := run(t, "models", "--datadir", client, "--json")
		return err == nil && strings.Contains(out, `"workers": 2`)
	})

	script := filepath.Join(t.TempDir(), "client.js")
	os.WriteFile(script, []byte(`
const mod = require(process.env.OPENAI_SDK);
const OpenAI = mod.default || mod.OpenAI || mod;
(async () => {
  const client = new OpenAI({ baseURL: process.argv[2] + "/v1", apiKey: process.argv[3] });
  const models = [];
  for await (const m of client.models.list()) models.push(m.id);
  const { data: stream, response } = await client.chat.completions.create({
    model: "stories260K", messages: [{ role: "user", content: "Tell me a story" }],
    max_tokens: 24, temperature: 0, stream: true, stream_options: { include_usage: true },
  }).withResponse();
  let text = "", usage = null;
  for await (const chunk of stream) {
    for (const ch of chunk.choices) text += ch.delta.content || "";
    if (chunk.usage) usage = chunk.usage;
  }
  console.log(JSON.stringify({ models, text, usage, worker: response.headers.get("x-cocoon-worker"), tee: response.headers.get("x-cocoon-tee") }));
})().catch((e) => { console.error(String(e)); process.exit(1); });
`), 0o644)
	addr, _ := os.ReadFile(filepath.Join(client, "api.addr"))
	tok, _ := os.ReadFile(filepath.Join(client, "api.token"))
	js := exec.Command("node", script, "http://"+strings.TrimSpace(string(addr)), strings.TrimSpace(string(tok)))
	js.Env = append(os.Environ(), "OPENAI_SDK="+sdk)
	out, err := js.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("openai SDK client: %v\n%s\nclient node log:\n%s", err, stderr, c.stderr)
	}
	var res struct {
		Models []string
		Text   string
		Usage  struct {
			PromptTokens     int     `json:"prompt_tokens"`
			CompletionTokens int     `json:"completion_tokens"`
			CostNanoTON      *uint64 `json:"cost_nanoton"`
		}
		Worker, TEE string
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("SDK output %q: %v", out, err)
	}
	t.Logf("SDK: models %v; %q from %s (%s); usage %+v", res.Models, res.Text, res.Worker, res.TEE, res.Usage)
	if len(res.Models) == 0 || res.Models[0] != "stories260K" {
		t.Fatalf("models.list = %v", res.Models)
	}
	if res.Text == "" || res.Usage.CompletionTokens != 24 || res.Usage.CostNanoTON == nil {
		t.Fatalf("streamed answer %q, usage %+v", res.Text, res.Usage)
	}
	if !strings.Contains(res.TEE, "sim") || (res.Worker != w0.status(t).PeerID && res.Worker != w1.status(t).PeerID) {
		t.Fatalf("answered by %q (TEE %q); want one of the two sim workers", res.Worker, res.TEE)
	}
	want, err := market.Cost(price, uint64(res.Usage.PromptTokens), uint64(res.Usage.CompletionTokens))
	if err != nil || *res.Usage.CostNanoTON != want {
		t.Fatalf("cost_nanoton %d; the price times the tokens is %d (%v)", *res.Usage.CostNanoTON, want, err)
	}

	// Stop the nodes (they hold their channel stores) and read the books.
	for _, p := range []*proc{c, w0, w1} {
		p.cmd.Process.Signal(os.Interrupt)
		p.cmd.Wait()
	}
	paid, _ := channelPaid(t, client, ledger, "client")
	var claim uint64
	for _, w := range workers {
		got, _ := channelPaid(t, w, ledger, "worker")
		claim += got
	}
	if paid != want || claim != want {
		t.Fatalf("client paid %d, workers can claim %d; the answer cost %d", paid, claim, want)
	}
}
