package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"

	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/market/service"
	"github.com/cocoon-network/cocoon/node/activity"
	"github.com/cocoon-network/cocoon/node/gateway"
	"github.com/cocoon-network/cocoon/node/metrics"
	"github.com/cocoon-network/cocoon/p2p"
	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/settle"
)

// activityKeep is how many finished jobs the status page lists.
const activityKeep = 50

// Options are the parts of a node that do not come from its config file.
type Options struct {
	// Host replaces the libp2p host built from the config (testnet uses mocknet).
	Host    host.Host
	Logger  *slog.Logger // nil: built from cfg.Log, writing to stderr
	Version string
	// Ledger replaces the chain of [settle] (testnet shares one in-process dev
	// ledger, a simulated chain, between its nodes).
	Ledger settle.Ledger
}

// Node is one running cocoon node.
type Node struct {
	Config  Config
	P2P     *p2p.Node
	API     *gateway.Server
	APIAddr string // the address the API really listens on (port 0 resolved)
	Token   string
	Log     *slog.Logger
	// Backend runs this node's own inference; nil on a client-only node.
	Backend *runtime.Limited
	GPUs    []runtime.GPU
	// GPUReason says why GPUs is empty.
	GPUReason string

	// Store is the channel store; Wallet the node's TON wallet and channel key
	// (nil when <datadir>/wallet.key is absent: the node then buys and sells
	// nothing); Chain the [settle] chain (nil for chain none).
	Store  *settle.Store
	Wallet *settle.Wallet
	Chain  *settle.OnChain
	// Payer pays this node's channels to workers; Payee takes vouchers on the
	// channels clients opened to it. Both nil without a wallet.
	Payer *settle.Payer
	Payee *settle.Payee
	// Payers finds the channel that pays each worker.
	Payers *service.Payers
	// Client buys inference on the network; every node runs one, and /v1 goes
	// through it for every model the node does not run itself.
	Client *service.Client
	// Worker sells Backend's priced models; nil unless the node serves models,
	// [market] prices some of them and a wallet exists.
	Worker *service.Worker
	// Metrics are served at /metrics; Activity feeds the status page at /. Both
	// observe the market services.
	Metrics  *metrics.Metrics
	Activity *activity.Journal

	version string
	started time.Time
	apiDone chan struct{}
	once    sync.Once
	errs    error
}

// NewLogger builds the logger a config asks for.
func NewLogger(c LogConfig, w io.Writer) *slog.Logger {
	var lvl slog.Level
	lvl.UnmarshalText([]byte(c.Level)) // validated by Config.Validate
	opts := &slog.HandlerOptions{Level: lvl}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// New starts a node from cfg: its libp2p host, DHT and gossip, and its local API.
// Close stops everything it started.
func New(ctx context.Context, cfg Config, opt Options) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := opt.Logger
	if log == nil {
		log = NewLogger(cfg.Log, os.Stderr)
	}
	n := &Node{Config: cfg, Log: log, version: opt.Version, started: time.Now(), apiDone: make(chan struct{})}
	if n.version == "" {
		n.version = "dev"
	}
	tok, err := LoadToken(cfg.Datadir)
	if err != nil {
		return nil, err
	}
	n.Token = tok
	pcfg := p2p.Config{
		Listen:            cfg.P2P.Listen,
		Bootstrap:         cfg.P2P.Bootstrap,
		MDNS:              cfg.P2P.MDNS,
		DHTMode:           cfg.P2P.DHTMode,
		NATPortMap:        cfg.P2P.NATPortMap,
		RelayService:      cfg.P2P.RelayService,
		ReprovideInterval: cfg.P2P.ReprovideInterval.Duration,
		Limits: p2p.Limits{
			MaxMemoryMB: cfg.P2P.Limits.MaxMemoryMB, MaxFDs: cfg.P2P.Limits.MaxFDs,
			ConnsLow: cfg.P2P.Limits.ConnsLow, ConnsHigh: cfg.P2P.Limits.ConnsHigh,
		},
		Host:   opt.Host,
		Logger: log,
	}
	if cfg.Datadir != "" {
		pcfg.PeersFile = filepath.Join(cfg.Datadir, PeersFile)
	}
	if opt.Host == nil {
		if pcfg.Identity, err = LoadIdentity(filepath.Join(cfg.Datadir, IdentityFile)); err != nil {
			return nil, err
		}
	}
	// Bind the API first: a port in use should fail before the node joins the network.
	l, err := net.Listen("tcp", cfg.API.Listen)
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Err != nil {
			err = oe.Err // "bind: address already in use", without repeating the address
		}
		return nil, fmt.Errorf("api.listen: cannot listen on %s: %w", cfg.API.Listen, err)
	}
	if n.P2P, err = p2p.New(ctx, pcfg); err != nil {
		l.Close()
		return nil, err
	}
	n.GPUs, n.GPUReason = runtime.DetectGPUs()
	// From here on, a failure closes what was started so far.
	fail := func(err error) (*Node, error) {
		l.Close()
		n.closeParts()
		return nil, err
	}
	n.Activity = activity.New(activityKeep)
	n.Metrics = metrics.New(metrics.Sources{
		Peers: func() int { return len(n.P2P.Host.Network().Peers()) },
		Book: func() market.BookStats {
			if n.Client == nil {
				return market.BookStats{}
			}
			return n.Client.Book().Stats()
		},
	})
	if err := n.startMarket(ctx, cfg, opt); err != nil {
		return fail(err)
	}
	n.APIAddr = l.Addr().String()
	// Every node's /v1 buys on the network through its market client, except
	// the models this node runs itself (gateway.Local).
	local := gateway.Local{Worker: n.P2P.Host.ID().String()}
	if n.Backend != nil {
		local.Backend = n.Backend
		local.TEE = cfg.Enclave.Attester.Tier()
	}
	n.API = gateway.New(tok, n, log,
		gateway.WithV1(n.Client, local),
		gateway.WithMetrics(n.Metrics.Handler()))
	go func() {
		defer close(n.apiDone)
		if err := n.API.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("api stopped", "err", err)
		}
	}()
	if err := writeFileAtomic(filepath.Join(cfg.Datadir, APIAddrFile), []byte(n.APIAddr+"\n"), 0o644); err != nil {
		n.Close()
		return nil, err
	}
	log.Info("node started", "peer", n.P2P.Host.ID(), "addrs", n.P2P.Host.Addrs(), "api", "http://"+n.APIAddr)
	return n, nil
}

// Status implements gateway.Info.
func (n *Node) Status() gateway.Status {
	h := n.P2P.Host
	addrs := make([]string, 0, len(h.Addrs()))
	for _, a := range h.Addrs() {
		addrs = append(addrs, a.String()+"/p2p/"+h.ID().String())
	}
	st := gateway.Status{
		PeerID:        h.ID().String(),
		Addrs:         addrs,
		Peers:         len(h.Network().Peers()),
		UptimeSeconds: time.Since(n.started).Seconds(),
		Version:       n.version,
		GPUReason:     n.GPUReason,
		Models:        []gateway.Model{},
		GPUs:          []gateway.GPU{},
	}
	r := n.P2P.Reachability()
	st.Reachability = gateway.Reachability{Verdict: r.Verdict, Relays: []string{}, Direct: r.Direct, Relayed: r.Relayed,
		HolePunches: r.HolePunches, HolePunchFailures: r.HolePunchFailures}
	for _, id := range r.Relays {
		st.Reachability.Relays = append(st.Reachability.Relays, id.String())
	}
	for _, g := range n.GPUs {
		st.GPUs = append(st.GPUs, gateway.GPU{Name: g.Name, VRAMBytes: g.VRAMBytes, Driver: g.Driver})
	}
	if n.Backend != nil {
		rep, _ := n.Backend.Unwrap().(runtime.OffloadReporter)
		for _, m := range n.Backend.Models() {
			gm := gateway.Model{ID: m.ID, Digest: m.Digest, ContextLength: m.ContextLength}
			if rep != nil {
				if o, ok := rep.Offload(m.ID); ok {
					gm.Offload = &o
				}
			}
			st.Models = append(st.Models, gm)
		}
		st.Slots.Total, st.Slots.Free, st.Slots.Queued = n.Backend.Slots()
	}
	return st
}

// Peers implements gateway.Info: the peers with open connections.
func (n *Node) Peers() []gateway.Peer {
	h := n.P2P.Host
	var out []gateway.Peer
	for _, p := range h.Network().Peers() {
		gp := gateway.Peer{ID: p.String(), LatencyMS: float64(h.Peerstore().LatencyEWMA(p).Microseconds()) / 1000}
		for _, c := range h.Network().ConnsToPeer(p) {
			gp.Addrs = append(gp.Addrs, c.RemoteMultiaddr().String())
			if gp.Direction == "" || c.Stat().Direction == network.DirOutbound {
				gp.Direction = c.Stat().Direction.String()
			}
		}
		out = append(out, gp)
	}
	return out
}

// Close stops everything New started, in reverse order: the API, the worker
// service, the backend, the client service, the channel store and the libp2p
// node. It is safe to call more than once.
func (n *Node) Close() error {
	n.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		if n.API != nil {
			n.errs = errors.Join(n.errs, n.API.Shutdown(ctx))
			<-n.apiDone
		}
		n.closeParts()
		os.Remove(filepath.Join(n.Config.Datadir, APIAddrFile))
		n.Log.Info("node stopped")
	})
	return n.errs
}

// closeParts stops what startMarket and p2p started, in reverse order.
func (n *Node) closeParts() {
	if n.Worker != nil {
		n.errs = errors.Join(n.errs, n.Worker.Close())
	}
	if n.Backend != nil {
		n.errs = errors.Join(n.errs, n.Backend.Close())
	}
	if n.Client != nil {
		n.errs = errors.Join(n.errs, n.Client.Close())
	}
	if n.Store != nil {
		n.errs = errors.Join(n.errs, n.Store.Close())
	}
	n.errs = errors.Join(n.errs, n.P2P.Close())
}
