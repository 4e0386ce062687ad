// Package sim runs cocoon's own p2p stack for thousands of nodes in one process, on
// a simulated internet: go-libp2p's x/simlibp2p hosts (QUIC over marcopolo/simnet
// links) under the virtual clock of testing/synctest, so that simulated minutes cost
// only the CPU their messages take and every delay measured is the links' alone.
//
// Each node is a real p2p.Node (the dual Kademlia DHT, gossipsub with the project's
// score parameters, the per-model ads topics p2p.AdTopic) whose ad validator is
// market/service's client's own, service.AdGate: an ad is accepted only if it
// decodes, passes the schema, offers the topic's model, is signed by the peer it
// names, is fresh and newer than the last one seen, and its origin keeps the ad
// rate rule (Config.RateLimit), which blocks a flooder.
//
// The network New builds:
//
//	node i:   one-way access latency L_i ∈ [MinLatency, MaxLatency], symmetric link of
//	          B_i ∈ [MinMbps, MaxMbps] Mbit/s, both uniform from Seed;
//	          a packet i → j is delayed (L_i + L_j) / 2, queued behind B_i up and B_j down
//	nodes 0…Bootstrap-1:  bootstrap nodes (entry points, join no model)
//	Workers nodes:        each sells one of Models models (round robin), joins its
//	                      topic, provides it in the DHT, publishes an ad every AdInterval
//	every other node:     joins 0, 1 or 2 models (20 %, 50 %, 30 %)
//
// Every node bootstraps from the bootstrap nodes only; the DHT and gossip do the rest.
// Bytes are counted per node and protocol by a libp2p bandwidth reporter on every
// stream (payload above QUIC: gossip is /meshsub/*, the DHT is */kad/*).
//
// New, Run and Close must run inside a synctest bubble for virtual time (they
// work outside one, in real time, at a few dozen nodes).
package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/market/service"
	"github.com/cocoon-network/cocoon/p2p"
	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/metrics"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/core/routing"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/libp2p/go-libp2p/x/simlibp2p"
	"github.com/marcopolo/simnet"
)

// Config sizes and shapes the simulated network. Zero fields take the defaults
// named beside them.
type Config struct {
	Nodes      int           // required
	Workers    int           // 0: 1 % of Nodes, at least 1
	Models     int           // 0: 5
	Bootstrap  int           // 0: 3
	Seed       uint64        // seeds latencies, bandwidths, identities, roles and joins
	MinLatency time.Duration // 0: 20 ms (one way, per node)
	MaxLatency time.Duration // 0: 150 ms
	MinMbps    int           // 0: 10
	MaxMbps    int           // 0: 50
	AdInterval time.Duration // 0: market.DefaultAdInterval (10 s)
	// ConnsLow and ConnsHigh are the connection manager's water marks, as
	// p2p.Limits (0: 20 and 40, see New), and ConnsGrace its grace period,
	// which is also how often it trims (0: 5 s).
	ConnsLow, ConnsHigh int
	ConnsGrace          time.Duration
	// StartEvery is the gap between two nodes' starts (0: 25 ms): nodes
	// arrive one after another, as on a network that grows, rather than all
	// in one instant. At 10 ms, 1,000 nodes' routing-table refreshes overlap
	// within the connection manager's grace period, and the connections
	// they hold at once did not fit in this machine's 24 GiB.
	StartEvery time.Duration
	// RateLimit has every node's validator apply the ad rate rule users run
	// (service.AdGate); without it a node's validator is the book's checks
	// alone.
	RateLimit bool
	// Logger gets the harness's progress (Info) and its nodes' logs at
	// NodeLevel and above. nil: discard.
	Logger    *slog.Logger
	NodeLevel slog.Level // 0: Info
}

func (c *Config) defaults() error {
	if c.Nodes < 2 {
		return fmt.Errorf("sim: %d nodes, want at least 2", c.Nodes)
	}
	if c.Workers == 0 {
		c.Workers = max(1, c.Nodes/100)
	}
	if c.Models == 0 {
		c.Models = 5
	}
	if c.Bootstrap == 0 {
		c.Bootstrap = 3
	}
	if c.Bootstrap+c.Workers > c.Nodes {
		return fmt.Errorf("sim: %d bootstrap nodes and %d workers exceed %d nodes", c.Bootstrap, c.Workers, c.Nodes)
	}
	if c.MinLatency == 0 {
		c.MinLatency = 20 * time.Millisecond
	}
	if c.MaxLatency == 0 {
		c.MaxLatency = 150 * time.Millisecond
	}
	if c.MinMbps == 0 {
		c.MinMbps = 10
	}
	if c.MaxMbps == 0 {
		c.MaxMbps = 50
	}
	if c.AdInterval == 0 {
		c.AdInterval = market.DefaultAdInterval
	}
	if c.ConnsLow == 0 {
		c.ConnsLow = 20
	}
	if c.ConnsHigh == 0 {
		c.ConnsHigh = 40
	}
	if c.ConnsGrace == 0 {
		c.ConnsGrace = 5 * time.Second
	}
	if c.StartEvery == 0 {
		c.StartEvery = 25 * time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return nil
}

// Node is one simulated node.
type Node struct {
	Index   int
	P2P     *p2p.Node
	Book    *market.Book
	Models  []string // the models whose ads it takes
	Sells   string   // the model it sells; "" unless a worker
	Latency time.Duration
	Mbps    int
	Traffic *Traffic
	spammer atomic.Bool // publishes at many times the rate (Net.Flood)

	net  *Net
	mu   sync.Mutex
	seen map[peer.ID]uint64 // newest seq delivered, per worker
	// foreign counts ads delivered of models the node has not joined.
	foreign int
	gate    *service.AdGate
	blocked map[peer.ID]time.Time // when the rate rule blocked each peer
	spam    int                   // ads of the spammer delivered
	direct  map[peer.ID]int       // messages validated that their origin delivered itself
}

// BlockedAt returns when nd blocked p under the rate rule (zero: it has not).
func (nd *Node) BlockedAt(p peer.ID) time.Time {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.blocked[p]
}

// Direct returns how many messages signed by p that p delivered itself nd has
// validated (gossipsub drops those of a graylisted or blocked p before).
func (nd *Node) Direct(p peer.ID) int {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.direct[p]
}

// Spam returns how many of the spammer's ads were delivered to nd.
func (nd *Node) Spam() int {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.spam
}

// Spammer reports whether n floods (Net.Flood).
func (n *Node) Spammer() bool { return n.spammer.Load() }

// Joined reports whether n takes model's ads.
func (n *Node) Joined(model string) bool { return slices.Contains(n.Models, model) }

// Newest returns the newest seq of worker's ads delivered to n (0: none).
func (n *Node) Newest(worker peer.ID) uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.seen[worker]
}

// Foreign returns how many ads of models n has not joined were delivered to it.
func (n *Node) Foreign() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.foreign
}

// Delivery is one ad handed to one node's ad handler.
type Delivery struct {
	Node, Worker int
	Seq          uint64
	Delay        time.Duration // from the worker's PublishAd call
}

// Lookup is one provider lookup.
type Lookup struct {
	Node    int
	Model   string
	Found   int // providers found that sell the model
	Want    int // workers that sell it
	Time    time.Duration
	Hops    int // depth of the deepest peer queried (1: from the routing table)
	Queried int // peers that answered
	Err     error
}

// Net is a running simulated network. Its methods are safe for concurrent use
// after New returns.
type Net struct {
	Cfg     Config
	Nodes   []*Node
	Workers []*Node
	Models  []string
	Sim     *simnet.Simnet
	Start   time.Time // when New returned (the bubble's clock)

	byPeer map[peer.ID]*Node
	log    *slog.Logger

	mu         sync.Mutex
	published  map[peer.ID][]time.Time // per worker, index seq-1
	deliveries []Delivery

	cancel context.CancelFunc
	wg     sync.WaitGroup

	floodCancel context.CancelFunc
	floodWG     sync.WaitGroup
}

// ModelName is the name of the i-th simulated model.
func ModelName(i int) string { return fmt.Sprintf("sim/model-%d", i) }

// New builds and starts cfg.Nodes nodes and dials every one to the bootstrap
// nodes. It returns once every node has started; the network is still forming.
func New(ctx context.Context, cfg Config) (*Net, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x5eed))
	n := &Net{Cfg: cfg, byPeer: make(map[peer.ID]*Node, cfg.Nodes), log: cfg.Logger,
		published: map[peer.ID][]time.Time{}}
	for i := range cfg.Models {
		n.Models = append(n.Models, ModelName(i))
	}

	// Roles: bootstrap nodes first, then workers spread over the rest.
	latency := make(map[[4]byte]time.Duration, cfg.Nodes)
	n.Sim = &simnet.Simnet{LatencyFunc: func(p *simnet.Packet) time.Duration {
		return (latency[ipKey(p.From)] + latency[ipKey(p.To)]) / 2
	}, Logger: cfg.Logger}
	workerAt := map[int]bool{}
	for len(workerAt) < cfg.Workers {
		workerAt[cfg.Bootstrap+rng.IntN(cfg.Nodes-cfg.Bootstrap)] = true
	}
	keyRand := rand.NewChaCha8(seed32(rng))
	hosts := make([]*Node, cfg.Nodes)
	addrs := make([]string, cfg.Nodes)
	for i := range cfg.Nodes {
		nd := &Node{Index: i, net: n, seen: map[peer.ID]uint64{}, Traffic: &Traffic{},
			blocked: map[peer.ID]time.Time{}, direct: map[peer.ID]int{}}
		nd.Latency = cfg.MinLatency + time.Duration(rng.Int64N(int64(cfg.MaxLatency-cfg.MinLatency)+1))
		nd.Mbps = cfg.MinMbps + rng.IntN(cfg.MaxMbps-cfg.MinMbps+1)
		switch {
		case i < cfg.Bootstrap:
		case workerAt[i]:
			nd.Sells = n.Models[len(n.Workers)%cfg.Models]
			nd.Models = []string{nd.Sells}
			n.Workers = append(n.Workers, nd)
		default:
			switch r := rng.Float64(); {
			case r < 0.2:
			case r < 0.7:
				nd.Models = []string{n.Models[rng.IntN(cfg.Models)]}
			default:
				a := rng.IntN(cfg.Models)
				b := (a + 1 + rng.IntN(cfg.Models-1)) % cfg.Models
				nd.Models = []string{n.Models[a], n.Models[b]}
				if cfg.Models == 1 {
					nd.Models = nd.Models[:1]
				}
			}
		}
		ip := publicIP(i)
		latency[[4]byte(ip.To4())] = nd.Latency
		addrs[i] = fmt.Sprintf("/ip4/%s/udp/8000/quic-v1", ip)
		hosts[i] = nd
	}

	// Hosts: QUIC on simnet endpoints, the connection manager p2p builds for a
	// real host, and a byte counter on every stream.
	bootstrap := make([]string, 0, cfg.Bootstrap)
	built := make([]*p2p.Node, 0, cfg.Nodes)
	fail := func(err error) (*Net, error) {
		for _, p := range built {
			p.Close()
		}
		n.Sim.Close()
		return nil, err
	}
	type pending struct {
		h   *Node
		key crypto.PrivKey
		hst host.Host
	}
	var made []pending
	for i, nd := range hosts {
		key, _, err := crypto.GenerateEd25519Key(keyRand)
		if err != nil {
			return fail(fmt.Errorf("sim: key of node %d: %w", i, err))
		}
		cm, err := connmgr.NewConnManager(cfg.ConnsLow, cfg.ConnsHigh,
			connmgr.WithGracePeriod(cfg.ConnsGrace), connmgr.WithSilencePeriod(cfg.ConnsGrace))
		if err != nil {
			return fail(fmt.Errorf("sim: connection manager: %w", err))
		}
		link := simnet.NodeBiDiLinkSettings{
			Downlink: simnet.LinkSettings{BitsPerSecond: nd.Mbps * simlibp2p.OneMbps},
			Uplink:   simnet.LinkSettings{BitsPerSecond: nd.Mbps * simlibp2p.OneMbps},
		}
		h, err := libp2p.New(
			libp2p.Identity(key),
			libp2p.ListenAddrStrings(addrs[i]),
			simlibp2p.QUICSimnet(n.Sim, link),
			// Identify's address discovery stalls synctest (x/simlibp2p).
			libp2p.DisableIdentifyAddressDiscovery(),
			// Prometheus collectors are process-wide: thousands of hosts
			// would contend on them for figures nobody reads.
			libp2p.DisableMetrics(),
			libp2p.ResourceManager(&network.NullResourceManager{}),
			libp2p.ConnectionManager(cm),
			libp2p.BandwidthReporter(nd.Traffic),
		)
		if err != nil {
			return fail(fmt.Errorf("sim: host of node %d: %w", i, err))
		}
		tr := nd.Traffic
		h.Network().Notify(&network.NotifyBundle{ConnectedF: func(network.Network, network.Conn) { tr.Conns.Add(1) }})
		made = append(made, pending{h: nd, key: key, hst: h})
		n.byPeer[h.ID()] = nd
		if i < cfg.Bootstrap {
			bootstrap = append(bootstrap, addrs[i]+"/p2p/"+h.ID().String())
		}
	}
	n.Sim.Start()
	nodeLog := slog.New(levelHandler{cfg.Logger.Handler(), cfg.NodeLevel})
	for i, m := range made {
		if (i+1)%100 == 0 {
			n.log.Info("sim: nodes started", "n", i+1)
		}
		nd := m.h
		if i > 0 {
			time.Sleep(cfg.StartEvery)
		}
		pn, err := p2p.New(ctx, p2p.Config{
			Identity:  m.key,
			Bootstrap: bootstrap,
			// Every simulated node has a public address; on the internet
			// AutoNAT would make it a DHT server, which x/simlibp2p hosts lack.
			DHTMode: p2p.DHTServer,
			Host:    m.hst,
			Logger:  nodeLog.With("node", nd.Index),
		})
		if err != nil {
			m.hst.Close()
			return fail(fmt.Errorf("sim: start node %d: %w", nd.Index, err))
		}
		built = append(built, pn)
		nd.P2P = pn
		nd.Book = market.NewBook(nil)
		nd.gate = service.NewAdGate(pn, nd.Book, nodeLog.With("node", nd.Index), nd.blockedBy)
		pn.SetAdsValidator(nd.validate)
		pn.SetAdHandler(nd.deliver)
		for _, model := range nd.Models {
			if err := pn.JoinModel(model); err != nil {
				return fail(fmt.Errorf("sim: node %d joins %s: %w", nd.Index, model, err))
			}
		}
	}
	n.Nodes = hosts
	n.Start = time.Now()
	return n, nil
}

// validate is market/service's client validator (service.AdGate: the book's
// checks, then the ad rate rule when Config.RateLimit), counting what the
// figures need first.
func (nd *Node) validate(ctx context.Context, model string, from, origin peer.ID, data []byte) pubsub.ValidationResult {
	nd.countForeign(data)
	if from == origin {
		nd.mu.Lock()
		nd.direct[origin]++
		nd.mu.Unlock()
	}
	if nd.net.Cfg.RateLimit {
		return nd.gate.Validate(ctx, model, from, origin, data)
	}
	switch _, r := nd.Book.OfferOn(model, origin, data, nil); {
	case r == market.Kept:
		return pubsub.ValidationAccept
	case r.Penalize():
		return pubsub.ValidationReject
	default:
		return pubsub.ValidationIgnore
	}
}

// blockedBy is the gate's onBlock: when nd blocked p.
func (nd *Node) blockedBy(p peer.ID, _ string) {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if _, done := nd.blocked[p]; !done {
		nd.blocked[p] = time.Now()
	}
}

// countForeign counts an ad that reached this node although it offers no model
// the node has joined.
func (nd *Node) countForeign(data []byte) {
	ad, err := market.DecodeAd(data)
	if err != nil {
		return
	}
	for _, o := range ad.Models {
		if nd.Joined(o.ID) {
			return
		}
	}
	nd.mu.Lock()
	nd.foreign++
	nd.mu.Unlock()
}

func (nd *Node) deliver(model string, origin peer.ID, data []byte) {
	now := time.Now()
	w := nd.net.byPeer[origin]
	if w == nil || w == nd {
		return
	}
	ad, err := market.DecodeAd(data)
	if err != nil {
		return
	}
	nd.mu.Lock()
	if w.spammer.Load() {
		nd.spam++
	}
	if ad.Seq > nd.seen[origin] {
		nd.seen[origin] = ad.Seq
	}
	if !nd.Joined(model) {
		nd.foreign++
	}
	nd.mu.Unlock()
	n := nd.net
	n.mu.Lock()
	defer n.mu.Unlock()
	pub := n.published[origin]
	if ad.Seq == 0 || int(ad.Seq) > len(pub) {
		return
	}
	n.deliveries = append(n.deliveries, Delivery{Node: nd.Index, Worker: w.Index, Seq: ad.Seq, Delay: now.Sub(pub[ad.Seq-1])})
}

// Settle waits (on the bubble's clock) until every node has a DHT routing table of
// at least minTable peers or until d has passed, and returns how long it took.
func (n *Net) Settle(d time.Duration, minTable int) time.Duration {
	start := time.Now()
	for i := 0; time.Since(start) < d; i++ {
		short, conns := 0, 0
		for _, nd := range n.Nodes {
			if nd.P2P.DHT.WAN.RoutingTable().Size() < minTable {
				short++
			}
			conns += len(nd.P2P.Host.Network().Conns())
		}
		if short == 0 {
			break
		}
		if i%5 == 0 {
			n.log.Info("sim: settling", "short_tables", short, "conns_per_node", float64(conns)/float64(len(n.Nodes)))
		}
		time.Sleep(time.Second)
	}
	return time.Since(start)
}

// Provide has every worker announce its model in the DHT, all at once, and
// returns the first error.
func (n *Net) Provide(ctx context.Context) error {
	errs := make([]error, len(n.Workers))
	var wg sync.WaitGroup
	for i, w := range n.Workers {
		wg.Go(func() { errs[i] = w.P2P.Provide(ctx, w.Sells) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// StartAds starts every worker publishing its ad every AdInterval (the first at a
// random phase within one interval), until Close.
func (n *Net) StartAds() {
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	rng := rand.New(rand.NewPCG(n.Cfg.Seed, 0xad))
	for _, w := range n.Workers {
		phase := time.Duration(rng.Int64N(int64(n.Cfg.AdInterval)))
		n.wg.Go(func() { n.adLoop(ctx, w, phase) })
	}
}

func (n *Net) adLoop(ctx context.Context, w *Node, phase time.Duration) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(phase):
	}
	t := time.NewTicker(n.Cfg.AdInterval)
	defer t.Stop()
	for seq := uint64(1); ; seq++ {
		ad := n.ad(w, w.Sells, seq)
		data, err := ad.Encode()
		if err != nil {
			n.log.Error("encode ad", "err", err)
			return
		}
		n.mu.Lock()
		n.published[ad.Peer] = append(n.published[ad.Peer], time.Now())
		n.mu.Unlock()
		if err := w.P2P.PublishAd(ctx, w.Sells, data); err != nil && ctx.Err() == nil {
			n.log.Warn("publish ad", "worker", w.Index, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// ad is the seq-th ad of nd offering model, as a worker publishes it.
func (n *Net) ad(nd *Node, model string, seq uint64) market.Ad {
	return market.Ad{
		Peer: nd.P2P.Host.ID(), Seq: seq, IssuedAt: time.Now(), TTL: market.DefaultAdTTL,
		Models: []market.ModelOffer{{
			ID: model, ContextLength: 4096, WeightsDigest: "sha256:" + strings.Repeat("ab", 32),
			Price: market.Price{Prompt: 10, Completion: 20}, TTFT: 200 * time.Millisecond, TimePerToken: 20 * time.Millisecond,
		}},
		TEE:        market.TEE{Kind: tee.TDX, Measurement: make([]byte, 48)},
		Capacity:   market.Capacity{SlotsTotal: 4, SlotsFree: 4, GPUs: []market.GPU{{Name: "NVIDIA H100 80GB HBM3", VRAM: 80 << 30}}},
		Settlement: market.Settlement{WalletAddress: "EQ" + strings.Repeat("A", 46), ChannelKey: make([]byte, 32), MinDeposit: 1e9},
	}
}

// StopAds stops the workers' ads and waits for the last publish to return.
func (n *Net) StopAds() {
	if n.cancel != nil {
		n.cancel()
	}
	n.wg.Wait()
}

// Published returns how many ads worker w has published.
func (n *Net) Published(w *Node) uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return uint64(len(n.published[w.P2P.Host.ID()]))
}

// PublishedAt returns when worker w published its seq-th ad.
func (n *Net) PublishedAt(w *Node, seq uint64) time.Time {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.published[w.P2P.Host.ID()][seq-1]
}

// Deliveries returns a copy of every ad delivery so far.
func (n *Net) Deliveries() []Delivery {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.deliveries)
}

// WorkersOf returns the workers that sell model.
func (n *Net) WorkersOf(model string) []*Node {
	var out []*Node
	for _, w := range n.Workers {
		if w.Sells == model {
			out = append(out, w)
		}
	}
	return out
}

// FindProviders looks up model's providers from node nd, stopping once it has found
// as many as there are workers selling it or at ctx's end.
func (n *Net) FindProviders(ctx context.Context, nd *Node, model string) Lookup {
	want := n.WorkersOf(model)
	l := Lookup{Node: nd.Index, Model: model, Want: len(want)}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ctx, events := routing.RegisterForQueryEvents(ctx)
	depth := map[peer.ID]int{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for e := range events {
			if e.Type != routing.PeerResponse {
				continue
			}
			d := depth[e.ID]
			if d == 0 {
				d = 1 // from the routing table
				depth[e.ID] = 1
			}
			l.Queried++
			l.Hops = max(l.Hops, d)
			for _, ai := range e.Responses {
				if _, ok := depth[ai.ID]; !ok {
					depth[ai.ID] = d + 1
				}
			}
		}
	}()
	start := time.Now()
	ps, err := nd.P2P.FindProviders(ctx, model, len(want))
	l.Time = time.Since(start)
	cancel()
	<-done
	l.Err = err
	for _, ai := range ps {
		if w := n.byPeer[ai.ID]; w != nil && w.Sells == model {
			l.Found++
		}
	}
	return l
}

// Close stops the ads, the spammer and every node, then the simulated network.
func (n *Net) Close() error {
	n.StopAds()
	n.StopFlood()
	errs := make([]error, len(n.Nodes))
	var wg sync.WaitGroup
	for i, nd := range n.Nodes {
		wg.Go(func() { errs[i] = nd.P2P.Close() })
	}
	wg.Wait()
	n.Sim.Close()
	return errors.Join(errs...)
}

// HeapPerNode forces a collection and returns the live heap (HeapInuse) divided by
// the number of nodes.
func (n *Net) HeapPerNode() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse / uint64(len(n.Nodes))
}

// levelHandler passes on the records at or above its level.
type levelHandler struct {
	slog.Handler
	level slog.Level
}

func (h levelHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.level && h.Handler.Enabled(ctx, l)
}

func (h levelHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return levelHandler{h.Handler.WithAttrs(as), h.level}
}

func (h levelHandler) WithGroup(name string) slog.Handler {
	return levelHandler{h.Handler.WithGroup(name), h.level}
}

// publicIP gives node i an address of its own /16: kad-dht's WAN routing table
// admits only a few peers per /16 (its diversity filter), as on the internet,
// where x/simlibp2p's consecutive addresses would all share one.
func publicIP(i int) net.IP {
	return net.IPv4(byte(11+i/250), byte(i%250), 0, 1)
}

func ipKey(a net.Addr) [4]byte {
	if u, ok := a.(*net.UDPAddr); ok {
		if ip := u.IP.To4(); ip != nil {
			return [4]byte(ip)
		}
	}
	return [4]byte{}
}

func seed32(r *rand.Rand) [32]byte {
	var s [32]byte
	for i := range 4 {
		v := r.Uint64()
		for j := range 8 {
			s[i*8+j] = byte(v >> (8 * j))
		}
	}
	return s
}

// Traffic counts the bytes of one host's streams by protocol class. It is a
// libp2p metrics.Reporter that keeps totals only (no rate meters, which would
// start a goroutine outside the bubble's control).
type Traffic struct {
	GossipSent, GossipRecv atomic.Int64
	DHTSent, DHTRecv       atomic.Int64
	OtherSent, OtherRecv   atomic.Int64
	Conns                  atomic.Int64 // connections opened, either way
}

func (t *Traffic) class(p protocol.ID) (*atomic.Int64, *atomic.Int64) {
	switch s := string(p); {
	case strings.HasPrefix(s, "/meshsub/"):
		return &t.GossipSent, &t.GossipRecv
	case strings.Contains(s, "/kad/"):
		return &t.DHTSent, &t.DHTRecv
	}
	return &t.OtherSent, &t.OtherRecv
}

func (t *Traffic) LogSentMessage(int64) {}
func (t *Traffic) LogRecvMessage(int64) {}
func (t *Traffic) LogSentMessageStream(n int64, p protocol.ID, _ peer.ID) {
	s, _ := t.class(p)
	s.Add(n)
}
func (t *Traffic) LogRecvMessageStream(n int64, p protocol.ID, _ peer.ID) {
	_, r := t.class(p)
	r.Add(n)
}
func (t *Traffic) GetBandwidthForPeer(peer.ID) metrics.Stats             { return metrics.Stats{} }
func (t *Traffic) GetBandwidthForProtocol(protocol.ID) metrics.Stats     { return metrics.Stats{} }
func (t *Traffic) GetBandwidthTotals() metrics.Stats                     { return metrics.Stats{} }
func (t *Traffic) GetBandwidthByPeer() map[peer.ID]metrics.Stats         { return nil }
func (t *Traffic) GetBandwidthByProtocol() map[protocol.ID]metrics.Stats { return nil }
func (t *Traffic) Reset()                                                {}
func (t *Traffic) TrimIdle(time.Time)                                    {}

// Spammer is a node publishing ads far beyond the rate rule (Net.Flood).
type Spammer struct {
	*Node
	Model string
	// Published counts the valid ads and the malformed messages it sent, and
	// Refused the publishes that failed (no peer left to send to).
	Published, Malformed, Refused atomic.Int64
	Start                         time.Time
}

// Flood turns node nd, joined to model, into a spammer on model's topic until
// StopFlood: it accepts everything itself, and publishes perSec ads a second,
// each signed, fresh and newer than the last (only the rate is wrong), every
// malformedEvery-th message replaced by bytes that do not decode.
func (n *Net) Flood(nd *Node, model string, perSec, malformedEvery int) (*Spammer, error) {
	if !nd.Joined(model) || nd.Sells != "" {
		return nil, fmt.Errorf("sim: node %d, a worker or not joined to %s, cannot flood it", nd.Index, model)
	}
	nd.spammer.Store(true)
	nd.P2P.SetAdsValidator(nil)
	sp := &Spammer{Node: nd, Model: model, Start: time.Now()}
	ctx, cancel := context.WithCancel(context.Background())
	n.floodCancel = cancel
	n.floodWG.Go(func() {
		gap := time.Second / time.Duration(perSec)
		t := time.NewTicker(gap)
		defer t.Stop()
		junk := rand.New(rand.NewPCG(n.Cfg.Seed, 0xbad))
		for i := 1; ; i++ {
			var data []byte
			if malformedEvery > 0 && i%malformedEvery == 0 {
				data = make([]byte, 64+junk.IntN(512))
				for j := range data {
					data[j] = byte(junk.Uint32())
				}
				sp.Malformed.Add(1)
			} else {
				ad := n.ad(nd, model, uint64(i))
				var err error
				if data, err = ad.Encode(); err != nil {
					n.log.Error("encode ad", "err", err)
					return
				}
				sp.Published.Add(1)
			}
			if err := nd.P2P.PublishAd(ctx, model, data); err != nil {
				sp.Refused.Add(1)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
	return sp, nil
}

// StopFlood stops the spammer and waits for its last publish.
func (n *Net) StopFlood() {
	if n.floodCancel != nil {
		n.floodCancel()
	}
	n.floodWG.Wait()
}
