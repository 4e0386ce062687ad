package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/internal/testmodel"
	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/testnet"
)

// channelPaid sums the PAID column of `cocoon channel list` rows of one role.
// It reads the local store only (the ledger may be stopped).
func channelPaid(t *testing.T, dir, role string) (total uint64, rows int) {
	t.Helper()
	out, stderr, err := run(t, "channel", "list", "--datadir", dir)
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
// chat completion through the client's gateway, and asks for a json_schema
// response_format, which comes back as JSON of the schema; then what the
// workers can claim is checked against what the client paid and was told.
func TestNetworkWithOpenAIClient(t *testing.T) {
	sdk := depPath(t, "COCOON_OPENAI_SDK", "openai-sdk/node_modules/openai", "the OpenAI SDK")
	c := startTestnet(t, 3, 2)
	client, workers := c.Nodes[0], c.Nodes[1:]
	price := market.Price{Prompt: uint64(testnet.LaunchPrice.Prompt), Completion: uint64(testnet.LaunchPrice.Completion)}

	script := filepath.Join(t.TempDir(), "client.js")
	os.WriteFile(script, []byte(`
const mod = require(process.env.OPENAI_SDK);
const OpenAI = mod.default || mod.OpenAI || mod;
(async () => {
  const client = new OpenAI({ baseURL: process.argv[2] + "/v1", apiKey: process.argv[3] });
  const models = [], structuredModels = [];
  for await (const m of client.models.list()) { models.push(m.id); if (m.structured_output) structuredModels.push(m.id); }
  const { data: stream, response } = await client.chat.completions.create({
    model: "stories260K", messages: [{ role: "user", content: "Tell me a story" }],
    max_tokens: 24, temperature: 0, stream: true, stream_options: { include_usage: true },
  }).withResponse();
  let text = "", usage = null;
  for await (const chunk of stream) {
    for (const ch of chunk.choices) text += ch.delta.content || "";
    if (chunk.usage) usage = chunk.usage;
  }
  const structured = await client.chat.completions.create({
    model: "stories260K", messages: [{ role: "user", content: "Pick a color" }], max_tokens: 200, temperature: 0,
    response_format: { type: "json_schema", json_schema: { name: "pick", strict: true, schema: {
      type: "object", properties: { ok: { type: "boolean" }, color: { enum: ["red", "green", "blue"] } },
      required: ["ok", "color"], additionalProperties: false } } },
  });
  console.log(JSON.stringify({ models, structuredModels, text, usage, worker: response.headers.get("x-cocoon-worker"), tee: response.headers.get("x-cocoon-tee"),
    structured: structured.choices[0].message.content, structuredUsage: structured.usage }));
})().catch((e) => { console.error(String(e)); process.exit(1); });
`), 0o644)
	js := exec.Command("node", script, client.URL, client.Token)
	js.Env = append(os.Environ(), "OPENAI_SDK="+sdk)
	out, err := js.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		log, _ := os.ReadFile(client.Log)
		t.Fatalf("openai SDK client: %v\n%s\nclient node log:\n%s", err, stderr, log)
	}
	type usage struct {
		PromptTokens     int     `json:"prompt_tokens"`
		CompletionTokens int     `json:"completion_tokens"`
		CostNanoTON      *uint64 `json:"cost_nanoton"`
	}
	var res struct {
		Models, StructuredModels []string
		Text                     string
		Usage                    usage
		Worker, TEE              string
		Structured               string
		StructuredUsage          usage
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
	if !strings.Contains(res.TEE, "sim") || (res.Worker != workers[0].PeerID && res.Worker != workers[1].PeerID) {
		t.Fatalf("answered by %q (TEE %q); want one of the two sim workers", res.Worker, res.TEE)
	}
	want, err := market.Cost(price, uint64(res.Usage.PromptTokens), uint64(res.Usage.CompletionTokens))
	if err != nil || *res.Usage.CostNanoTON != want {
		t.Fatalf("cost_nanoton %d; the price times the tokens is %d (%v)", *res.Usage.CostNanoTON, want, err)
	}

	var pick struct {
		OK    *bool   `json:"ok"`
		Color *string `json:"color"`
	}
	dec := json.NewDecoder(strings.NewReader(res.Structured))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&pick); err != nil || pick.OK == nil || pick.Color == nil ||
		!slices.Contains([]string{"red", "green", "blue"}, *pick.Color) || !slices.Equal(res.StructuredModels, []string{"stories260K"}) {
		t.Fatalf("json_schema answer %q (%v), models with structured output %v; want JSON of the schema from stories260K", res.Structured, err, res.StructuredModels)
	}
	su := res.StructuredUsage
	more, err := market.Cost(price, uint64(su.PromptTokens), uint64(su.CompletionTokens))
	if err != nil || su.CostNanoTON == nil || *su.CostNanoTON != more {
		t.Fatalf("json_schema answer's usage %+v; the price times the tokens is %d (%v)", su, more, err)
	}
	t.Logf("SDK json_schema: %s", res.Structured)

	checkBooks(t, c, want+more)
}

// checkBooks stops the testnet (its nodes hold their channel stores) and checks
// that what the clients paid and what the workers can claim both equal want.
func checkBooks(t *testing.T, c *testnet.Cluster, want uint64) {
	t.Helper()
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if paid, claim := books(t, c); paid != want || claim != want {
		t.Fatalf("clients paid %d, workers can claim %d; the answers cost %d", paid, claim, want)
	}
}

// books sums what a stopped testnet's clients paid and its workers can claim.
func books(t *testing.T, c *testnet.Cluster) (paid, claim uint64) {
	t.Helper()
	for _, p := range c.Nodes {
		got, _ := channelPaid(t, p.Datadir, p.Role)
		if p.Role == "client" {
			paid += got
		} else {
			claim += got
		}
	}
	return paid, claim
}

// TestTestnetUpDown runs `cocoon testnet up` as a user would, asks it a question
// with `cocoon chat`, stops it with `cocoon testnet down` (which leaves no process
// behind and ends `up`), and checks the books.
func TestTestnetUpDown(t *testing.T) {
	model := testModel(t)
	dir := t.TempDir()
	up := exec.Command(bin, "testnet", "up", "-n", "3", "--workers", "2", "--dir", dir, "--model", model)
	out := &syncBuffer{}
	up.Stdout, up.Stderr = out, out
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- up.Wait() }()
	t.Cleanup(func() { up.Process.Kill(); run(t, "testnet", "down", "--dir", dir) })
	waitFor(t, 90*time.Second, "testnet up to print its table", func() bool {
		return strings.Contains(out.String(), "Ctrl-C")
	})
	c, err := testnet.LoadCluster(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Nodes) != 3 || c.Ledger == nil || !strings.Contains(out.String(), "ledger (simulated)") {
		t.Fatalf("testnet state %+v; output:\n%s", c, out)
	}
	text, summary, err := run(t, "chat", "--datadir", c.Nodes[0].Datadir, "--temperature", "0", "--max-tokens", "16", "Tell me a story")
	if err != nil || strings.TrimSpace(text) == "" {
		t.Fatalf("cocoon chat: %v: %q %s", err, text, summary)
	}
	i := strings.LastIndex(summary, "; ")
	j := strings.LastIndex(summary, " nanoTON]")
	if i < 0 || j < i {
		t.Fatalf("chat summary %q names no cost", summary)
	}
	cost, err := strconv.ParseUint(summary[i+2:j], 10, 64)
	if err != nil || cost == 0 {
		t.Fatalf("chat summary %q: cost %d, %v", summary, cost, err)
	}
	if _, stderr, err := run(t, "testnet", "down", "--dir", dir); err != nil {
		t.Fatalf("testnet down: %v: %s", err, stderr)
	}
	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		t.Fatal("`testnet up` still running after `testnet down`")
	}
	for _, p := range append(c.Nodes, c.Ledger) {
		if p.Alive() {
			t.Errorf("%s (pid %d) still running after down", p.Name, p.PID)
		}
	}
	if paid, claim := books(t, c); paid != cost || claim != cost {
		t.Fatalf("client paid %d, workers can claim %d; the answer cost %d", paid, claim, cost)
	}
}

// testModel is the shared model's path; it also points the nodes this test starts
// at make deps' llama.cpp libraries when the environment does not.
func testModel(t *testing.T) string {
	t.Helper()
	if os.Getenv("COCOON_LLAMA_LIB") == "" {
		t.Setenv("COCOON_LLAMA_LIB", testmodel.LibDir())
	}
	model, err := filepath.Abs(testmodel.ModelPath(t))
	if err != nil {
		t.Fatal(err)
	}
	return model
}

// startTestnet launches a local testnet of real processes on 127.0.0.1 (the last
// workers of nodes serve the test model), stopped when the test ends.
func startTestnet(t *testing.T, nodes, workers int) *testnet.Cluster {
	t.Helper()
	c, err := testnet.Launch(context.Background(), testnet.LaunchConfig{Bin: bin, Dir: t.TempDir(), Nodes: nodes, Workers: workers, Model: testModel(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })
	return c
}

// depPath is a tool `make deps` put under .cache (rel), or $env when set; the
// test fails, saying to run `make deps`, when it is not there.
func depPath(t *testing.T, env, rel, what string) string {
	t.Helper()
	p := os.Getenv(env)
	if p == "" {
		p, _ = filepath.Abs(filepath.Join("../../.cache", rel))
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s is not at %s (%s): run `make deps`", what, p, env)
	}
	return p
}
