package testnet

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"syscall"
	"time"

	"github.com/cocoon-network/cocoon/client/local"
	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/node"
)

// LaunchConfig describes a local testnet of real cocoon processes on 127.0.0.1.
type LaunchConfig struct {
	Bin     string // the cocoon binary
	Dir     string // datadirs, logs and the state file go here
	Nodes   int    // all nodes; the last Workers of them are workers
	Workers int
	Model   string // GGUF file the workers serve
	LibDir  string // llama.cpp libraries ("" : $COCOON_LLAMA_LIB)
	// Price is what every worker charges; zero: LaunchPrice.
	Price     node.ModelPrice
	Progress  io.Writer     // one line per step; nil: discarded
	ReadyWait time.Duration // how long to wait for every client to see every worker; 0: 60 s
}

// LaunchPrice is the default price of a launched testnet's workers, nanoTON per
// 1M prompt and completion tokens.
var LaunchPrice = node.ModelPrice{Prompt: 1_000_000, Completion: 3_000_000}

// LaunchDeposit is what each client deposits in its channel to each worker.
const LaunchDeposit = 1_000_000_000

// StateFile in a launched testnet's Dir lists its processes, for status and down.
const StateFile = "testnet.json"

// Proc is one process of a launched testnet.
type Proc struct {
	Name    string `json:"name"`
	Role    string `json:"role"` // ledger, client or worker
	PID     int    `json:"pid"`
	Datadir string `json:"datadir,omitempty"`
	PeerID  string `json:"peer_id,omitempty"`
	URL     string `json:"url"` // gateway (nodes) or ledger URL
	Token   string `json:"token,omitempty"`
	Log     string `json:"log"`

	done chan struct{} // closed when this launcher has reaped the process
	bin  string        // what start ran, for Restart
	args []string
}

// Cluster is a running local testnet: a dev ledger service (simulated chain, not
// TON) and node processes. Stop ends them all.
type Cluster struct {
	Dir    string  `json:"dir"`
	Ledger *Proc   `json:"ledger"`
	Nodes  []*Proc `json:"nodes"`
}

// Launch starts the testnet: the ledger, then the nodes (workers serve cfg.Model
// with the simulated TEE), funds the clients, opens a channel from each client to
// each worker, and returns once every client's gateway lists every worker. On
// error it stops what it started.
func Launch(ctx context.Context, cfg LaunchConfig) (c *Cluster, err error) {
	if cfg.Workers < 1 || cfg.Nodes <= cfg.Workers {
		return nil, fmt.Errorf("testnet: need at least one worker and one client (nodes %d, workers %d)", cfg.Nodes, cfg.Workers)
	}
	if _, err := os.Stat(cfg.Model); err != nil {
		return nil, fmt.Errorf("testnet: the workers' model: %w", err)
	}
	if cfg.Price == (node.ModelPrice{}) {
		cfg.Price = LaunchPrice
	}
	if cfg.ReadyWait == 0 {
		cfg.ReadyWait = time.Minute
	}
	say := func(format string, args ...any) {
		if cfg.Progress != nil {
			fmt.Fprintf(cfg.Progress, format+"\n", args...)
		}
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	// cl, not the named result: every error return below sets c to nil before
	// this deferred clean-up runs.
	cl := &Cluster{Dir: cfg.Dir}
	c = cl
	defer func() {
		if err != nil {
			cl.Stop()
		}
	}()
	model, err := filepath.Abs(cfg.Model)
	if err != nil {
		return nil, err
	}
	run := func(args ...string) (string, error) {
		out, err := exec.CommandContext(ctx, cfg.Bin, args...).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("cocoon %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
		}
		return string(out), nil
	}

	say("starting the dev ledger (simulated chain, not TON)")
	c.Ledger = &Proc{Name: "ledger", Role: "ledger", Log: filepath.Join(cfg.Dir, "ledger.log")}
	if err := c.start(c.Ledger, cfg.Bin, "ledger", "serve", "--listen", "127.0.0.1:0", "--state", filepath.Join(cfg.Dir, "ledger.json")); err != nil {
		return nil, err
	}
	if c.Ledger.URL, err = waitLogURL(ctx, c.Ledger.Log, 10*time.Second); err != nil {
		return nil, err
	}

	var boot string
	for i := range cfg.Nodes {
		p := &Proc{Name: fmt.Sprintf("node%d", i), Role: "client", Datadir: filepath.Join(cfg.Dir, fmt.Sprintf("node%d", i))}
		if i >= cfg.Nodes-cfg.Workers {
			p.Role = "worker"
		}
		p.Log = p.Datadir + ".log"
		c.Nodes = append(c.Nodes, p)
		if _, err := os.Stat(filepath.Join(p.Datadir, node.IdentityFile)); err != nil {
			if _, err := run("init", "--datadir", p.Datadir); err != nil {
				return nil, err
			}
		}
		ncfg, err := node.Load(p.Datadir)
		if err != nil {
			return nil, err
		}
		ncfg.P2P.Listen = []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"}
		// The default DHT mode (auto), as a user runs it: the LAN DHT of the
		// dual DHT serves loopback addresses. mDNS and port mapping stay off
		// (they send traffic to the LAN).
		ncfg.P2P.MDNS, ncfg.P2P.NATPortMap = false, false
		ncfg.API.Listen = "127.0.0.1:0"
		ncfg.Settle.Chain, ncfg.Settle.DevLedgerURL = node.ChainDevLedger, c.Ledger.URL
		ncfg.Enclave.Policy.AllowSim = true
		ncfg.Enclave.Policy.AllowedKinds = []tee.Kind{tee.Sim} // what every node buys from
		// Every node follows the test model's ads from the start (market.models),
		// so that its /v1/models and status page show the workers before any
		// request.
		ncfg.Market.Models = []string{strings.TrimSuffix(filepath.Base(model), ".gguf")}
		if p.Role == "worker" {
			ncfg.Enclave.Attester = tee.Sim
			ncfg.Runtime.Models = nil
			ncfg.Runtime.LibDir = cfg.LibDir
			// The workers share this machine: llama.cpp's threads spin while
			// they wait, so more threads than cores between them slows every
			// worker down many times over.
			ncfg.Runtime.Threads = max(1, min(4, goruntime.NumCPU()/cfg.Workers))
			ncfg.Market.Prices = []node.ModelPrice{{Model: strings.TrimSuffix(filepath.Base(model), ".gguf"), Prompt: cfg.Price.Prompt, Completion: cfg.Price.Completion}}
		}
		if err := node.Save(p.Datadir, ncfg); err != nil {
			return nil, err
		}
	}
	// Channels are opened before the nodes start: a running node holds its store.
	for _, cl := range c.Nodes {
		if cl.Role != "client" {
			continue
		}
		if _, err := run("wallet", "faucet", "--datadir", cl.Datadir, "--ledger", c.Ledger.URL); err != nil {
			return nil, err
		}
		for _, w := range c.Nodes {
			if w.Role != "worker" {
				continue
			}
			out, err := run("wallet", "--datadir", w.Datadir, "--ledger", c.Ledger.URL)
			if err != nil {
				return nil, err
			}
			if _, err := run("channel", "open", "--datadir", cl.Datadir, "--ledger", c.Ledger.URL,
				"--deposit", fmt.Sprint(LaunchDeposit), "--worker-addr", field(out, "address"), "--worker-key", field(out, "channel key")); err != nil {
				return nil, err
			}
			say("channel %s → %s opened with %d nanoTON", cl.Name, w.Name, LaunchDeposit)
		}
	}
	for i, p := range c.Nodes {
		args := []string{"node", "--datadir", p.Datadir}
		if p.Role == "worker" {
			args = append(args, "--serve", model)
		}
		if i > 0 {
			args = append(args, "--bootstrap", boot)
		}
		os.Remove(filepath.Join(p.Datadir, node.APIAddrFile))
		if err := c.start(p, cfg.Bin, args...); err != nil {
			return nil, err
		}
		if err := p.waitAPI(ctx, 20*time.Second); err != nil {
			return nil, err
		}
		if i == 0 {
			st, err := p.API().Status(ctx)
			if err != nil {
				return nil, err
			}
			for _, a := range st.Addrs {
				if strings.Contains(a, "/tcp/") {
					boot = a
				}
			}
		}
		say("%s (%s) up: %s", p.Name, p.Role, p.URL)
	}
	say("waiting until every client sees every worker's ad")
	deadline := time.Now().Add(cfg.ReadyWait)
	for _, p := range c.Nodes {
		if p.Role != "client" {
			continue
		}
		for {
			if ms, err := p.API().Models(ctx); err == nil && len(ms) > 0 && local.Workers(ms[0]) == cfg.Workers {
				break
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("testnet: %s did not see all %d workers within %s (logs in %s)", p.Name, cfg.Workers, cfg.ReadyWait, cfg.Dir)
			}
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	if err := c.save(); err != nil {
		return nil, err
	}
	return c, nil
}

func field(out, name string) string {
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, name+": "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// start runs one process with its output in p.Log, in its own process group so
// that a Ctrl-C meant for the launcher reaches it only through Stop.
func (c *Cluster) start(p *Proc, bin string, args ...string) error {
	return c.startLog(p, os.O_TRUNC, bin, args...)
}

// startLog is start with the log opened with flag (os.O_TRUNC or os.O_APPEND).
func (c *Cluster) startLog(p *Proc, flag int, bin string, args ...string) error {
	f, err := os.OpenFile(p.Log, os.O_CREATE|os.O_WRONLY|flag, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	p.done = make(chan struct{})
	p.bin, p.args = bin, args
	go func() { cmd.Wait(); f.Close(); close(p.done) }()
	p.PID = cmd.Process.Pid
	return nil
}

// waitLogURL waits for the first http://127.0.0.1: URL the ledger prints.
func waitLogURL(ctx context.Context, log string, d time.Duration) (string, error) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if f, err := os.Open(log); err == nil {
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				for _, w := range strings.Fields(sc.Text()) {
					if strings.HasPrefix(w, "http://127.0.0.1:") {
						f.Close()
						return w, nil
					}
				}
			}
			f.Close()
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return "", fmt.Errorf("testnet: the ledger printed no URL within %s (see %s)", d, log)
}

func (p *Proc) waitAPI(ctx context.Context, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		if _, err := os.Stat(filepath.Join(p.Datadir, node.APIAddrFile)); err == nil {
			api, err := local.FromDatadir(p.Datadir)
			if err != nil {
				return err
			}
			p.URL, p.Token = api.BaseURL, api.Token
			if st, err := api.Status(ctx); err == nil {
				p.PeerID = st.PeerID
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("testnet: %s's API not up within %s (see %s)", p.Name, d, p.Log)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// API is a client of p's local API (a node's; not the ledger's).
func (p *Proc) API() *local.Client { return local.New(p.URL, p.Token) }

func (c *Cluster) save() error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(c.Dir, StateFile), b, 0o600)
}

// all lists the processes, nodes first, so that the ledger stops last.
func (c *Cluster) all() []*Proc {
	ps := append([]*Proc{}, c.Nodes...)
	if c.Ledger != nil {
		ps = append(ps, c.Ledger)
	}
	return ps
}

// Stop sends SIGTERM to every process, waits up to 10 s, then SIGKILLs what is
// left, and removes the state file.
func (c *Cluster) Stop() error {
	return stopPIDs(c.Dir, c.all())
}

func alive(pid int) bool { return pid > 0 && syscall.Kill(pid, 0) == nil }

func stopPIDs(dir string, ps []*Proc) error {
	for _, p := range ps {
		if alive(p.PID) {
			syscall.Kill(p.PID, syscall.SIGTERM)
			// A process paused with SIGSTOP acts on the SIGTERM once continued.
			syscall.Kill(p.PID, syscall.SIGCONT)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	var left []string
	for _, p := range ps {
		for alive(p.PID) && time.Now().Before(deadline) && !reaped(p) {
			time.Sleep(20 * time.Millisecond)
		}
		if alive(p.PID) && !reaped(p) {
			syscall.Kill(p.PID, syscall.SIGKILL)
			left = append(left, p.Name)
		}
	}
	os.Remove(filepath.Join(dir, StateFile))
	if len(left) > 0 {
		return fmt.Errorf("testnet: killed %s after SIGTERM left them running", strings.Join(left, ", "))
	}
	return nil
}

// reaped reports whether a child of this process has exited (a zombie still
// answers kill(pid, 0)).
func reaped(p *Proc) bool {
	if p.done == nil {
		return false
	}
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// LoadCluster reads the state file of a testnet launched in dir.
func LoadCluster(dir string) (*Cluster, error) {
	b, err := os.ReadFile(filepath.Join(dir, StateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no testnet running in %s (start one with `cocoon testnet up --dir %s`)", dir, dir)
	}
	if err != nil {
		return nil, err
	}
	var c Cluster
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, StateFile), err)
	}
	return &c, nil
}

// Running reports whether any process of the testnet is still running.
func (c *Cluster) Running() bool {
	for _, p := range c.all() {
		if p.Alive() && !reaped(p) {
			return true
		}
	}
	return false
}

// Alive reports whether p's process is running.
func (p *Proc) Alive() bool { return alive(p.PID) }

// Signal sends sig to p's process: SIGSTOP and SIGCONT pause and resume it (a
// hang, not a crash); for SIGKILL use Kill, which also waits for the exit.
func (c *Cluster) Signal(p *Proc, sig syscall.Signal) error {
	if !alive(p.PID) || reaped(p) {
		return fmt.Errorf("testnet: signal %s: %s is not running", sig, p.Name)
	}
	if err := syscall.Kill(p.PID, sig); err != nil {
		return fmt.Errorf("testnet: signal %s to %s: %w", sig, p.Name, err)
	}
	return nil
}

// Kill ends p's process with SIGKILL, as a crash or a power cut would, and
// waits until it has exited. Its datadir (identity, channel store, config)
// stays for Restart.
func (c *Cluster) Kill(p *Proc) error {
	if err := c.Signal(p, syscall.SIGKILL); err != nil {
		return err
	}
	if p.done == nil { // not this launcher's child: poll
		for alive(p.PID) {
			time.Sleep(10 * time.Millisecond)
		}
		return nil
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("testnet: %s (pid %d) still running 10 s after SIGKILL", p.Name, p.PID)
	}
}

// Restart starts a process of this launcher that has exited (after Kill) again
// in place: the same binary, arguments and datadir, so that a node keeps its
// peer ID, wallet and channel store. Its log is appended to, so that what the
// earlier run printed (a panic) stays. A node bootstraps from another node
// that is running (the first node's address changed if it was restarted);
// the ledger listens on the address it had, which the nodes' configs name.
// Restart returns once a node's API answers (p.URL, p.Token and p.PeerID
// updated) or the ledger printed its URL. It must not run concurrently with
// other uses of p.
func (c *Cluster) Restart(ctx context.Context, p *Proc) error {
	if p.args == nil {
		return fmt.Errorf("testnet: restart %s: not started by this launcher", p.Name)
	}
	if !reaped(p) {
		return fmt.Errorf("testnet: restart %s: still running (pid %d)", p.Name, p.PID)
	}
	args := append([]string{}, p.args...)
	if p == c.Ledger {
		hostport := strings.TrimSuffix(strings.TrimPrefix(p.URL, "http://"), "/")
		for i := range args {
			if args[i] == "--listen" && i+1 < len(args) {
				args[i+1] = hostport
			}
		}
		if err := c.startLog(p, os.O_APPEND, p.bin, args...); err != nil {
			return err
		}
		return waitLedger(ctx, p.URL, 10*time.Second)
	}
	for i := range args {
		if args[i] == "--bootstrap" && i+1 < len(args) {
			if boot := c.bootstrap(ctx, p); boot != "" {
				args[i+1] = boot
			}
		}
	}
	os.Remove(filepath.Join(p.Datadir, node.APIAddrFile))
	if err := c.startLog(p, os.O_APPEND, p.bin, args...); err != nil {
		return err
	}
	return p.waitAPI(ctx, 30*time.Second)
}

// bootstrap is the TCP address of a running node other than p, "" if none
// answers.
func (c *Cluster) bootstrap(ctx context.Context, p *Proc) string {
	for _, q := range c.Nodes {
		if q == p || !q.Alive() || reaped(q) {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := q.API().Status(sctx)
		cancel()
		if err != nil {
			continue
		}
		for _, a := range st.Addrs {
			if strings.Contains(a, "/tcp/") {
				return a
			}
		}
	}
	return ""
}

// waitLedger waits until the ledger at url accepts connections again.
func waitLedger(ctx context.Context, url string, d time.Duration) error {
	hostport := strings.TrimSuffix(strings.TrimPrefix(url, "http://"), "/")
	deadline := time.Now().Add(d)
	for {
		var dl net.Dialer
		if conn, err := dl.DialContext(ctx, "tcp", hostport); err == nil {
			conn.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("testnet: the ledger does not listen on %s again within %s", hostport, d)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
