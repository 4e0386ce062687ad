package inproc

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/cocoon-network/cocoon/client/local"
	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/internal/testmodel"
	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/node"
	"github.com/cocoon-network/cocoon/p2p"
	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/settle"
	"github.com/cocoon-network/cocoon/settle/devledger"
)

// Transport says how the nodes of a testnet talk.
type Transport int

const (
	// Mock runs every node on libp2p's in-memory mocknet: fast, hundreds of nodes,
	// optional link latency, partitions by unlinking.
	Mock Transport = iota
	// Loopback runs real libp2p hosts (TCP and QUIC) on 127.0.0.1.
	Loopback
)

type options struct {
	n         int
	transport Transport
	latency   time.Duration
	degree    int
	seed      uint64
	logW      io.Writer
	workers   int
	upstream  string
	slots     int
}

// Option configures New.
type Option func(*options)

// Nodes sets how many nodes the testnet has (default 3).
func Nodes(n int) Option { return func(o *options) { o.n = n } }

// Over picks the transport (default Mock).
func Over(t Transport) Option { return func(o *options) { o.transport = t } }

// Latency sets the one-way latency of every mocknet link.
func Latency(d time.Duration) Option { return func(o *options) { o.latency = d } }

// Degree sets how many earlier nodes each new node dials (default 4); node i dials
// node 0 and degree-1 random others, so the graph is connected.
func Degree(d int) Option { return func(o *options) { o.degree = d } }

// Seed fixes the random topology.
func Seed(s uint64) Option { return func(o *options) { o.seed = s } }

// Logs sends every node's logs to w (default: discarded unless COCOON_TEST_LOG=1).
func Logs(w io.Writer) Option { return func(o *options) { o.logW = w } }

// Workers makes the last k nodes workers: each serves the test model
// ($COCOON_TEST_MODEL, default ../shared/models/stories260K.gguf, as "stories260K")
// on the embedded llama.cpp with one thread and one slot (see Slots), at its own price,
// attested by the simulated TEE (sim, NOT confidential; allow_sim is on in every
// node of such a testnet). Every node gets a wallet; the testnet runs one
// in-process dev ledger (a simulated chain, not TON) shared by all, funds each
// client's wallet, and opens a channel from each client to each worker.
func Workers(k int) Option { return func(o *options) { o.workers = k } }

// Upstream makes the workers serve Model from an OpenAI-compatible server at url
// (runtime backend "openai") instead of the embedded llama.cpp: benchmarks use a
// server whose own cost is negligible, so that the overlay's cost is measured.
func Upstream(url string) Option { return func(o *options) { o.upstream = url } }

// Slots sets runtime.slots, the concurrent generations, of every worker
// (default 1); with Upstream, benchmarks give a worker the slots of a server that
// batches.
func Slots(n int) Option { return func(o *options) { o.slots = n } }

// Model is the id the workers of a testnet serve their model under.
const Model = "stories260K"

// Deposit is what each client deposits in each channel to a worker, nanoTON.
const Deposit = 2_000_000_000

// Testnet is a set of running nodes in this process. Its methods are for the test
// goroutine; they fail the test on error.
type Testnet struct {
	Nodes []*Member

	t    testing.TB
	dir  string // the members' datadirs are under it
	opt  options
	mn   mocknet.Mocknet
	mu   sync.Mutex
	logW io.Writer
	// Ledger is the shared dev ledger (simulated chain, not TON); nil without workers.
	Ledger *devledger.Ledger
}

// Member is one node of a testnet. Node is nil while it is killed.
type Member struct {
	*node.Node
	Index int
	ID    peer.ID

	// IsWorker says whether the member serves Model at Price (Node.Worker is its
	// worker service).
	IsWorker bool
	Price    market.Price
	// Channels maps each worker's index to the channel this member (a client)
	// opened to it.
	Channels map[int]settle.ChannelID

	datadir string
	key     crypto.PrivKey
}

// New starts the testnet and waits until every node is connected to its chosen
// peers and has a non-empty DHT routing table. Everything stops at test cleanup.
func New(t testing.TB, opts ...Option) *Testnet {
	t.Helper()
	o := options{n: 3, degree: 4, seed: 1}
	for _, f := range opts {
		f(&o)
	}
	tn := &Testnet{t: t, opt: o, logW: o.logW}
	if tn.logW == nil {
		tn.logW = io.Discard
		if os.Getenv("COCOON_TEST_LOG") == "1" {
			tn.logW = os.Stderr
		}
	}
	if o.transport == Mock {
		tn.mn = mocknet.New()
		tn.mn.SetLinkDefaults(mocknet.LinkOptions{Latency: o.latency})
	}
	// The datadirs' folder is made before Close is registered, so that the
	// nodes stop before their datadirs are removed (cleanups run last first):
	// a running node writes there (peers.json, the channel store).
	tn.dir = t.TempDir()
	t.Cleanup(tn.Close)
	if o.workers > o.n {
		t.Fatalf("testnet: %d workers among %d nodes", o.workers, o.n)
	}
	if o.workers > 0 {
		var err error
		if tn.Ledger, err = devledger.New(devledger.WithLogger(slog.New(slog.NewTextHandler(tn.logW, nil)).With("chain", devledger.Label))); err != nil {
			t.Fatalf("testnet: dev ledger: %v", err)
		}
	}

	var wg sync.WaitGroup
	errs := make([]error, o.n)
	tn.Nodes = make([]*Member, o.n)
	for i := range o.n {
		m, err := tn.prepare(i)
		if err != nil {
			t.Fatalf("testnet: prepare node %d: %v", i, err)
		}
		tn.Nodes[i] = m
	}
	for i, m := range tn.Nodes {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = tn.start(m) }()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("testnet: start node %d: %v", i, err)
		}
	}
	if tn.mn != nil {
		// Mocknet hosts must all exist before LinkAll.
		if err := tn.mn.LinkAll(); err != nil {
			t.Fatalf("testnet: link mocknet: %v", err)
		}
	}
	rng := rand.New(rand.NewPCG(o.seed, 0))
	for i := 1; i < o.n; i++ {
		targets := map[int]bool{0: true}
		for len(targets) < min(o.degree, i) {
			targets[rng.IntN(i)] = true
		}
		for j := range targets {
			wg.Add(1)
			go func() { defer wg.Done(); tn.connect(tn.Nodes[i], tn.Nodes[j]) }()
		}
	}
	wg.Wait()
	tn.WaitFor(60*time.Second, "every DHT routing table non-empty", func() bool {
		for _, m := range tn.Nodes {
			if m.P2P.RoutingTableSize() == 0 {
				return false
			}
		}
		return true
	})
	if o.workers > 0 {
		tn.openChannels()
	}
	return tn
}

// Clients lists the members that serve no model.
func (tn *Testnet) Clients() []*Member {
	var out []*Member
	for _, m := range tn.Nodes {
		if !m.IsWorker {
			out = append(out, m)
		}
	}
	return out
}

// WorkerNodes lists the members that serve Model.
func (tn *Testnet) WorkerNodes() []*Member {
	var out []*Member
	for _, m := range tn.Nodes {
		if m.IsWorker {
			out = append(out, m)
		}
	}
	return out
}

// openChannels funds every client on the dev ledger, opens a channel from it to
// every worker, and waits until each client's ad book holds every worker.
//
// Workers are not told: each learns a channel from the chain when a client first
// names it in a job's Open (market's channel lookup), as on a real network.
func (tn *Testnet) openChannels() {
	tn.t.Helper()
	ctx := context.Background()
	workers := tn.WorkerNodes()
	for _, c := range tn.Clients() {
		addr := c.Wallet.Address(tn.Ledger.GlobalID())
		if _, err := tn.Ledger.Faucet(addr, uint64(len(workers)+1)*Deposit); err != nil {
			tn.t.Fatalf("testnet: fund node %d: %v", c.Index, err)
		}
		c.Channels = map[int]settle.ChannelID{}
		for _, w := range workers {
			id, err := settle.NewChannelID()
			if err != nil {
				tn.t.Fatal(err)
			}
			ch := settle.Channel{
				ID: id, ClientKey: c.Wallet.PublicKey(), WorkerKey: w.Wallet.PublicKey(),
				ClientAddr: addr, WorkerAddr: w.Wallet.Address(tn.Ledger.GlobalID()),
				Closing: settle.DefaultClosing,
			}
			if _, err := c.Chain.Open(ctx, ch, Deposit); err != nil {
				tn.t.Fatalf("testnet: open channel %d→%d: %v", c.Index, w.Index, err)
			}
			st, err := w.Chain.State(ctx, ch)
			if err != nil || st.Status != settle.StatusOpen {
				tn.t.Fatalf("testnet: channel %d→%d on the ledger: %v, %v", c.Index, w.Index, st, err)
			}
			if err := c.Payer.AddChannel(ch, Deposit); err != nil {
				tn.t.Fatalf("testnet: client %d: add channel: %v", c.Index, err)
			}
			c.Channels[w.Index] = id
		}
	}
	tn.WaitFor(60*time.Second, "every worker's ad in every client's book", func() bool {
		for _, c := range tn.Clients() {
			if len(c.Client.Book().ByModel(Model)) != len(workers) {
				return false
			}
		}
		return true
	})
}

func (tn *Testnet) prepare(i int) (*Member, error) {
	dir, err := os.MkdirTemp(tn.dir, fmt.Sprintf("node%d-", i))
	if err != nil {
		return nil, err
	}
	if _, err := node.Init(dir, false); err != nil {
		return nil, err
	}
	key, err := node.LoadIdentity(dir + "/" + node.IdentityFile)
	if err != nil {
		return nil, err
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, err
	}
	m := &Member{Index: i, ID: id, datadir: dir, key: key}
	if tn.opt.workers > 0 {
		if _, err := settle.CreateWalletKey(filepath.Join(dir, node.WalletFile)); err != nil {
			return nil, err
		}
		if i >= tn.opt.n-tn.opt.workers {
			m.IsWorker = true
			// Odd prices, different per worker, so rounding and attribution show.
			m.Price = market.Price{Prompt: 300_000_001 + uint64(i)*7, Completion: 1_500_000_007 + uint64(i)*13}
		}
	}
	return m, nil
}

// repoRoot is the repository root, found from this file's path.
func repoRoot() string {
	_, file, _, _ := goruntime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// TestModelPath is the model the workers serve: $COCOON_TEST_MODEL or the shared
// stories260K (internal/testmodel finds it).
func TestModelPath() string { return testmodel.Path() }

// workerConfig turns cfg into the config of a testnet member: sim TEE allowed,
// and the only kind bought from; a worker serves the test model at m.Price.
func (tn *Testnet) workerConfig(m *Member, cfg *node.Config) {
	cfg.Enclave.Policy.AllowSim = true
	cfg.Enclave.Policy.AllowedKinds = []tee.Kind{tee.Sim}
	// Every member follows the test model's ads (market.models), so that a
	// client's book is full before its first request.
	cfg.Market.Models = []string{Model}
	if !m.IsWorker {
		return
	}
	cfg.Runtime.Models = []runtime.ModelConfig{{Path: TestModelPath(), ID: Model}}
	if tn.opt.upstream != "" {
		cfg.Runtime.Backend, cfg.Runtime.UpstreamURL = runtime.KindOpenAI, tn.opt.upstream
		cfg.Runtime.Models = []runtime.ModelConfig{{ID: Model}}
	}
	if os.Getenv("COCOON_LLAMA_LIB") == "" {
		cfg.Runtime.LibDir = filepath.Join(repoRoot(), ".cache", "llama", "lib")
	}
	cfg.Runtime.Threads, cfg.Runtime.Slots = 1, max(tn.opt.slots, 1)
	cfg.Market.Prices = []node.ModelPrice{{Model: Model, Prompt: int64(m.Price.Prompt), Completion: int64(m.Price.Completion)}}
	cfg.Enclave.Attester = tee.Sim
}

func (tn *Testnet) start(m *Member) error {
	cfg, err := node.Load(m.datadir)
	if err != nil {
		return err
	}
	cfg.P2P.Listen = []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"}
	cfg.P2P.DHTMode = p2p.DHTServer
	cfg.P2P.MDNS = false
	cfg.P2P.NATPortMap = false
	cfg.P2P.RelayService = false
	cfg.API.Listen = "127.0.0.1:0"
	if tn.opt.workers > 0 {
		tn.workerConfig(m, &cfg)
	}
	log := slog.New(slog.NewTextHandler(tn.logW, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", m.Index)
	opt := node.Options{Logger: log, Version: "testnet"}
	if tn.Ledger != nil {
		opt.Ledger = tn.Ledger
	}
	if tn.mn != nil {
		a, _ := ma.NewMultiaddr("/ip4/100.64." + strconv.Itoa(m.Index/250) + "." + strconv.Itoa(m.Index%250+1) + "/tcp/4001")
		h, err := tn.mn.AddPeer(m.key, a)
		if err != nil {
			return fmt.Errorf("add mocknet peer: %w", err)
		}
		opt.Host = h
	}
	n, err := node.New(context.Background(), cfg, opt)
	if err != nil {
		return err
	}
	tn.mu.Lock()
	m.Node = n
	tn.mu.Unlock()
	return nil
}

// connect dials b from a, trying three times: on a loaded 2-core machine hundreds
// of starting nodes can starve identify past one deadline.
func (tn *Testnet) connect(a, b *Member) {
	var err error
	for range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err = a.P2P.Host.Connect(ctx, b.AddrInfo())
		cancel()
		if err == nil {
			return
		}
	}
	tn.t.Errorf("testnet: connect node %d to node %d: %v", a.Index, b.Index, err)
}

// API is a client of m's local API.
func (m *Member) API() *local.Client { return local.New("http://"+m.APIAddr, m.Token) }

// AddrInfo is how other nodes dial m.
func (m *Member) AddrInfo() peer.AddrInfo {
	return peer.AddrInfo{ID: m.ID, Addrs: m.P2P.Host.Addrs()}
}

// Connect dials b from a.
func (tn *Testnet) Connect(a, b *Member) { tn.t.Helper(); tn.connect(a, b) }

// Partition cuts every link between the two groups (mocknet only) and closes their
// connections; Heal restores the links.
func (tn *Testnet) Partition(x, y []*Member) {
	tn.t.Helper()
	if tn.mn == nil {
		tn.t.Fatal("testnet: Partition needs the mocknet transport")
	}
	for _, a := range x {
		for _, b := range y {
			tn.mn.UnlinkPeers(a.ID, b.ID)
			tn.mn.DisconnectPeers(a.ID, b.ID)
		}
	}
}

// Heal re-links the two groups after Partition; nodes reconnect through the DHT or
// an explicit Connect.
func (tn *Testnet) Heal(x, y []*Member) {
	tn.t.Helper()
	for _, a := range x {
		for _, b := range y {
			if _, err := tn.mn.LinkPeers(a.ID, b.ID); err != nil {
				tn.t.Fatalf("testnet: link %d-%d: %v", a.Index, b.Index, err)
			}
		}
	}
}

// Kill stops m abruptly: on mocknet its links are cut first, so peers see the
// connections drop as they would when a process dies.
func (tn *Testnet) Kill(m *Member) {
	tn.t.Helper()
	if m.Node == nil {
		return
	}
	if tn.mn != nil {
		for _, o := range tn.Nodes {
			if o != m {
				tn.mn.UnlinkPeers(m.ID, o.ID)
				tn.mn.DisconnectPeers(m.ID, o.ID)
			}
		}
	}
	m.Node.Close()
	tn.mu.Lock()
	m.Node = nil
	tn.mu.Unlock()
}

// Restart starts a killed member again with the same identity and datadir and
// connects it to node 0 (or node 1 when it is node 0).
func (tn *Testnet) Restart(m *Member) {
	tn.t.Helper()
	if m.Node != nil {
		tn.t.Fatalf("testnet: node %d is running", m.Index)
	}
	if err := tn.start(m); err != nil {
		tn.t.Fatalf("testnet: restart node %d: %v", m.Index, err)
	}
	if tn.mn != nil {
		for _, o := range tn.Nodes {
			if o != m {
				if _, err := tn.mn.LinkPeers(m.ID, o.ID); err != nil {
					tn.t.Fatalf("testnet: link %d-%d: %v", m.Index, o.Index, err)
				}
			}
		}
	}
	for _, o := range tn.Nodes {
		if o != m && o.Node != nil {
			tn.connect(m, o)
			break
		}
	}
}

// Running lists the members that are not killed.
func (tn *Testnet) Running() []*Member {
	var out []*Member
	for _, m := range tn.Nodes {
		if m.Node != nil {
			out = append(out, m)
		}
	}
	return out
}

// WaitFor polls cond every 10 ms until it holds, failing the test after timeout.
func (tn *Testnet) WaitFor(timeout time.Duration, what string, cond func() bool) {
	tn.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tn.t.Fatalf("testnet: timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Close stops every node; it runs at test cleanup.
func (tn *Testnet) Close() {
	var wg sync.WaitGroup
	for _, m := range tn.Nodes {
		if m != nil && m.Node != nil {
			wg.Add(1)
			go func() { defer wg.Done(); m.Node.Close() }()
		}
	}
	wg.Wait()
	if tn.mn != nil {
		tn.mn.Close()
	}
}
