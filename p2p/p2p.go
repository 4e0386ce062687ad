package p2p

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p-kad-dht/dual"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/discovery/mdns"
	"github.com/libp2p/go-libp2p/p2p/host/autorelay"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	routedhost "github.com/libp2p/go-libp2p/p2p/host/routed"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/libp2p/go-libp2p/p2p/protocol/holepunch"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	mh "github.com/multiformats/go-multihash"
)

// Protocol identifiers of the cocoon network.
const (
	DHTPrefix      protocol.ID = "/cocoon"              // Kademlia runs as /cocoon/kad/1.0.0 (WAN) and /cocoon/lan/kad/1.0.0 (LAN)
	ProtocolJob    protocol.ID = "/cocoon/job/1.0.0"    // one stream per job (market)
	ProtocolAttest protocol.ID = "/cocoon/attest/1.0.0" // attestation session (enclave via market)
	ProtocolModels protocol.ID = "/cocoon/models/1.0.0" // the model ids a peer knows, asked by a node that knows none (market)
	// TopicAdsPrefix begins every model's ads topic (AdTopic).
	TopicAdsPrefix = "/cocoon/ads/1/"
	// TopicModels is the catalogue topic: each worker publishes the ids of the
	// models it sells there, rarely (market enforces the rate), so that a node
	// learns the network's model names without joining every ads topic.
	TopicModels      = "/cocoon/models/1"
	MDNSService      = "cocoon"         // mDNS service name
	MaxAdSize        = 4 << 10          // an ad larger than this is rejected by the topic validator
	MaxCatalogueSize = 1 << 10          // a catalogue message larger than this is rejected
	BlockTime        = 10 * time.Minute // how long Block keeps a peer out
)

// AdTopic is the gossipsub topic of model's ads: TopicAdsPrefix followed by
// ModelKey(model). The model id is hashed so that topic names are bounded and
// uniform whatever the id.
func AdTopic(model string) string { return TopicAdsPrefix + ModelKey(model).String() }

// DHT modes accepted by Config.DHTMode.
const (
	DHTAuto   = "auto"
	DHTServer = "server"
	DHTClient = "client"
)

// Config configures a Node. The zero value (plus an Identity) is a node listening on
// all interfaces on random ports, with no bootstrap peers and no mDNS.
type Config struct {
	Identity crypto.PrivKey // required
	Listen   []string       // empty: /ip4/0.0.0.0/tcp/0 and /ip4/0.0.0.0/udp/0/quic-v1
	// Bootstrap peers (multiaddrs ending in /p2p/<id>) are dialled at start and
	// redialled with backoff whenever the node has too few peers (see MinPeers).
	Bootstrap []string
	// PeersFile, when set, is where the node remembers the peers it met (see
	// DecodePeers): read at start, its peers dialled like bootstrap peers, and
	// rewritten every PeersSaveInterval and at Close. Empty: nothing is remembered.
	PeersFile string
	MDNS      bool
	DHTMode   string // auto (default), server or client
	// NATPortMap asks the LAN gateway for a port mapping (UPnP, NAT-PMP).
	NATPortMap bool
	// RelayService offers a limited circuit-relay v2 service when publicly
	// reachable (AutoNAT's verdict, see Reachability); a private node reserves
	// a slot on such peers (AutoRelay) whatever this says.
	RelayService bool
	// Reachability overrides AutoNAT's verdict: "" (AutoNAT decides),
	// ReachPublic or ReachPrivate.
	Reachability string
	Limits       Limits
	// ReprovideInterval is how often provider records are re-announced; it must be
	// shorter than the DHT's record validity (48 h). Zero: 12 h.
	ReprovideInterval time.Duration
	// LivenessInterval is how often every connected peer is pinged (a peer that
	// misses LivenessMisses pings in a row is disconnected). 0: LivenessInterval
	// on a host the node builds, never on a Host given (in-process test networks
	// of hundreds of nodes would spend their CPU on pings); negative: never.
	LivenessInterval time.Duration

	// Host, when set, is used instead of building one (tests use mocknet hosts);
	// Listen, Limits and the NAT options are then ignored. The Node owns it.
	Host   host.Host
	Logger *slog.Logger // nil: slog.Default()
}

// Limits bound the resources the libp2p host may use.
type Limits struct {
	MaxMemoryMB int // resource manager memory budget; 0: scaled from system memory
	MaxFDs      int // resource manager file descriptors; 0: scaled from the process limit
	ConnsLow    int // connection manager low water mark; 0: 100
	ConnsHigh   int // connection manager high water mark; 0: 400
}

// Node is the libp2p side of a cocoon node: the host, its DHT, the per-model ads
// topics it has joined and the catalogue topic. Its methods are safe for
// concurrent use.
type Node struct {
	// Host is the libp2p host; on a host the node builds, a dial to a peer
	// without known addresses looks them up in the DHT (a routed host).
	Host      host.Host
	DHT       *dual.DHT
	PubSub    *pubsub.PubSub
	Catalogue *pubsub.Topic // TopicModels, relayed (validated, not delivered)

	log    *slog.Logger
	cfg    Config
	mdns   mdns.Service
	cancel context.CancelFunc
	ctx    context.Context
	wg     sync.WaitGroup
	close  sync.Once
	errs   error

	catRelay  pubsub.RelayCancelFunc
	bootstrap map[peer.ID]bool
	blocks    *blocklist
	// remembered is the peer set of PeersFile, newest first; rejoinLoop owns it
	// while it runs, Close after.
	remembered []RememberedPeer

	// noDirect: the peers a wait for a direct connection failed for, and
	// when (NewStream).
	noDirect sync.Map

	mu           sync.Mutex
	closed       bool
	provided     map[string]cid.Cid
	topics       map[string]*adTopic // by model: joined, or published on
	validator    Validator
	catValidator CatalogueValidator
	onAd         func(model string, origin peer.ID, data []byte)
	scores       map[peer.ID]float64

	reach *reach // AutoNAT's verdict and hole-punch counts (Reachability)
}

// ScoreInspectInterval is how often the gossipsub scores Score reads are
// taken.
const ScoreInspectInterval = time.Second

func (n *Node) setScores(m map[peer.ID]float64) {
	n.mu.Lock()
	n.scores = m
	n.mu.Unlock()
}

// Score is p's gossipsub score as of the last inspection (every
// ScoreInspectInterval); ok is false for a peer gossipsub does not score.
func (n *Node) Score(p peer.ID) (score float64, ok bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	score, ok = n.scores[p]
	return score, ok
}

// Validator judges one ad received on model's ads topic. from is the peer
// that delivered it, origin the peer that signed the gossipsub message (strict
// signing guarantees it); they differ when the ad was relayed. A rejection
// costs from its gossipsub score, so a rule the relays cannot check for the
// origin (a rate, seen from here) should ignore relayed ads rather than reject
// them. It is called concurrently.
type Validator func(ctx context.Context, model string, from, origin peer.ID, data []byte) pubsub.ValidationResult

// CatalogueValidator judges one message received on TopicModels, as Validator
// does an ad. It is called concurrently.
type CatalogueValidator func(ctx context.Context, from, origin peer.ID, data []byte) pubsub.ValidationResult

// New starts a libp2p node from cfg. Close stops it.
func New(ctx context.Context, cfg Config) (*Node, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ReprovideInterval == 0 {
		cfg.ReprovideInterval = 12 * time.Hour
	}
	mode, err := dhtMode(cfg.DHTMode)
	if err != nil {
		return nil, err
	}
	bootstrap, err := ParseBootstrap(cfg.Bootstrap)
	if err != nil {
		return nil, err
	}
	h := cfg.Host
	var gater *blocklist
	rc := new(reach)
	if h == nil {
		if cfg.Identity == nil {
			return nil, errors.New("p2p: no identity key")
		}
		gater = newBlocklist()
		if h, err = newHost(cfg, gater, rc); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	n := &Node{Host: h, cfg: cfg, ctx: ctx, cancel: cancel, provided: map[string]cid.Cid{},
		topics: map[string]*adTopic{}, bootstrap: map[peer.ID]bool{}, blocks: gater,
		log: cfg.Logger.With("subsys", "p2p"), reach: rc}
	if gater == nil { // a Host given: no gater of ours, connections are cut as they come
		n.blocks = newBlocklist()
	}
	for _, ai := range bootstrap {
		n.bootstrap[ai.ID] = true
	}
	fail := func(err error) (*Node, error) {
		cancel()
		h.Close()
		return nil, err
	}

	// The dual DHT, as kubo runs it: a WAN DHT in the configured mode over
	// public addresses, and a LAN DHT over private ones in which every node
	// serves (unless the WAN one is forced to client mode). Without it, nodes
	// on private or loopback addresses in auto mode are all DHT clients: the
	// overlay becomes a star around the bootstrap node, and nodes that share
	// only it never meet. The LAN DHT keeps loopback addresses (kad-dht's
	// dual drops them), so that nodes on one machine, as in a testnet, find
	// each other too; elsewhere a loopback address fails its dial at once.
	n.DHT, err = dual.New(h,
		dual.DHTOption(dht.BootstrapPeers(bootstrap...)),
		// Each DHT its own protocol: a prefix given to both would replace
		// the LAN's /lan extension (dual applies ours after its own), and
		// the LAN DHT's handler, registered second, would answer the WAN's
		// queries from a table of private addresses alone.
		dual.WanDHTOption(dht.ProtocolPrefix(DHTPrefix), dht.Mode(mode)),
		dual.LanDHTOption(dht.ProtocolPrefix(DHTPrefix+dual.LanExtension),
			dht.AddressFilter(func(a []ma.Multiaddr) []ma.Multiaddr { return a })),
	)
	if err != nil {
		return fail(fmt.Errorf("p2p: start dht: %w", err))
	}
	if cfg.Host == nil {
		// A peer known by its ID alone (a worker whose ad came by gossipsub,
		// never connected) is dialled at the addresses peerRouting finds. A
		// basic host fails such a dial with "no addresses".
		n.Host = routedhost.Wrap(h, peerRouting{n.DHT, h})
	}
	n.PubSub, err = pubsub.NewGossipSub(ctx, h,
		pubsub.WithMessageSigning(true),
		pubsub.WithStrictSignatureVerification(true),
		// A message published before the first heartbeat has grafted the mesh
		// otherwise reaches nobody, silently (go-libp2p-pubsub v0.19).
		pubsub.WithFloodPublish(true),
		// A peer pruned from a full mesh learns other peers of the topic from
		// the pruning one (accepted from peers scoring AcceptPXThreshold, which
		// bootstrap peers do at once): a bootstrap node hands its crowd on
		// instead of holding the overlay together.
		pubsub.WithPeerExchange(true),
		pubsub.WithMessageIdFn(contentID),
		pubsub.WithPeerScore(n.scoreParams(), scoreThresholds()),
		pubsub.WithMaxMessageSize(64<<10),
		pubsub.WithBlacklist(pubsubBlacklist{n.blocks}),
		pubsub.WithPeerScoreInspect(n.setScores, ScoreInspectInterval),
	)
	if err != nil {
		return fail(fmt.Errorf("p2p: start gossipsub: %w", err))
	}
	if err := n.joinCatalogue(); err != nil {
		return fail(err)
	}
	if err := n.watchReachability(ctx); err != nil {
		return fail(err)
	}
	// Block cuts a blocked peer's connections; on a Host given (no gater of
	// ours) a new connection from it is cut as it comes.
	h.Network().Notify(&network.NotifyBundle{ConnectedF: func(_ network.Network, c network.Conn) {
		if n.blocks.blocked(c.RemotePeer()) {
			go c.Close()
		}
	}})
	if cfg.MDNS {
		n.mdns = mdns.NewMdnsService(h, MDNSService, mdnsNotifee{n})
		if err := n.mdns.Start(); err != nil {
			return fail(fmt.Errorf("p2p: start mdns: %w", err))
		}
	}
	if cfg.PeersFile != "" {
		ps, err := loadPeersFile(cfg.PeersFile)
		if err != nil {
			n.log.Warn("peers file ignored", "path", cfg.PeersFile, "err", err)
		} else if len(ps) > 0 {
			n.log.Info("dialing remembered peers", "peers", len(ps), "path", cfg.PeersFile)
		}
		n.remembered = ps
	}
	if len(bootstrap) > 0 || cfg.PeersFile != "" {
		n.wg.Add(1)
		go n.rejoinLoop(ctx, bootstrap)
	}
	n.wg.Add(1)
	go n.reprovideLoop(ctx)
	if iv := cfg.LivenessInterval; iv > 0 || (iv == 0 && cfg.Host == nil) {
		if iv == 0 {
			iv = LivenessInterval
		}
		n.wg.Add(1)
		go n.livenessLoop(ctx, iv)
	}
	n.log.Info("libp2p node started", "peer", h.ID(), "addrs", h.Addrs(), "dht_mode", cfg.DHTMode)
	return n, nil
}

func newHost(cfg Config, gater *blocklist, rc *reach) (host.Host, error) {
	listen := cfg.Listen
	if len(listen) == 0 {
		listen = []string{"/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"}
	}
	addrs := make([]ma.Multiaddr, 0, len(listen))
	for i, s := range listen {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, fmt.Errorf("p2p.listen[%d]: invalid multiaddr %q: %w", i, s, err)
		}
		addrs = append(addrs, a)
	}
	scaling := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&scaling)
	limits := scaling.AutoScale()
	if cfg.Limits.MaxMemoryMB > 0 || cfg.Limits.MaxFDs > 0 {
		mem, fds := int64(cfg.Limits.MaxMemoryMB)<<20, cfg.Limits.MaxFDs
		if mem == 0 {
			mem = 1 << 30
		}
		if fds == 0 {
			fds = 512
		}
		limits = scaling.Scale(mem, fds)
	}
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits))
	if err != nil {
		return nil, fmt.Errorf("p2p: resource manager: %w", err)
	}
	low, high := cfg.Limits.ConnsLow, cfg.Limits.ConnsHigh
	if low == 0 {
		low = 100
	}
	if high == 0 {
		high = 400
	}
	if high < low {
		return nil, fmt.Errorf("p2p.limits.conns_high: %d is below conns_low %d", high, low)
	}
	var self atomic.Pointer[host.Host] // AutoRelay's peer source reads the host built below
	cm, err := connmgr.NewConnManager(low, high, connmgr.WithGracePeriod(time.Minute))
	if err != nil {
		return nil, fmt.Errorf("p2p: connection manager: %w", err)
	}
	opts := []libp2p.Option{
		libp2p.Identity(cfg.Identity),
		libp2p.ListenAddrs(addrs...),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Transport(quic.NewTransport),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Security(libp2ptls.ID, libp2ptls.New),
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
		libp2p.ResourceManager(rm),
		libp2p.ConnectionManager(cm),
		libp2p.ConnectionGater(gater),
		// AutoNAT v1's verdict is what the relay service and AutoRelay act
		// on (go-libp2p v0.51); v2 only judges each address. Every node
		// answers v1 probes (a dial back to the prober's own IP, rate
		// limited), or no node would ever learn it is public or private.
		libp2p.EnableNATService(),
		libp2p.EnableAutoNATv2(),
		libp2p.EnableHolePunching(holepunch.WithTracer(rc)),
		libp2p.EnableRelay(),
		// A private node reserves a slot on relays among its connected
		// peers; its /p2p-circuit addresses then go out with identify, in
		// its provider records and peer records.
		libp2p.EnableAutoRelayWithPeerSource(relayCandidates(&self),
			autorelay.WithMinCandidates(1),
			autorelay.WithNumRelays(2),
			autorelay.WithBootDelay(0),
			autorelay.WithMinInterval(10*time.Second),
			autorelay.WithBackoff(time.Minute)),
		libp2p.UserAgent("cocoon"),
	}
	switch cfg.Reachability {
	case "":
	case ReachPublic:
		opts = append(opts, libp2p.ForceReachabilityPublic())
	case ReachPrivate:
		opts = append(opts, libp2p.ForceReachabilityPrivate())
	default:
		return nil, fmt.Errorf("p2p.reachability: %q is not empty, %s or %s", cfg.Reachability, ReachPublic, ReachPrivate)
	}
	if cfg.NATPortMap {
		opts = append(opts, libp2p.NATPortMap())
	}
	if cfg.RelayService {
		opts = append(opts, libp2p.EnableRelayService())
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("p2p: start host: %w", err)
	}
	self.Store(&h)
	return h, nil
}

// RoutingTableSize is the number of peers in the node's DHT routing tables
// (WAN and LAN together).
func (n *Node) RoutingTableSize() int {
	return n.DHT.WAN.RoutingTable().Size() + n.DHT.LAN.RoutingTable().Size()
}

func dhtMode(s string) (dht.ModeOpt, error) {
	switch s {
	case "", DHTAuto:
		return dht.ModeAuto, nil
	case DHTServer:
		return dht.ModeServer, nil
	case DHTClient:
		return dht.ModeClient, nil
	}
	return 0, fmt.Errorf("p2p.dht_mode: %q is not auto, server or client", s)
}

// ParseBootstrap parses multiaddrs that end in /p2p/<peer id>.
func ParseBootstrap(addrs []string) ([]peer.AddrInfo, error) {
	out := make([]peer.AddrInfo, 0, len(addrs))
	for i, s := range addrs {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, fmt.Errorf("p2p.bootstrap[%d]: invalid multiaddr %q: %w", i, s, err)
		}
		ai, err := peer.AddrInfoFromP2pAddr(a)
		if err != nil {
			return nil, fmt.Errorf("p2p.bootstrap[%d]: %q does not end in /p2p/<peer id>: %w", i, s, err)
		}
		out = append(out, *ai)
	}
	return out, nil
}

// contentID names a gossip message by the hash of its topic and content, so
// that the same ad relayed on different paths is delivered once, while the
// same bytes published on two models' topics (an ad offering both) are two
// messages: gossipsub's seen-messages cache spans topics.
func contentID(m *pb.Message) string {
	h := sha256.New()
	h.Write([]byte(m.GetTopic()))
	h.Write([]byte{0})
	h.Write(m.Data)
	return string(h.Sum(nil))
}

// topicScoreParams are the score parameters of every ads topic and of the
// catalogue topic: a peer that delivers invalid messages (malformed, forged,
// an ad on a model's topic it does not offer, faster than the allowed rate)
// loses 100 per message squared, decaying by half each second, so a few
// invalid messages push it under the gossip (-100), publish (-200) and
// graylist (-400) thresholds.
func topicScoreParams() *pubsub.TopicScoreParams {
	return &pubsub.TopicScoreParams{
		SkipAtomicValidation: true,
		TopicWeight:          1,
		// A zero quantum divides by zero in the score function once a
		// peer is grafted, whatever the weight.
		TimeInMeshQuantum:              time.Second,
		TimeInMeshWeight:               0.01,
		TimeInMeshCap:                  3600,
		FirstMessageDeliveriesWeight:   1,
		FirstMessageDeliveriesDecay:    0.5,
		FirstMessageDeliveriesCap:      10,
		InvalidMessageDeliveriesWeight: -100,
		InvalidMessageDeliveriesDecay:  0.5,
	}
}

// bootstrapScore is the application score of a configured bootstrap peer: at
// AcceptPXThreshold, so the peers it hands on when it prunes are taken from
// the first heartbeat (others earn that score by time in the mesh and first
// deliveries).
const bootstrapScore = 10

func (n *Node) scoreParams() *pubsub.PeerScoreParams {
	return &pubsub.PeerScoreParams{
		// Ads topics are added as they are joined (Topic.SetScoreParams).
		Topics:            map[string]*pubsub.TopicScoreParams{TopicModels: topicScoreParams()},
		AppSpecificScore:  n.appScore,
		AppSpecificWeight: 1,
		// Many honest nodes share an address on a testnet or behind one NAT; only
		// a crowd from one IP is penalised.
		IPColocationFactorWeight:    -1,
		IPColocationFactorThreshold: 20,
		IPColocationFactorWhitelist: []*net.IPNet{{IP: net.IPv4(127, 0, 0, 0), Mask: net.CIDRMask(8, 32)}},
		BehaviourPenaltyWeight:      -1,
		BehaviourPenaltyDecay:       0.9,
		DecayInterval:               time.Second,
		DecayToZero:                 0.01,
		RetainScore:                 10 * time.Minute,
	}
}

func (n *Node) appScore(p peer.ID) float64 {
	if n.bootstrap[p] { // written before gossipsub starts, read-only after
		return bootstrapScore
	}
	return 0
}

func scoreThresholds() *pubsub.PeerScoreThresholds {
	return &pubsub.PeerScoreThresholds{
		GossipThreshold:             -100,
		PublishThreshold:            -200,
		GraylistThreshold:           -400,
		AcceptPXThreshold:           10,
		OpportunisticGraftThreshold: 5,
	}
}

// ModelKey is the DHT key under which providers of model are recorded:
// CIDv1(raw, sha2-256("cocoon/model/v1/" + model)).
func ModelKey(model string) cid.Cid {
	h, _ := mh.Sum([]byte("cocoon/model/v1/"+model), mh.SHA2_256, -1) // cannot fail for sha2-256
	return cid.NewCidV1(cid.Raw, h)
}

// Provide announces that this node serves model, now and every ReprovideInterval
// until Close or Unprovide.
func (n *Node) Provide(ctx context.Context, model string) error {
	key := ModelKey(model)
	n.mu.Lock()
	n.provided[model] = key
	n.mu.Unlock()
	if err := n.DHT.Provide(ctx, key, true); err != nil {
		return fmt.Errorf("provide %s: %w", model, err)
	}
	return nil
}

// Unprovide stops re-announcing model; existing records expire on their own.
func (n *Node) Unprovide(model string) {
	n.mu.Lock()
	delete(n.provided, model)
	n.mu.Unlock()
}

// FindProviders looks up at most max peers that provide model.
func (n *Node) FindProviders(ctx context.Context, model string, max int) ([]peer.AddrInfo, error) {
	var out []peer.AddrInfo
	for ai := range n.DHT.FindProvidersAsync(ctx, ModelKey(model), max) {
		out = append(out, ai)
	}
	if len(out) == 0 && ctx.Err() != nil {
		return nil, fmt.Errorf("find providers of %s: %w", model, ctx.Err())
	}
	return out, nil
}

func (n *Node) reprovideLoop(ctx context.Context) {
	defer n.wg.Done()
	t := time.NewTicker(n.cfg.ReprovideInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n.mu.Lock()
		keys := make(map[string]cid.Cid, len(n.provided))
		for m, k := range n.provided {
			keys[m] = k
		}
		n.mu.Unlock()
		for m, k := range keys {
			pctx, cancel := context.WithTimeout(ctx, time.Minute)
			if err := n.DHT.Provide(pctx, k, true); err != nil {
				n.log.Warn("re-provide failed", "model", m, "err", err)
			}
			cancel()
		}
	}
}

// Peers lists the peers this node has open connections to.
func (n *Node) Peers() []peer.ID { return n.Host.Network().Peers() }

// Close stops the DHT, gossipsub, mDNS and the host, waits for its goroutines, and
// saves the peers file. It is safe to call more than once.
func (n *Node) Close() error {
	n.close.Do(func() {
		n.cancel()
		n.leaveAll()
		if n.mdns != nil {
			n.mdns.Close()
		}
		n.wg.Wait()
		if n.cfg.PeersFile != "" { // the peers of this run, while still connected
			n.refreshRemembered()
			n.savePeers()
		}
		n.errs = errors.Join(n.DHT.Close(), n.Host.Close())
	})
	return n.errs
}

type mdnsNotifee struct{ n *Node }

func (m mdnsNotifee) HandlePeerFound(ai peer.AddrInfo) {
	if ai.ID == m.n.Host.ID() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.n.Host.Connect(ctx, ai); err != nil {
		m.n.log.Debug("mdns peer unreachable", "peer", ai.ID, "err", err)
	}
}
