package netlab

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/client/local"
	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/node"
)

// NAT kinds of a home router.
const (
	// EIM: nftables masquerade, which keeps the source port when it is free:
	// one mapping per local port whatever the destination (endpoint-
	// independent mapping), the kind hole punching gets through.
	EIM = "masquerade"
	// Symmetric: masquerade fully-random, a random port per destination
	// (endpoint-dependent mapping).
	Symmetric = "masquerade fully-random"
)

// Config describes a lab.
type Config struct {
	Bin    string // the cocoon binary
	Model  string // GGUF the worker serves
	LibDir string // llama.cpp libraries
	NATA   string // home A's router (the client's): EIM or Symmetric
	NATB   string // home B's router (the worker's)
}

// Proc is one cocoon process of the lab.
type Proc struct {
	Name, NS, IP, Datadir, Log string
	PeerID                     string
	API                        *local.Client
	cmd                        *exec.Cmd
	done                       chan struct{}
}

// Lab is a running lab: namespaces, NAT routers, WAN links and processes.
type Lab struct {
	t              testing.TB
	cfg            Config
	dir, pre       string
	ns             []string
	WANA, WANB     *Link
	Ledger         string // the ledger's URL as the nodes reach it
	Boot, Relay    *Proc
	Public         []*Proc // every public node: Boot, Relay and two plain peers
	Client, Worker *Proc
	procs          []*Proc
}

// New builds the lab and starts its processes; t's cleanup removes all of
// it, whatever happened. Without root it skips t, loudly.
func New(t testing.TB, cfg Config) *Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("NETLAB SKIPPED: network namespaces and nftables need root (CI runs this as root); run `sudo go test ./testnet/netlab`")
	}
	l := &Lab{t: t, cfg: cfg, dir: t.TempDir(), pre: fmt.Sprintf("nl%d", os.Getpid()%100000)}
	t.Cleanup(l.close)
	l.must("sh", filepath.Join(repoRoot(), "scripts", "netlab-deps.sh"))
	l.topology()
	l.start()
	return l
}

func repoRoot() string {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "."
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

func (l *Lab) must(name string, args ...string) string {
	l.t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out)
}

func (l *Lab) in(ns string, args ...string) string {
	l.t.Helper()
	return l.must("ip", append([]string{"netns", "exec", ns}, args...)...)
}

func (l *Lab) name(s string) string { return l.pre + s }

func (l *Lab) topology() {
	pub, ra, rb, ha, hb := l.name("pub"), l.name("ra"), l.name("rb"), l.name("ha"), l.name("hb")
	for _, ns := range []string{pub, ra, rb, ha, hb} {
		l.must("ip", "netns", "add", ns)
		l.ns = append(l.ns, ns)
		l.in(ns, "ip", "link", "set", "lo", "up")
	}
	l.in(pub, "ip", "link", "add", "br0", "type", "bridge")
	l.in(pub, "ip", "link", "set", "br0", "up")
	for _, ip := range []string{"9", "10", "11", "12", "13"} {
		l.in(pub, "ip", "addr", "add", "11.0.0."+ip+"/24", "dev", "br0")
	}
	var err error
	for _, h := range []struct {
		router, home, wanIP, lan, nat string
		link                          **Link
	}{{ra, ha, "11.0.0.2", "192.168.1", l.cfg.NATA, &l.WANA}, {rb, hb, "11.0.0.3", "192.168.2", l.cfg.NATB, &l.WANB}} {
		// The WAN: a userspace link between a TAP in the router and one on pub's bridge.
		rt, pt := h.router+"w", h.router+"p"
		if *h.link, err = newLink(rt, pt); err != nil {
			l.t.Fatalf("netlab: WAN link: %v", err)
		}
		l.must("ip", "link", "set", rt, "netns", h.router)
		l.must("ip", "link", "set", pt, "netns", pub)
		l.in(pub, "ip", "link", "set", pt, "master", "br0")
		l.in(pub, "ip", "link", "set", pt, "up")
		l.in(h.router, "ip", "addr", "add", h.wanIP+"/24", "dev", rt)
		l.in(h.router, "ip", "link", "set", rt, "up")
		// The LAN: a veth pair.
		lr, lh := h.router+"l", h.home+"e"
		l.must("ip", "link", "add", lr, "netns", h.router, "type", "veth", "peer", "name", lh, "netns", h.home)
		l.in(h.router, "ip", "addr", "add", h.lan+".1/24", "dev", lr)
		l.in(h.router, "ip", "link", "set", lr, "up")
		l.in(h.home, "ip", "addr", "add", h.lan+".2/24", "dev", lh)
		l.in(h.home, "ip", "link", "set", lh, "up")
		l.in(h.home, "ip", "route", "add", "default", "via", h.lan+".1")
		l.in(h.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		rules := fmt.Sprintf(`table ip nat {
	chain post { type nat hook postrouting priority srcnat; oifname "%s" %s; }
}
`, rt, h.nat)
		f := filepath.Join(l.dir, h.router+".nft")
		os.WriteFile(f, []byte(rules), 0o644)
		l.in(h.router, "nft", "-f", f)
	}
}

var urlRE = regexp.MustCompile(`http://127\.0\.0\.1:[0-9]+`)

func (l *Lab) start() {
	t, cfg := l.t, l.cfg
	pub := l.name("pub")
	// The dev ledger serves loopback only: a forwarder exposes it on 11.0.0.9.
	ledgerLog := filepath.Join(l.dir, "ledger.log")
	lp := &Proc{Name: "ledger", NS: pub, Log: ledgerLog}
	l.spawn(lp, "ledger", "serve", "--listen", "127.0.0.1:0", "--state", filepath.Join(l.dir, "ledger.json"))
	var loop string
	waitFor(t, 10*time.Second, "the ledger's URL", func() bool {
		b, _ := os.ReadFile(ledgerLog)
		loop = urlRE.FindString(string(b))
		return loop != ""
	})
	ln, err := forward(pub, "11.0.0.9:8590", pub, strings.TrimPrefix(loop, "http://"))
	if err != nil {
		t.Fatalf("netlab: ledger forwarder: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	l.Ledger = "http://11.0.0.9:8590"

	modelID := strings.TrimSuffix(filepath.Base(cfg.Model), ".gguf")
	mk := func(name, ns, ip string, relay bool, role string) *Proc {
		p := &Proc{Name: name, NS: ns, IP: ip, Datadir: filepath.Join(l.dir, name), Log: filepath.Join(l.dir, name+".log")}
		l.must(cfg.Bin, "init", "--datadir", p.Datadir)
		nc, err := node.Load(p.Datadir)
		if err != nil {
			t.Fatal(err)
		}
		nc.P2P.Listen = []string{"/ip4/" + ip + "/tcp/4001", "/ip4/" + ip + "/udp/4001/quic-v1"}
		nc.P2P.MDNS, nc.P2P.NATPortMap, nc.P2P.RelayService = false, false, relay
		nc.API.Listen = "127.0.0.1:0"
		nc.Settle.Chain, nc.Settle.DevLedgerURL = node.ChainDevLedger, l.Ledger
		nc.Enclave.Policy.AllowSim = true
		nc.Enclave.Policy.AllowedKinds = []tee.Kind{tee.Sim}
		nc.Market.Models = []string{modelID}
		if role == "worker" {
			nc.Enclave.Attester = tee.Sim
			nc.Runtime.Models = nil
			nc.Runtime.LibDir = cfg.LibDir
			nc.Runtime.Threads = 1
			nc.Market.Prices = []node.ModelPrice{{Model: modelID, Prompt: 1_000_000, Completion: 3_000_000}}
		}
		if err := node.Save(p.Datadir, nc); err != nil {
			t.Fatal(err)
		}
		return p
	}
	l.Boot = mk("bootstrap", pub, "11.0.0.10", false, "")
	l.Relay = mk("relay", pub, "11.0.0.11", true, "")
	l.Public = []*Proc{l.Boot, l.Relay, mk("peer1", pub, "11.0.0.12", false, ""), mk("peer2", pub, "11.0.0.13", false, "")}
	l.Client = mk("client", l.name("ha"), "0.0.0.0", false, "client")
	l.Worker = mk("worker", l.name("hb"), "0.0.0.0", false, "worker")

	// Fund the client and open its channel to the worker (before the nodes
	// start: a running node holds its store).
	l.in(pub, cfg.Bin, "wallet", "faucet", "--datadir", l.Client.Datadir, "--ledger", l.Ledger)
	out := l.in(pub, cfg.Bin, "wallet", "--datadir", l.Worker.Datadir, "--ledger", l.Ledger)
	l.in(pub, cfg.Bin, "channel", "open", "--datadir", l.Client.Datadir, "--ledger", l.Ledger,
		"--deposit", "1000000000", "--worker-addr", field(out, "address"), "--worker-key", field(out, "channel key"))

	var boot string
	for i, p := range append(append([]*Proc{}, l.Public...), l.Client, l.Worker) {
		args := []string{"node", "--datadir", p.Datadir}
		if p == l.Worker {
			args = append(args, "--serve", cfg.Model)
		}
		if i > 0 {
			args = append(args, "--bootstrap", boot)
		}
		l.spawn(p, args...)
		l.waitAPI(p)
		if i == 0 {
			boot = "/ip4/11.0.0.10/tcp/4001/p2p/" + p.PeerID
		}
	}
}

func field(out, name string) string {
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, name+": "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func (l *Lab) spawn(p *Proc, args ...string) {
	l.t.Helper()
	f, err := os.Create(p.Log)
	if err != nil {
		l.t.Fatal(err)
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", p.NS, l.cfg.Bin}, args...)...)
	cmd.Env = append(os.Environ(), "COCOON_LLAMA_LIB="+l.cfg.LibDir)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		l.t.Fatalf("start %s: %v", p.Name, err)
	}
	p.cmd, p.done = cmd, make(chan struct{})
	go func() { cmd.Wait(); f.Close(); close(p.done) }()
	l.procs = append(l.procs, p)
}

func (l *Lab) waitAPI(p *Proc) {
	l.t.Helper()
	waitFor(l.t, 30*time.Second, p.Name+"'s API", func() bool {
		c, err := local.FromDatadir(p.Datadir)
		if err != nil {
			return false
		}
		c.HTTP = &http.Client{Transport: &http.Transport{DialContext: dialer(p.NS)}}
		st, err := c.Status(context.Background())
		if err != nil {
			return false
		}
		p.API, p.PeerID = c, st.PeerID
		return true
	})
}

// Stop ends p (SIGTERM, then SIGKILL) and waits for it.
func (p *Proc) Stop() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// Logs is the tail of every process's log, for a failure message.
func (l *Lab) Logs() string {
	var b strings.Builder
	for _, p := range l.procs {
		out, _ := os.ReadFile(p.Log)
		if len(out) > 3000 {
			out = out[len(out)-3000:]
		}
		fmt.Fprintf(&b, "--- %s (%s)\n%s\n", p.Name, p.Log, out)
	}
	return b.String()
}

func (l *Lab) close() {
	for _, p := range l.procs {
		p.Stop()
	}
	for _, ns := range l.ns {
		exec.Command("ip", "netns", "del", ns).Run()
	}
	for _, k := range []*Link{l.WANA, l.WANB} {
		if k != nil {
			k.Close()
		}
	}
}

// StopAll ends every process (nodes hold their channel stores until they stop).
func (l *Lab) StopAll() {
	for _, p := range l.procs {
		p.Stop()
	}
}

func waitFor(t testing.TB, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("netlab: no %s within %s", what, d)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
