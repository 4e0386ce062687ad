package service

import (
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"

	"github.com/cocoon-network/cocoon/enclave"
	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/p2p"
	"github.com/cocoon-network/cocoon/runtime"
)

// Defaults of the client service.
const (
	DefaultFindTimeout = 10 * time.Second // the DHT lookup on a cold ad book
	DefaultFindMax     = 8                // providers asked for by that lookup
	bookPruneInterval  = 30 * time.Second

	// A job stream silent for DefaultProbeAfter gets its worker pinged over the
	// connection; no answer within DefaultProbeTimeout (or 4 round trips, if
	// longer) closes the connection as dead (see ClientConfig.ProbeAfter).
	DefaultProbeAfter   = 500 * time.Millisecond
	DefaultProbeTimeout = time.Second
)

// ClientConfig configures a Client.
type ClientConfig struct {
	// Node is the libp2p node the client uses: its ads topic feeds the book (the
	// service installs the topic validator), its host opens job streams, its DHT
	// finds providers on a cold book.
	Node *p2p.Node
	// Payer returns the payer of the client's channel to a worker
	// (SettlePayers.Payer). A worker without one is not tried.
	Payer func(c market.Candidate) (market.Payer, error)
	// Attestations verifies workers; nil: one is started with Verifier.
	Attestations *Attestations
	Verifier     *enclave.Verifier
	// Policy is the default of Generate: the TEE kinds selected and the maximum
	// prices (its Model is taken from each request). A worker is bought from
	// only when both Policy.TEE and the verifier's policy accept its kind; a
	// node sets the first from the second (enclave.Policy.Kinds).
	Policy market.Policy
	// MaxAttempts bounds the workers tried per request (0: 3).
	MaxAttempts int
	// FindTimeout bounds the DHT lookup on a cold ad book (0: DefaultFindTimeout).
	FindTimeout time.Duration
	// ProbeAfter and ProbeTimeout find a worker that died without closing its
	// connection (a killed process behind QUIC, a pulled cable): once a job
	// stream has been silent for ProbeAfter, the worker is pinged over the
	// connection, and no answer within ProbeTimeout (or four measured round
	// trips, if longer) closes the connection, which fails the attempt over at
	// once and marks the worker down, instead of waiting out the job's phase
	// deadline (10 s for Accept, 20 s between chunks). 0: DefaultProbeAfter,
	// DefaultProbeTimeout; a negative ProbeAfter turns probing off.
	ProbeAfter   time.Duration
	ProbeTimeout time.Duration
	Options      market.RunOptions
	// Rand seeds the selector's choices (nil: random).
	Rand *rand.Rand
	// Observer, when set, learns of every job attempt, voucher and attestation
	// (the node's metrics and status page).
	Observer market.Observer
	Logger   *slog.Logger
	// Models are the models whose ads topics the client joins at once and
	// never leaves (a node's served models and its market.models); any other
	// model's topic is joined on the first request for it and left after
	// TopicIdle without one (0: DefaultTopicIdle).
	Models    []string
	TopicIdle time.Duration
	// Now is the clock of the topics' idle time and the ad rate limits (nil:
	// time.Now).
	Now func() time.Time
}

// Client buys inference on the network: it keeps the ad book from the
// ads topic, selects workers, verifies their attestation before a prompt
// leaves, pays through its channels and fails over mid-stream. It implements
// runtime.Backend, so the gateway serves it like a local backend.
//
// Any number of its jobs run at once on one worker, paid on one channel
// (settle.PayerLane); it spreads concurrent requests across the selected
// workers by the share of each one's slots its own jobs already hold.
//
// A worker whose connection fails is skipped until it shows it is back
// (Selector.MarkDown): when the last connection to it closes (a killed process
// over TCP, the p2p liveness check, a probe of a silent job stream), when a
// dial to it fails, and when it cannot be connected to from the DHT.
type Client struct {
	cfg   ClientConfig
	node  *p2p.Node
	book  *market.Book
	sel   *market.Selector
	att   *Attestations
	ownAt bool
	log   *slog.Logger
	nb    *network.NotifyBundle
	// askedNames counts the peers asked for model names (asknames.go), each
	// once (askedPeer); guarded by mu.
	askedNames int
	askedPeer  map[peer.ID]bool

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	inflight map[peer.ID]int  // this client's open job streams per worker
	found    map[peer.ID]bool // providers found in the DHT

	now     func() time.Time
	topicMu sync.Mutex
	topics  topics
	rates   *limiter
	gate    *AdGate
	cat     catalogue
}

// NewClient starts the client on cfg.Node.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.Node == nil || cfg.Payer == nil {
		return nil, errors.New("market: client service needs a node and a payer")
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 3
	}
	if cfg.FindTimeout <= 0 {
		cfg.FindTimeout = DefaultFindTimeout
	}
	if cfg.ProbeAfter == 0 {
		cfg.ProbeAfter = DefaultProbeAfter
	}
	if cfg.ProbeTimeout <= 0 {
		cfg.ProbeTimeout = DefaultProbeTimeout
	}
	if cfg.TopicIdle <= 0 {
		cfg.TopicIdle = DefaultTopicIdle
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.Options.Logger == nil {
		cfg.Options.Logger = log
	}
	c := &Client{cfg: cfg, node: cfg.Node, book: market.NewBook(nil), log: log.With("subsys", "market"),
		inflight: make(map[peer.ID]int), found: make(map[peer.ID]bool), now: cfg.Now,
		topics: topics{pinned: map[string]bool{}, asked: map[string]time.Time{}},
		rates:  newLimiter(), cat: catalogue{ads: map[peer.ID]catalogueEntry{}}}
	c.sel = &market.Selector{Book: c.book, Rand: cfg.Rand}
	c.gate = newAdGate(cfg.Node, c.book, c.rates, c.now, c.log, c.blocked)
	c.att = cfg.Attestations
	if c.att == nil {
		c.att = NewAttestations(cfg.Node.Host, AttestConfig{Verifier: cfg.Verifier, Observer: cfg.Observer, Logger: cfg.Logger})
		c.ownAt = true
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	cfg.Node.SetAdsValidator(c.gate.Validate)
	cfg.Node.SetCatalogueValidator(c.validateCatalogue)
	if err := c.pin(cfg.Models); err != nil {
		cfg.Node.SetAdsValidator(nil)
		cfg.Node.SetCatalogueValidator(nil)
		if c.ownAt {
			c.att.Close()
		}
		return nil, fmt.Errorf("market: client service: %w", err)
	}
	c.askedPeer = map[peer.ID]bool{}
	cfg.Node.Host.SetStreamHandler(p2p.ProtocolModels, c.serveNames)
	c.nb = &network.NotifyBundle{DisconnectedF: c.disconnected, ConnectedF: c.connected}
	cfg.Node.Host.Network().Notify(c.nb)
	for _, conn := range cfg.Node.Host.Network().Conns() { // those that came before the service
		c.connected(cfg.Node.Host.Network(), conn)
	}
	c.wg.Add(1)
	go c.pruneLoop()
	return c, nil
}

// disconnected marks a worker down when the last connection to it closes: it
// closed without this client asking, so it is dead or unreachable until it
// publishes a new ad (a live worker does every AdInterval), and dialling it
// again would cost the next caller a dial timeout (5 s on a local address).
func (c *Client) disconnected(n network.Network, conn network.Conn) {
	p := conn.RemotePeer()
	if n.Connectedness(p) == network.Connected {
		return
	}
	c.mu.Lock()
	found := c.found[p]
	c.mu.Unlock()
	if _, ok := c.book.Get(p); ok || found {
		c.sel.MarkDown(p)
		c.log.Debug("worker disconnected: skipped until its next ad", "peer", p)
	}
}

// block shuts out a flooding peer (AdGate.Block: p2p.BlockTime); blocked logs
// it and drops its catalogue entry, so that none of its models is listed.
func (c *Client) block(p peer.ID, why string) { c.gate.Block(p, why) }

// blocked is the gate's onBlock: what the client does beyond the gate's own.
func (c *Client) blocked(p peer.ID, why string) {
	c.log.Warn("peer blocked", "peer", p, "reason", why, "for", p2p.BlockTime)
	c.cat.mu.Lock()
	delete(c.cat.ads, p)
	c.cat.mu.Unlock()
}

func (c *Client) pruneLoop() {
	defer c.wg.Done()
	t := time.NewTicker(bookPruneInterval)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
			c.book.Prune()
			c.rates.prune(c.now())
			c.leaveIdle()
		}
	}
}

// Book is the client's ad book.
func (c *Client) Book() *market.Book { return c.book }

// Selector is the client's selector (latency and reputation of the workers).
func (c *Client) Selector() *market.Selector { return c.sel }

// Close implements runtime.Backend: it stops taking ads (the validator is
// removed) and waits for its goroutines. Streams still open keep running.
func (c *Client) Close() error {
	c.node.SetAdsValidator(nil)
	c.node.SetCatalogueValidator(nil)
	c.node.Host.Network().StopNotify(c.nb)
	c.node.Host.RemoveStreamHandler(p2p.ProtocolModels)
	c.cancel()
	c.wg.Wait()
	if c.ownAt {
		return c.att.Close()
	}
	return nil
}

// Generate implements runtime.Backend with the configured Policy.
func (c *Client) Generate(ctx context.Context, req runtime.Request) (runtime.Stream, error) {
	pol := c.cfg.Policy
	pol.Model = req.Model
	s, err := c.GeneratePolicy(ctx, req, pol)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// candidates selects the workers for pol, from the book or, when it has none,
// from the DHT's providers of the model.
func (c *Client) candidates(ctx context.Context, pol market.Policy) []market.Candidate {
	self := c.node.Host.ID()
	keep := func(cs []market.Candidate) []market.Candidate {
		var out []market.Candidate
		for _, cd := range cs {
			if cd.Peer == self {
				continue
			}
			if _, err := c.cfg.Payer(cd); err != nil {
				c.log.Debug("worker skipped", "peer", cd.Peer, "err", err)
				continue
			}
			out = append(out, cd)
		}
		return out
	}
	c.ask(pol.Model)
	if cs := keep(c.sel.Select(pol)); len(cs) > 0 {
		return cs
	}
	if len(c.sel.DownPeers(pol)) > 0 {
		// The book's workers for the model are down: the DHT would mostly name
		// them again, and GeneratePolicy answers at once that none is available.
		return nil
	}
	// Cold book: ask the DHT, connect to the providers (which also brings their
	// next ads), and try them without an ad; the job's Accept then says the price
	// and the attestation says the TEE.
	fctx, cancel := context.WithTimeout(ctx, c.cfg.FindTimeout)
	defer cancel()
	ais, err := c.node.FindProviders(fctx, pol.Model, DefaultFindMax)
	if err != nil {
		c.log.Debug("find providers", "model", pol.Model, "err", err)
	}
	var cs []market.Candidate
	var unknown []peer.ID // connected providers whose ad has not come yet
	for _, ai := range ais {
		if ai.ID == self || c.sel.Down(ai.ID) {
			continue
		}
		c.node.Host.Peerstore().AddAddrs(ai.ID, ai.Addrs, peerstore.TempAddrTTL)
		if err := c.node.Host.Connect(fctx, ai); err != nil {
			c.log.Debug("connect provider", "peer", ai.ID, "err", err)
			if fctx.Err() == nil {
				c.sel.MarkDown(ai.ID)
			}
			continue
		}
		c.mu.Lock()
		c.found[ai.ID] = true
		c.mu.Unlock()
		if ad, ok := c.book.Get(ai.ID); ok {
			if o, ok := ad.Offer(pol.Model); ok && pol.Allows(ad.TEE.Kind) && pol.Serves(o) == nil {
				cs = append(cs, market.Candidate{Peer: ai.ID, Ad: ad, Offer: o})
			}
			continue
		}
		if pol.NeedsAd() {
			unknown = append(unknown, ai.ID) // a job that uses a capability goes only where an ad offers it
			continue
		}
		if _, err := c.cfg.Payer(market.Candidate{Peer: ai.ID}); err != nil {
			// Only its ad says how to pay it (its channel key): the ad comes
			// now that this client has joined the model's topic.
			unknown = append(unknown, ai.ID)
			continue
		}
		cs = append(cs, market.Candidate{Peer: ai.ID})
	}
	if len(cs) == 0 && len(unknown) > 0 {
		cs = c.awaitOffers(fctx, pol, unknown)
	}
	return keep(cs)
}

// coldAdWait bounds how long a request that needs what only an ad says (a
// response format, how to pay the worker) waits for the ads of providers it
// has just connected to; a worker re-publishes when it sees a new
// subscriber on its model's topic.
const coldAdWait = 3 * time.Second

// awaitOffers waits (up to coldAdWait, and ctx) for an ad of one of peers
// that offers what pol asks; a worker publishes one when a peer connects.
func (c *Client) awaitOffers(ctx context.Context, pol market.Policy, peers []peer.ID) []market.Candidate {
	ctx, cancel := context.WithTimeout(ctx, coldAdWait)
	defer cancel()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		var cs []market.Candidate
		for _, p := range peers {
			if ad, ok := c.book.Get(p); ok {
				if o, ok := ad.Offer(pol.Model); ok && pol.Allows(ad.TEE.Kind) && pol.Serves(o) == nil {
					cs = append(cs, market.Candidate{Peer: p, Ad: ad, Offer: o})
				}
			}
		}
		if len(cs) > 0 {
			return cs
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// hold counts a job of this client in on p; the returned func counts it out.
func (c *Client) hold(p peer.ID) func() {
	c.mu.Lock()
	c.inflight[p]++
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		if c.inflight[p]--; c.inflight[p] <= 0 {
			delete(c.inflight, p)
		}
		c.mu.Unlock()
	}
}

// InFlight returns how many of this client's job streams to p are open
// (including those whose worker has not yet closed its side).
func (c *Client) InFlight(p peer.ID) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inflight[p]
}

// load is the share of cd's slots taken, as far as this client knows: the
// busier of its own jobs in flight there (fresh) and the slots its last ad
// said were taken by anyone (up to an ad interval old), over the slots the ad
// announces (1 without an ad).
func (c *Client) load(cd market.Candidate) float64 {
	c.mu.Lock()
	n := c.inflight[cd.Peer]
	c.mu.Unlock()
	slots := 1
	if cd.Ad != nil && cd.Ad.Capacity.SlotsTotal > 0 {
		slots = int(cd.Ad.Capacity.SlotsTotal)
		n = max(n, slots-int(min(cd.Ad.Capacity.SlotsFree, cd.Ad.Capacity.SlotsTotal)))
	}
	return float64(n) / float64(slots)
}

// GeneratePolicy runs req on the network under pol and returns its stream once
// the first text has arrived (or the answer ended): the stream's Header names
// the worker that started it. Errors before any text are returned here, wrapping
// runtime.ErrUnknownModel when no worker offers the model.
func (c *Client) GeneratePolicy(ctx context.Context, req runtime.Request, pol market.Policy) (*NetStream, error) {
	pol.Model = req.Model
	pol.Request = &req
	cands := c.candidates(ctx, pol)
	if len(cands) == 0 {
		if err := c.lacking(pol); err != nil {
			return nil, err
		}
	}
	if len(cands) == 0 {
		return nil, c.noWorker(pol)
	}
	c.spread(cands)
	rctx, cancel := context.WithCancel(ctx)
	s := &NetStream{cancel: cancel, events: make(chan streamEvent), done: make(chan struct{})}
	fo := c.failover(pol)
	job := market.Job{ID: market.NewJobID(), Request: req, MaxPrice: pol.MaxPrice}
	go func() {
		defer close(s.done)
		attempts, err := fo.Run(rctx, cands, job, func(a market.Attempt, ch market.Chunk) error {
			select {
			case s.events <- streamEvent{chunk: ch, by: a}:
				return nil
			case <-rctx.Done():
				return rctx.Err()
			}
		})
		s.finish(attempts, err)
	}()
	// Wait for the first text or the end, so that the caller learns the worker
	// (headers) or the failure (status) before answering.
	select {
	case ev := <-s.events:
		s.first = &ev
		s.setWorker(ev.by)
		return s, nil
	case <-s.done:
		if s.err != nil {
			cancel()
			return nil, s.err
		}
		if len(s.attempts) > 0 { // an answer without text: the worker that ended it
			s.setWorker(s.attempts[len(s.attempts)-1])
		}
		return s, nil
	case <-ctx.Done():
		cancel()
		<-s.done
		return nil, ctx.Err()
	}
}

// noWorker is the error of an empty selection for pol: the workers found
// down, or none offering the model.
func (c *Client) noWorker(pol market.Policy) error {
	if down := c.sel.DownPeers(pol); len(down) > 0 {
		errs := make([]error, len(down))
		for i, p := range down {
			errs[i] = fmt.Errorf("worker %s: %w: its connection failed; skipped until its next ad", p, market.ErrUnreachable)
		}
		return &market.NoWorkerError{Errs: errs}
	}
	return fmt.Errorf("%w: no worker offers %q under the policy", runtime.ErrUnknownModel, pol.Model)
}

// spread orders concurrent jobs' candidates: the worker whose slots are
// least taken first, keeping the selector's order among equals.
func (c *Client) spread(cands []market.Candidate) {
	loads := make(map[peer.ID]float64, len(cands))
	for _, cd := range cands {
		loads[cd.Peer] = c.load(cd)
	}
	slices.SortStableFunc(cands, func(a, b market.Candidate) int { return cmp.Compare(loads[a.Peer], loads[b.Peer]) })
}

// failover runs a job under pol: it dials, pays and verifies each worker
// it tries.
func (c *Client) failover(pol market.Policy) *market.Failover {
	return &market.Failover{
		Dial: func(ctx context.Context, cd market.Candidate) (io.ReadWriteCloser, error) {
			release := c.hold(cd.Peer)
			st, err := c.node.NewStream(ctx, cd.Peer, p2p.ProtocolJob)
			if err != nil {
				release()
				return nil, fmt.Errorf("open job stream: %w", err)
			}
			js := &jobStream{Stream: st, release: release, wg: &c.wg, eof: make(chan struct{})}
			c.watch(js, cd.Peer)
			return js, nil
		},
		Payer: c.cfg.Payer,
		Verify: func(ctx context.Context, cd market.Candidate) (string, error) {
			return c.verify(ctx, cd, pol) // the tier comes back with each chunk's Attempt
		},
		Selector:    c.sel,
		MaxAttempts: c.cfg.MaxAttempts,
		Options:     c.cfg.Options,
		Observer:    c.cfg.Observer,
	}
}

// Embed implements runtime.Embedder with the configured Policy: the
// embeddings are bought from a worker whose ad offers them for the model,
// at its prompt price, failing over as a generation does (each worker
// computes every vector anew). CostNanoTON is what the client paid, all
// attempts together.
func (c *Client) Embed(ctx context.Context, req runtime.EmbedRequest) (runtime.Embeddings, error) {
	if err := req.Check(); err != nil {
		return runtime.Embeddings{}, err
	}
	pol := c.cfg.Policy
	pol.Model, pol.Embed = req.Model, true
	cands := c.candidates(ctx, pol)
	if len(cands) == 0 {
		if err := c.lacking(pol); err != nil {
			return runtime.Embeddings{}, err
		}
		return runtime.Embeddings{}, c.noWorker(pol)
	}
	c.spread(cands)
	job := market.Job{ID: market.NewJobID(), Request: runtime.Request{Model: req.Model}, MaxPrice: pol.MaxPrice, Embed: req.Inputs}
	vectors := make([][]float32, len(req.Inputs))
	attempts, err := c.failover(pol).Run(ctx, cands, job, func(_ market.Attempt, ch market.Chunk) error {
		vectors[ch.Index] = ch.Vector // Run checked the index
		return nil
	})
	var paid uint64
	for _, a := range attempts {
		paid += a.Receipt.Paid
	}
	if err != nil {
		return runtime.Embeddings{CostNanoTON: &paid}, fmt.Errorf("%w: %w", runtime.ErrUpstream, err)
	}
	last := attempts[len(attempts)-1].Receipt
	if last.PromptTokens > math.MaxInt32 {
		return runtime.Embeddings{CostNanoTON: &paid}, fmt.Errorf("%w: the worker reported %d tokens", runtime.ErrUpstream, last.PromptTokens)
	}
	return runtime.Embeddings{Vectors: vectors, PromptTokens: int(last.PromptTokens), CostNanoTON: &paid}, nil
}

// lacking explains an empty selection for pol whose cause is the request:
// workers offer the model, but none has a capability the job uses. The
// error is the runtime.FieldError naming the field (a 400 for the caller),
// nil when pol without its capabilities selects no worker either.
func (c *Client) lacking(pol market.Policy) error {
	plain := pol
	plain.Request, plain.Embed = nil, false
	cands := c.sel.Select(plain)
	if len(cands) == 0 {
		return nil
	}
	err := pol.Serves(cands[0].Offer)
	if err == nil {
		return nil
	}
	var fe *runtime.FieldError
	if errors.As(err, &fe) {
		return &runtime.FieldError{Field: fe.Field, Msg: fmt.Sprintf("no worker on the network offers it for %q (%s)", pol.Model, fe.Msg)}
	}
	return err
}

// verify checks cd's worker before a prompt leaves: its kind must be one pol
// selects and one the verifier's policy accepts (a node sets both from its
// [enclave.policy], so they agree), and what it attests must match its ad. It
// returns the tier to show.
func (c *Client) verify(ctx context.Context, cd market.Candidate, pol market.Policy) (string, error) {
	if cd.Ad != nil && cd.Ad.TEE.Kind == tee.None {
		// Outside any TEE a worker serves no evidence: its ad's word is all
		// there is, and the policy alone decides.
		if !pol.Allows(tee.None) || !c.att.Accepts(tee.None) {
			return "", fmt.Errorf("worker %s has no TEE, and the policy does not accept none: %w", cd.Peer, market.ErrAttestation)
		}
		return tee.None.Tier(), nil
	}
	vd, err := c.att.Verify(ctx, cd.Peer)
	if err != nil {
		return "", err
	}
	if !pol.Allows(vd.Kind) {
		return "", fmt.Errorf("worker %s attested %s, not allowed by the policy: %w", cd.Peer, vd.Kind, market.ErrAttestation)
	}
	if cd.Ad != nil {
		if vd.Kind != cd.Ad.TEE.Kind {
			return "", fmt.Errorf("worker %s attested %s but advertises %s: %w", cd.Peer, vd.Kind, cd.Ad.TEE.Kind, market.ErrAttestation)
		}
		if !sameMeasurement(cd.Ad.TEE.Measurement, vd.Measurement) {
			return "", fmt.Errorf("worker %s attested measurement %s, advertised %x: %w", cd.Peer, vd.Measurement, cd.Ad.TEE.Measurement, market.ErrAttestation)
		}
	}
	return vd.Tier, nil
}

// sameMeasurement compares an advertised measurement with a verdict's hex one;
// for TDX the ad may carry the MRTD alone (the verdict's first field).
func sameMeasurement(ad []byte, verdict string) bool {
	h := hex.EncodeToString(ad)
	if h == verdict {
		return true
	}
	mrtd, _, ok := strings.Cut(verdict, ":")
	return ok && h == mrtd
}
