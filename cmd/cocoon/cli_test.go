package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/client/local"
	"github.com/cocoon-network/cocoon/node/gateway"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

// bin is the cocoon binary built once for the tests that run it as a user would.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cocoon-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "cocoon")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build cocoon: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// run runs the binary to completion.
func run(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

func initDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "node")
	if _, stderr, err := run(t, "init", "--datadir", dir); err != nil {
		t.Fatalf("cocoon init: %v: %s", err, stderr)
	}
	// Keep test nodes off the LAN: no UPnP, no multicast (these are the defaults,
	// checked here so a changed default cannot leak traffic from tests).
	b, _ := os.ReadFile(filepath.Join(dir, "config.toml"))
	if !strings.Contains(string(b), "mdns = false") || !strings.Contains(string(b), "nat_port_map = false") {
		t.Fatalf("config.toml defaults changed: mdns and nat_port_map must stay off in tests")
	}
	return dir
}

type proc struct {
	cmd     *exec.Cmd
	datadir string
	stderr  *syncBuffer // the node writes it while the test reads
}

func startNode(t *testing.T, dir string, extra ...string) *proc {
	t.Helper()
	args := append([]string{"node", "--datadir", dir, "--listen", "/ip4/127.0.0.1/tcp/0",
		"--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--api", "127.0.0.1:0", "--mdns=false"}, extra...)
	cmd := exec.Command(bin, args...)
	p := &proc{cmd: cmd, datadir: dir, stderr: &syncBuffer{}}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(dir, "api.addr")); err == nil {
			break
		}
		if time.Now().After(deadline) || cmd.ProcessState != nil {
			t.Fatalf("node API not up after 15 s; node stderr:\n%s", p.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return p
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *proc) status(t *testing.T) gateway.Status {
	t.Helper()
	out, stderr, err := run(t, "status", "--datadir", p.datadir, "--json")
	if err != nil {
		t.Fatalf("cocoon status: %v: %s", err, stderr)
	}
	var st gateway.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status JSON %q: %v", out, err)
	}
	return st
}

func (p *proc) peers(t *testing.T) map[string]bool {
	t.Helper()
	out, stderr, err := run(t, "peers", "--datadir", p.datadir, "--json")
	if err != nil {
		t.Fatalf("cocoon peers: %v: %s", err, stderr)
	}
	var ps []gateway.Peer
	if err := json.Unmarshal([]byte(out), &ps); err != nil {
		t.Fatalf("peers JSON %q: %v", out, err)
	}
	set := map[string]bool{}
	for _, p := range ps {
		set[p.ID] = true
	}
	return set
}

// TestThreeProcesses starts a bootstrap node and two nodes pointing at it, all
// on the default configuration (DHT mode auto, no mDNS); each sees the other
// two (the two meet through the DHT, not only through the bootstrap node);
// after SIGKILL of the bootstrap node the other two stay connected; after
// SIGKILL of one more, the last drops it (within the liveness pings' two
// misses, not at the QUIC idle timeout).
func TestThreeProcesses(t *testing.T) {
	start0 := time.Now()
	boot := startNode(t, initDir(t))
	bst := boot.status(t)
	var bootAddr string
	for _, a := range bst.Addrs {
		if strings.Contains(a, "/tcp/") {
			bootAddr = a
		}
	}
	a := startNode(t, initDir(t), "--bootstrap", bootAddr)
	b := startNode(t, initDir(t), "--bootstrap", bootAddr)
	procs := []*proc{boot, a, b}
	ids := make([]string, 3)
	for i, p := range procs {
		ids[i] = p.status(t).PeerID
	}
	for i, p := range procs {
		waitFor(t, 20*time.Second, fmt.Sprintf("node %d to see the other two", i), func() bool {
			ps := p.peers(t)
			return ps[ids[(i+1)%3]] && ps[ids[(i+2)%3]]
		})
	}
	// The bootstrap node is an entry point and nothing more: without it the
	// other two stay connected.
	if err := boot.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	boot.cmd.Wait()
	waitFor(t, 25*time.Second, "node 1 to drop the killed bootstrap node", func() bool { return !a.peers(t)[ids[0]] })
	if !a.peers(t)[ids[2]] || !b.peers(t)[ids[1]] {
		t.Fatalf("nodes 1 and 2 lost each other with the bootstrap node")
	}
	if err := b.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	b.cmd.Wait()
	killed := time.Now()
	waitFor(t, 25*time.Second, "node 1 to drop the killed node 2", func() bool {
		return !a.peers(t)[ids[2]]
	})
	t.Logf("connected in %s; killed node dropped after %s", killed.Sub(start0), time.Since(killed))
	// SIGTERM stops a node cleanly, well within 5 s.
	start := time.Now()
	a.cmd.Process.Signal(syscall.SIGTERM)
	if err := a.cmd.Wait(); err != nil {
		t.Fatalf("node exit after SIGTERM: %v\n%s", err, a.stderr)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("SIGTERM took %s", d)
	}
	if _, err := os.Stat(filepath.Join(a.datadir, "api.addr")); err == nil {
		t.Error("api.addr left behind after a clean stop")
	}
}

// Each bad input exits non-zero with one line that names the problem.
func TestBadInputOneLine(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	unknownKey := initDir(t)
	f, _ := os.OpenFile(filepath.Join(unknownKey, "config.toml"), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("verbosity = 3\n") // lands in [log], the last section
	f.Close()

	badKey := initDir(t)
	os.WriteFile(filepath.Join(badKey, "identity.key"), []byte("garbage"), 0o600)
	openKey := initDir(t)
	os.Chmod(filepath.Join(openKey, "identity.key"), 0o644)
	dirKey := initDir(t)
	os.Remove(filepath.Join(dirKey, "identity.key"))
	os.Mkdir(filepath.Join(dirKey, "identity.key"), 0o700)

	ok := initDir(t)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown config key", []string{"node", "--datadir", unknownKey}, "unknown key log.verbosity"},
		{"malformed multiaddr flag", []string{"node", "--datadir", ok, "--listen", "/ip4/127.0.0.1/tcp/notaport"}, "p2p.listen[0]"},
		{"malformed bootstrap flag", []string{"node", "--datadir", ok, "--bootstrap", "/ip4/127.0.0.1/tcp/1"}, "p2p.bootstrap[0]"},
		{"garbage identity key", []string{"node", "--datadir", badKey, "--api", "127.0.0.1:0"}, "identity key"},
		{"identity key readable by others", []string{"node", "--datadir", openKey, "--api", "127.0.0.1:0"}, "chmod 600"},
		{"identity key unreadable", []string{"node", "--datadir", dirKey, "--api", "127.0.0.1:0"}, "identity key"},
		{"API port in use", []string{"node", "--datadir", ok, "--listen", "/ip4/127.0.0.1/tcp/0", "--api", busy.Addr().String()}, "api.listen"},
		{"bad log format", []string{"node", "--datadir", ok, "--log-format", "xml"}, "log.format"},
		{"no datadir", []string{"node", "--datadir", filepath.Join(t.TempDir(), "none")}, "cocoon init"},
		{"missing model file", []string{"node", "--datadir", ok, "--serve", "/nonexistent/model.gguf"}, "runtime.models[0].path"},
		{"status without node", []string{"status", "--datadir", ok}, "no running node"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, err := run(t, tc.args...)
			if err == nil {
				t.Fatalf("cocoon %v succeeded", tc.args)
			}
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], tc.want) {
				t.Fatalf("cocoon %v stderr:\n%s\nwant one line containing %q", tc.args, stderr, tc.want)
			}
		})
	}
}

// TestServeModel runs a worker node on the shared model, as `make run` does.
func TestServeModel(t *testing.T) {
	model := testModel(t)
	p := startNode(t, initDir(t), "--serve", model)
	st := p.status(t)
	if len(st.Models) != 1 || st.Models[0].ID != "stories260K" ||
		st.Models[0].Digest != "sha256:270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d" {
		t.Fatalf("status models = %+v", st.Models)
	}
	if len(st.GPUs) == 0 && st.GPUReason == "" {
		t.Fatal("status reports no GPU and no reason")
	}
	// Where the model runs: the CPU build here, no layer on a GPU; a GPU
	// machine shows cuda or vulkan and the layers offloaded.
	if o := st.Models[0].Offload; o == nil || o.Layers == 0 || (o.Lib == "cpu") != (o.GPULayers == 0) {
		t.Fatalf("status offload = %+v; want the build and its layers", o)
	}
	api, err := local.FromDatadir(p.datadir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	greedy, n24, n20 := 0.0, 24, 20
	out, _, err := api.Completion(ctx, openaiapi.CompletionRequest{Model: "stories260K", Prompt: "Once upon a time", MaxTokens: &n24, Temperature: &greedy})
	if err != nil || out.Usage == nil {
		t.Fatalf("completion: %+v, %v", out, err)
	}
	// MODELS.md records the model's greedy continuation of this prompt.
	if len(out.Choices) != 1 || !strings.HasPrefix(out.Choices[0].Text, ", there was a little girl named Lily") || out.Usage.CompletionTokens != 24 {
		t.Fatalf("completion = %+v", out)
	}

	// `cocoon models` lists it; `cocoon chat` streams the same greedy answer the
	// non-streaming chat endpoint gives.
	mo, _, err := run(t, "models", "--datadir", p.datadir, "--json")
	if err != nil || !strings.Contains(mo, `"stories260K"`) {
		t.Fatalf("cocoon models: %v: %s", err, mo)
	}
	cout, _, err := api.ChatCompletion(ctx, openaiapi.ChatCompletionRequest{Model: "stories260K",
		Messages: []openaiapi.ChatMessage{{Role: "user", Content: "Tell me a story"}}, MaxTokens: &n20, Temperature: &greedy})
	if err != nil || len(cout.Choices) != 1 {
		t.Fatalf("chat completion: %+v, %v", cout, err)
	}
	streamed, stderr, err := run(t, "chat", "--datadir", p.datadir, "--model", "stories260K", "--temperature", "0", "--max-tokens", "20", "Tell me a story")
	if err != nil {
		t.Fatalf("cocoon chat: %v: %s", err, stderr)
	}
	if answer := string(cout.Choices[0].Message.Content); strings.TrimSuffix(streamed, "\n") != answer || answer == "" {
		t.Fatalf("cocoon chat printed %q; the API answered %q", streamed, answer)
	}
	if !strings.Contains(stderr, "20 completion tokens") {
		t.Fatalf("cocoon chat summary %q lacks the usage", stderr)
	}
}

// TestLedgerWalletChannel drives the money commands as a user would: a shared
// devledger service, a faucet, a wallet balance, a channel opened to a worker.
func TestLedgerWalletChannel(t *testing.T) {
	url := startLedger(t)
	client, worker := initDir(t), initDir(t)
	mustRun := func(args ...string) string {
		t.Helper()
		o, e, err := run(t, args...)
		if err != nil {
			t.Fatalf("cocoon %v: %v\n%s", args, err, e)
		}
		return o
	}
	o := mustRun("wallet", "faucet", "--datadir", client, "--ledger", url)
	if !strings.Contains(o, "simulated chain, not TON") || !strings.Contains(o, "credited") {
		t.Fatalf("faucet output %q", o)
	}
	w := mustRun("wallet", "--datadir", worker, "--ledger", url)
	field := func(out, name string) string {
		for _, line := range strings.Split(out, "\n") {
			if v, ok := strings.CutPrefix(line, name+": "); ok {
				return strings.TrimSpace(v)
			}
		}
		t.Fatalf("no %q in %q", name, out)
		return ""
	}
	mustRun("channel", "open", "--datadir", client, "--ledger", url, "--deposit", "1000000000",
		"--worker-addr", field(w, "address"), "--worker-key", field(w, "channel key"))
	list := mustRun("channel", "list", "--datadir", client, "--ledger", url)
	if !strings.Contains(list, "1000000000") {
		t.Fatalf("channel list does not show the 1 TON deposit:\n%s", list)
	}
	bal := field(mustRun("wallet", "--datadir", client, "--ledger", url), "balance")
	if !strings.HasSuffix(bal, "nanoTON") || bal == "10000000000 nanoTON" {
		t.Fatalf("client balance after opening a channel = %q; want less than the 10 TON credited", bal)
	}
}

// syncBuffer is a bytes.Buffer safe for a writer process and a reading test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }
