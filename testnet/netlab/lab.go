package netlab

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/client/local"
	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/node"
	"github.com/cocoon-network/cocoon/runtime"
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
	Model  string // GGUF every worker serves
	LibDir string // llama.cpp libraries
	// ClientNAT is the router of the client's home: EIM or Symmetric.
	ClientNAT string
	// WorkerNATs has one entry per worker, each in a home of its own behind
	// a router of that kind. Worker i serves Model under its own id,
	// ModelID(Model, WorkerNATs[i]), so that a request names its worker.
	WorkerNATs []string
}

// ModelID is the id under which the worker behind a NAT of kind nat serves
// model: the file's base name and the kind.
func ModelID(model, nat string) string {
	kind := "eim"
	if nat == Symmetric {
		kind = "symmetric"
	}
	return strings.TrimSuffix(filepath.Base(model), ".gguf") + "-" + kind
}

// Proc is one cocoon process of the lab.
type Proc struct {
	Name, NS, IP, Datadir, Log string
	NAT                        string // the home router's kind; "" on the public segment
	Model                      string // the model id a worker serves
	PeerID                     string
	API                        *local.Client
	cmd                        *exec.Cmd
	done                       chan struct{}
}

// Home is a home segment: a NAT router between its LAN and the public
// segment, reached over WAN (a userspace link that Shape delays and drops on).
type Home struct {
	NAT          string // EIM or Symmetric
	Router, NS   string // namespaces
	WANIP, LANIP string // the router's public address, the home host's
	WAN          *Link
}

// Lab is a running lab: namespaces, NAT routers, WAN links and processes.
type Lab struct {
	t           testing.TB
	cfg         Config
	dir, pre    string
	ns          []string
	Homes       []*Home // the client's home first, then one per worker
	Ledger      string  // the ledger's URL as the nodes reach it
	Boot, Relay *Proc
	Public      []*Proc // every public node: Boot, Relay and two plain peers
	Client      *Proc
	Workers     []*Proc // one per Config.WorkerNATs
	procs       []*Proc
}

// New builds the lab and starts its processes; t's cleanup removes all of
// it, whatever happened. Without root, ip or nft it skips t, loudly.
func New(t testing.TB, cfg Config) *Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("NETLAB SKIPPED: network namespaces and nftables need root (CI runs this as root); run `sudo go test ./testnet/netlab`")
	}
	l := &Lab{t: t, cfg: cfg, dir: t.TempDir(), pre: fmt.Sprintf("nl%d", os.Getpid()%100000)}
	if out, err := exec.Command("sh", filepath.Join(repoRoot(), "scripts", "netlab-deps.sh")).CombinedOutput(); err != nil {
		t.Skipf("NETLAB SKIPPED: ip (iproute2) and nft (nftables) are missing and could not be installed: %v: %s", err, bytes.TrimSpace(out))
	}
	t.Cleanup(l.close)
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

func (l *Lab) addNS(ns string) {
	l.t.Helper()
	l.must("ip", "netns", "add", ns)
	l.ns = append(l.ns, ns)
	l.in(ns, "ip", "link", "set", "lo", "up")
}

// publicIPs are the public nodes' addresses, each in a namespace of its
// own: a node's outgoing connections then leave from its own address (one
// namespace with all of them on its bridge sent them from the bridge's
// first address, and AutoNAT dialled back the wrong node).
var publicIPs = []string{"11.0.0.10", "11.0.0.11", "11.0.0.12", "11.0.0.13"}

func (l *Lab) topology() {
	pub := l.name("pub")
	l.addNS(pub)
	l.in(pub, "ip", "link", "add", "br0", "type", "bridge")
	l.in(pub, "ip", "link", "set", "br0", "up")
	l.in(pub, "ip", "addr", "add", "11.0.0.9/24", "dev", "br0") // the ledger's forwarder
	for _, ip := range publicIPs {
		last := ip[strings.LastIndexByte(ip, '.')+1:]
		ns, br := l.name("n"+last), l.name("p"+last)
		l.addNS(ns)
		l.must("ip", "link", "add", br, "netns", pub, "type", "veth", "peer", "name", "eth0", "netns", ns)
		l.in(pub, "ip", "link", "set", br, "master", "br0")
		l.in(pub, "ip", "link", "set", br, "up")
		l.in(ns, "ip", "addr", "add", ip+"/24", "dev", "eth0")
		l.in(ns, "ip", "link", "set", "eth0", "up")
	}
	nats := append([]string{l.cfg.ClientNAT}, l.cfg.WorkerNATs...)
	for i, nat := range nats {
		x := string(rune('a' + i))
		h := &Home{NAT: nat, Router: l.name("r" + x), NS: l.name("h" + x),
			WANIP: fmt.Sprintf("11.0.0.%d", 2+i), LANIP: fmt.Sprintf("192.168.%d.2", 1+i)}
		lan := fmt.Sprintf("192.168.%d", 1+i)
		l.Homes = append(l.Homes, h)
		l.addNS(h.Router)
		l.addNS(h.NS)
		// The WAN: a userspace link between a TAP in the router and one on pub's bridge.
		rt, pt := h.Router+"w", h.Router+"p"
		var err error
		if h.WAN, err = newLink(rt, pt); err != nil {
			l.t.Fatalf("netlab: WAN link: %v", err)
		}
		l.must("ip", "link", "set", rt, "netns", h.Router)
		l.must("ip", "link", "set", pt, "netns", pub)
		l.in(pub, "ip", "link", "set", pt, "master", "br0")
		l.in(pub, "ip", "link", "set", pt, "up")
		l.in(h.Router, "ip", "addr", "add", h.WANIP+"/24", "dev", rt)
		l.in(h.Router, "ip", "link", "set", rt, "up")
		// The LAN: a veth pair.
		lr, lh := h.Router+"l", h.NS+"e"
		l.must("ip", "link", "add", lr, "netns", h.Router, "type", "veth", "peer", "name", lh, "netns", h.NS)
		l.in(h.Router, "ip", "addr", "add", lan+".1/24", "dev", lr)
		l.in(h.Router, "ip", "link", "set", lr, "up")
		l.in(h.NS, "ip", "addr", "add", h.LANIP+"/24", "dev", lh)
		l.in(h.NS, "ip", "link", "set", lh, "up")
		l.in(h.NS, "ip", "route", "add", "default", "via", lan+".1")
		l.in(h.Router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		rules := fmt.Sprintf(`table ip nat {
	chain post { type nat hook postrouting priority srcnat; oifname "%s" %s; }
}
`, rt, nat)
		f := filepath.Join(l.dir, h.Router+".nft")
		os.WriteFile(f, []byte(rules), 0o644)
		l.in(h.Router, "nft", "-f", f)
	}
}

// Shape sets the delay and loss of every home's WAN link (Link.Shape).
func (l *Lab) Shape(delay time.Duration, loss float64) {
	for _, h := range l.Homes {
		h.WAN.Shape(delay, loss)
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

	var models []string
	for _, nat := range cfg.WorkerNATs {
		models = append(models, ModelID(cfg.Model, nat))
	}
	mk := func(name, ns, ip string, relay bool, model string) *Proc {
		p := &Proc{Name: name, NS: ns, IP: ip, Model: model, Datadir: filepath.Join(l.dir, name), Log: filepath.Join(l.dir, name+".log")}
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
		nc.Market.Models = models
		if model != "" {
			nc.Enclave.Attester = tee.Sim
			nc.Runtime.Models = []runtime.ModelConfig{{Path: cfg.Model, ID: model}}
			nc.Runtime.LibDir = cfg.LibDir
			nc.Runtime.Threads = 1
			nc.Market.Prices = []node.ModelPrice{{Model: model, Prompt: 1_000_000, Completion: 3_000_000}}
		}
		if err := node.Save(p.Datadir, nc); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for i, ip := range publicIPs {
		name := []string{"bootstrap", "relay", "peer1", "peer2"}[i]
		p := mk(name, l.name("n"+ip[strings.LastIndexByte(ip, '.')+1:]), ip, name == "relay", "")
		l.Public = append(l.Public, p)
	}
	l.Boot, l.Relay = l.Public[0], l.Public[1]
	l.Client = mk("client", l.Homes[0].NS, "0.0.0.0", false, "")
	l.Client.NAT = l.Homes[0].NAT
	for i, nat := range cfg.WorkerNATs {
		w := mk(fmt.Sprintf("worker%d", i+1), l.Homes[1+i].NS, "0.0.0.0", false, models[i])
		w.NAT = nat
		l.Workers = append(l.Workers, w)
	}

	// Fund the client and open its channel to each worker (before the nodes
	// start: a running node holds its store).
	l.in(pub, cfg.Bin, "wallet", "faucet", "--datadir", l.Client.Datadir, "--ledger", l.Ledger)
	for _, w := range l.Workers {
		out := l.in(pub, cfg.Bin, "wallet", "--datadir", w.Datadir, "--ledger", l.Ledger)
		l.in(pub, cfg.Bin, "channel", "open", "--datadir", l.Client.Datadir, "--ledger", l.Ledger,
			"--deposit", "1000000000", "--worker-addr", field(out, "address"), "--worker-key", field(out, "channel key"))
	}

	// The public nodes bootstrap from the first; the home nodes from all
	// four, as a real network's nodes know several bootstrap peers. A home
	// node that knows one only meets the others through the WAN DHT, whose
	// table it filled at start, before the public nodes learnt they were
	// public and turned DHT servers: it stayed connected to the first alone,
	// so it had no relay to reserve on, and go-libp2p needs four observers
	// to trust its NAT's address (hole punching needs that address).
	var boot []string
	for _, p := range append(append(append([]*Proc{}, l.Public...), l.Client), l.Workers...) {
		if p == l.Client {
			l.waitPublic()
		}
		args := []string{"node", "--datadir", p.Datadir}
		for j, b := range boot {
			if j == 0 || p.NAT != "" {
				args = append(args, "--bootstrap", b)
			}
		}
		l.spawn(p, args...)
		l.waitAPI(p)
		if p.NAT == "" {
			boot = append(boot, "/ip4/"+p.IP+"/tcp/4001/p2p/"+p.PeerID)
		}
	}
}

// waitPublic waits until every public node has learnt it is public, as a
// real network's public nodes have long before a volunteer joins: until
// then they are no WAN DHT servers, and a home node that bootstraps then
// starts with an empty WAN routing table, so its FindPeer of a worker
// behind a NAT (the way to its relay address) finds nothing.
func (l *Lab) waitPublic() {
	l.t.Helper()
	for _, p := range l.Public {
		waitFor(l.t, time.Minute, p.Name+"'s public verdict", func() bool {
			st, err := p.API.Status(context.Background())
			return err == nil && st.Reachability.Verdict == "public"
		})
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
	for _, h := range l.Homes {
		if h.WAN != nil {
			h.WAN.Close()
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

// HandshakeRTT times n TCP handshakes from namespace ns to addr (a listening
// port) and returns them sorted: a handshake is one round trip, so the
// median is the path's round-trip time as the links make it (a SYN lost to
// Loss shows as a second-long outlier, the kernel's retransmission time).
func (l *Lab) HandshakeRTT(ns, addr string, n int) ([]time.Duration, error) {
	var rtts []time.Duration
	err := inNS(ns, func() error {
		for range n {
			start := time.Now()
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				return fmt.Errorf("dial %s from %s: %w", addr, ns, err)
			}
			rtts = append(rtts, time.Since(start))
			c.Close()
		}
		return nil
	})
	slices.Sort(rtts)
	return rtts, err
}
