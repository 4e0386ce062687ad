package service

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	msmux "github.com/multiformats/go-multistream"

	"github.com/cocoon-network/cocoon/enclave"
	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/p2p"
	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

// Defaults of the network services.
const (
	// MinAdGap is the shortest time between two ads of one worker: a capacity change
	// sooner than that is published when the gap has passed.
	MinAdGap = time.Second
	// adPeerDelay is how long after a new connection a worker re-publishes its ad,
	// so that the new peer (subscribed by then) gets it before the next period.
	adPeerDelay = 500 * time.Millisecond
	adPoll      = 100 * time.Millisecond

	DefaultFindTimeout = 10 * time.Second // the DHT lookup on a cold ad book
	DefaultFindMax     = 8                // providers asked for by that lookup
	bookPruneInterval  = 30 * time.Second

	// A job stream silent for DefaultProbeAfter gets its worker pinged over the
	// connection; no answer within DefaultProbeTimeout (or 4 round trips, if
	// longer) closes the connection as dead (see ClientConfig.ProbeAfter).
	DefaultProbeAfter   = 500 * time.Millisecond
	DefaultProbeTimeout = time.Second
)

// SlotReporter is what a Backend may implement to report its capacity in ads;
// runtime.Limited does.
type SlotReporter interface {
	Slots() (total, free, queued int)
}

// WorkerConfig configures a Worker.
type WorkerConfig struct {
	// Node is the libp2p node the service is mounted on: its host carries the job
	// and attestation streams, its ads topic the ads, its DHT the provider records.
	Node *p2p.Node
	// Backend runs the jobs; when it implements SlotReporter (runtime.Limited)
	// the ads carry its slots and queue. The service does not close it.
	Backend runtime.Backend
	// Prices holds the price of every model sold; only the backend's models with a
	// price are advertised and served.
	Prices map[string]market.Price
	// Payee takes the clients' vouchers (SettlePayee over settle's store).
	Payee market.Payee
	// Settlement is how this worker is paid (wallet, channel key, minimum deposit).
	Settlement market.Settlement
	// Channels, when set, reads from the chain a payment channel a client names
	// in Open (LedgerChannels): a channel the worker has not heard of is learnt
	// from its contract (SettlePayee.Learn), and a job on a channel that is not
	// open, not funded or pays another key is rejected with RejectNoChannel. It
	// needs Payee to be a SettlePayee. Nil: only channels added to the store by
	// hand are paid on.
	Channels ChannelLookup
	// TEE is the enclave kind and measurement the ads announce; Attester makes the
	// evidence that proves it (nil serves none: only for TEE kind none).
	TEE      market.TEE
	Attester enclave.Attester
	GPUs     []market.GPU
	// CreditTokens, MaxJobs, Admit, Receipt, MaxPromptBytes and Timeouts are the
	// market.Worker's fields. MaxJobs 0: the slots plus queue of a SlotReporter backend,
	// else no bound.
	CreditTokens   int
	MaxJobs        int
	Admit          func(ctx context.Context, req market.OpenRequest) market.RejectCode
	Receipt        func(ctx context.Context, job market.JobID, u runtime.Usage, cost uint64) ([]byte, error)
	MaxPromptBytes int
	Timeouts       market.Timeouts
	// AdInterval is the re-publication period (0: DefaultAdInterval); AdTTL the
	// validity of each ad (0: DefaultAdTTL).
	AdInterval time.Duration
	AdTTL      time.Duration
	// Attest tunes the attestation service (its Attester is set from above).
	Attest AttestConfig
	// Observer, when set, learns of every job served and voucher accepted.
	Observer market.Observer
	Logger   *slog.Logger
}

// Worker sells a backend's inference on the network: it serves the job
// protocol (one stream per job) and the attestation protocol, publishes a
// capacity ad every AdInterval and when its free slots or queue change, and
// provides every served model in the DHT. Close stops it all.
type Worker struct {
	cfg    WorkerConfig
	node   *p2p.Node
	worker *market.Worker
	att    *Attestations
	log    *slog.Logger
	models []market.ModelOffer
	lat    *latencies // measured TTFT and time per token, for the ads

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	nb     *network.NotifyBundle
	kick   chan struct{}
	peerAt atomic.Int64 // unix nanos when a new peer asks for an ad; 0: none
	forced atomic.Bool  // Republish was called: publish at the next chance

	mu      sync.Mutex
	closed  bool
	seq     uint64
	lastAd  *market.Ad
	jobs    int
	served  uint64
	closeMu sync.Once
}

// NewWorker starts selling on cfg.Node. It fails when the ad it would
// publish does not pass the schema (no priced model, no settlement, ...).
func NewWorker(cfg WorkerConfig) (*Worker, error) {
	if cfg.Node == nil || cfg.Backend == nil || cfg.Payee == nil {
		return nil, errors.New("market: worker service needs a node, a backend and a payee")
	}
	if cfg.AdInterval <= 0 {
		cfg.AdInterval = market.DefaultAdInterval
	}
	if cfg.AdTTL <= 0 {
		cfg.AdTTL = market.DefaultAdTTL
	}
	cfg.AdTTL = cfg.AdTTL.Truncate(time.Second)
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("subsys", "market")
	if cfg.MaxJobs == 0 {
		if sr, ok := cfg.Backend.(SlotReporter); ok {
			total, _, _ := sr.Slots()
			cfg.MaxJobs = total + queueCap(cfg.Backend)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &Worker{cfg: cfg, node: cfg.Node, log: log, ctx: ctx, cancel: cancel, kick: make(chan struct{}, 1), lat: newLatencies()}
	for _, m := range cfg.Backend.Models() {
		p, ok := cfg.Prices[m.ID]
		if !ok {
			continue
		}
		w.models = append(w.models, market.ModelOffer{ID: m.ID, WeightsDigest: m.Digest, ContextLength: uint32(max(m.ContextLength, 0)), Price: p})
	}
	if _, err := w.buildAd(time.Now()).Encode(); err != nil {
		cancel()
		return nil, fmt.Errorf("worker ad: %w", err)
	}
	w.worker = &market.Worker{
		Backend: timedBackend{cfg.Backend, w.lat}, Payee: cfg.Payee, Prices: cfg.Prices, CreditTokens: cfg.CreditTokens,
		Settlement: cfg.Settlement, MaxJobs: cfg.MaxJobs, Admit: cfg.Admit, Receipt: cfg.Receipt,
		MaxPromptBytes: cfg.MaxPromptBytes, Timeouts: cfg.Timeouts, Logger: cfg.Logger, Observer: cfg.Observer,
	}
	if cfg.Channels != nil {
		var sp SettlePayee
		switch p := cfg.Payee.(type) {
		case SettlePayee:
			sp = p
		case *SettlePayee:
			sp = *p
		default:
			cancel()
			return nil, fmt.Errorf("market: worker service: Channels needs a SettlePayee, got %T", cfg.Payee)
		}
		lookup := cfg.Channels
		w.worker.LearnChannel = func(ctx context.Context, addr string) error { return sp.Learn(ctx, lookup, addr) }
	}
	acfg := cfg.Attest
	acfg.Attester = cfg.Attester
	if acfg.Logger == nil {
		acfg.Logger = cfg.Logger
	}
	w.att = NewAttestations(cfg.Node.Host, acfg)
	h := cfg.Node.Host
	h.SetStreamHandler(p2p.ProtocolJob, w.handle)
	w.nb = &network.NotifyBundle{ConnectedF: func(network.Network, network.Conn) {
		w.peerAt.CompareAndSwap(0, time.Now().Add(adPeerDelay).UnixNano())
	}}
	h.Network().Notify(w.nb)
	w.wg.Add(2)
	go w.adLoop()
	go w.provideLoop()
	log.Info("worker service started", "models", len(w.models), "tee", cfg.TEE.Kind, "slots", w.capacity().SlotsTotal)
	return w, nil
}

// queueCap is the queue of a Limited backend (its Slots report only those waiting now).
func queueCap(b runtime.Backend) int {
	if _, ok := b.(*runtime.Limited); ok {
		return runtime.DefaultQueue
	}
	return 0
}

// Attestations returns the service's attestation service (it also verifies
// peers when WorkerConfig.Attest has a Verifier).
func (w *Worker) Attestations() *Attestations { return w.att }

// Ad returns the last ad published, nil before the first.
func (w *Worker) Ad() *market.Ad {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastAd
}

// Served returns how many jobs the service has run to an end, well or not.
func (w *Worker) Served() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.served
}

// Republish asks for an ad now (still at most one per MinAdGap).
func (w *Worker) Republish() {
	w.forced.Store(true)
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

func (w *Worker) handle(s network.Stream) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		s.Reset()
		return
	}
	w.wg.Add(1)
	w.jobs++
	w.mu.Unlock()
	defer w.wg.Done()
	w.Republish()
	ws := newWorkerStream(s)
	err := w.worker.ServePeer(w.ctx, ws, s.Conn().RemotePeer())
	ws.stopReading()
	// A reject is a clean end: Close delivers the Reject frame, where Reset
	// may drop it before the client has read it (the client then sees a reset,
	// not the reject code).
	var rej *market.RejectError
	if err != nil && !errors.As(err, &rej) {
		s.Reset()
	} else {
		s.Close()
	}
	w.mu.Lock()
	w.jobs--
	w.served++
	w.mu.Unlock()
	w.Republish()
}

func (w *Worker) capacity() market.Capacity {
	c := market.Capacity{GPUs: w.cfg.GPUs}
	if sr, ok := w.cfg.Backend.(SlotReporter); ok {
		total, free, queued := sr.Slots()
		c.SlotsTotal, c.SlotsFree, c.QueueLength = uint32(max(total, 1)), uint32(max(free, 0)), uint32(max(queued, 0))
		c.SlotsFree = min(c.SlotsFree, c.SlotsTotal)
		return c
	}
	w.mu.Lock()
	jobs := w.jobs
	w.mu.Unlock()
	total := max(w.cfg.MaxJobs, 1)
	c.SlotsTotal = uint32(total)
	c.SlotsFree = uint32(max(total-jobs, 0))
	return c
}

func (w *Worker) buildAd(now time.Time) *market.Ad {
	models := slices.Clone(w.models)
	for i := range models {
		models[i].TTFT, models[i].TimePerToken = w.lat.p50(models[i].ID)
	}
	return &market.Ad{
		Peer: w.node.Host.ID(), Seq: 1, IssuedAt: now, TTL: w.cfg.AdTTL,
		Models: models, Capacity: w.capacity(), TEE: w.cfg.TEE, Settlement: w.cfg.Settlement,
	}
}

// publish sends a fresh ad. Seq follows the clock in microseconds, so it keeps
// increasing across restarts.
func (w *Worker) publish() {
	now := time.Now()
	ad := w.buildAd(now)
	w.mu.Lock()
	w.seq = max(w.seq+1, uint64(now.UnixMicro()))
	ad.Seq = w.seq
	w.mu.Unlock()
	b, err := ad.Encode()
	if err != nil {
		w.log.Error("encode ad", "err", err)
		return
	}
	ctx, cancel := context.WithTimeout(w.ctx, 5*time.Second)
	defer cancel()
	if err := w.node.PublishAd(ctx, b); err != nil {
		if w.ctx.Err() == nil {
			w.log.Warn("publish ad", "err", err)
		}
		return
	}
	w.mu.Lock()
	w.lastAd = ad
	w.mu.Unlock()
	w.log.Debug("ad published", "seq", ad.Seq, "slots_free", ad.Capacity.SlotsFree, "queue", ad.Capacity.QueueLength)
}

func (w *Worker) adLoop() {
	defer w.wg.Done()
	t := time.NewTicker(adPoll)
	defer t.Stop()
	w.publish()
	last, lastCap := time.Now(), w.capacity()
	for {
		select {
		case <-w.ctx.Done():
			return
		case <-t.C:
		case <-w.kick: // a job started or ended: check sooner
		}
		now := time.Now()
		c := w.capacity()
		capChanged := c.SlotsFree != lastCap.SlotsFree || c.QueueLength != lastCap.QueueLength || c.SlotsTotal != lastCap.SlotsTotal
		due := now.Sub(last) >= w.cfg.AdInterval
		if pa := w.peerAt.Load(); pa != 0 && now.UnixNano() >= pa {
			w.peerAt.Store(0)
			due = true
		}
		if now.Sub(last) >= MinAdGap && w.forced.Swap(false) {
			due = true
		}
		if due || (capChanged && now.Sub(last) >= MinAdGap) {
			w.publish()
			last, lastCap = now, c
		}
	}
}

// provideLoop announces every served model once the DHT has peers, retrying
// failures with a growing pause; p2p re-provides them afterwards.
func (w *Worker) provideLoop() {
	defer w.wg.Done()
	pending := make([]string, 0, len(w.models))
	for _, m := range w.models {
		pending = append(pending, m.ID)
	}
	wait := 200 * time.Millisecond
	for len(pending) > 0 {
		if w.node.DHT.RoutingTable().Size() > 0 {
			var left []string
			for _, id := range pending {
				ctx, cancel := context.WithTimeout(w.ctx, time.Minute)
				err := w.node.Provide(ctx, id)
				cancel()
				if err != nil {
					if w.ctx.Err() != nil {
						return
					}
					w.log.Warn("provide model", "model", id, "err", err)
					left = append(left, id)
					continue
				}
				w.log.Debug("model provided", "model", id)
			}
			pending = left
			if len(pending) == 0 {
				return
			}
			wait = min(wait*2, time.Minute)
		}
		select {
		case <-w.ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// Close stops serving: no new jobs, running jobs are cancelled, ads stop and the
// models are no longer re-provided. It waits for the service's goroutines.
func (w *Worker) Close() error {
	var err error
	w.closeMu.Do(func() {
		w.mu.Lock()
		w.closed = true
		w.mu.Unlock()
		h := w.node.Host
		h.RemoveStreamHandler(p2p.ProtocolJob)
		h.Network().StopNotify(w.nb)
		w.cancel()
		for _, m := range w.models {
			w.node.Unprovide(m.ID)
		}
		err = w.att.Close()
		w.wg.Wait()
		w.log.Info("worker service stopped")
	})
	return err
}

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
	// Policy is the default of Generate: the TEE kinds accepted and the maximum
	// prices (its Model is taken from each request).
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
}

// Client buys inference on the network: it keeps the ad book from the
// ads topic, selects workers, verifies their attestation before a prompt
// leaves, pays through its channels and fails over mid-stream. It implements
// runtime.Backend, so the gateway serves it like a local backend.
//
// One client runs one job at a time per worker (a channel's vouchers must not
// interleave across jobs); concurrent requests to the same worker wait for it.
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

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	locks map[peer.ID]chan struct{}
	found map[peer.ID]bool // providers found in the DHT
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
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.Options.Logger == nil {
		cfg.Options.Logger = log
	}
	c := &Client{cfg: cfg, node: cfg.Node, book: market.NewBook(nil), log: log.With("subsys", "market"),
		locks: make(map[peer.ID]chan struct{}), found: make(map[peer.ID]bool)}
	c.sel = &market.Selector{Book: c.book, Rand: cfg.Rand}
	c.att = cfg.Attestations
	if c.att == nil {
		c.att = NewAttestations(cfg.Node.Host, AttestConfig{Verifier: cfg.Verifier, Observer: cfg.Observer, Logger: cfg.Logger})
		c.ownAt = true
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	cfg.Node.SetAdsValidator(c.validate)
	c.nb = &network.NotifyBundle{DisconnectedF: c.disconnected}
	cfg.Node.Host.Network().Notify(c.nb)
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

// validate is the ads topic validator: the book's checks, with origin the
// gossip message's signer.
func (c *Client) validate(_ context.Context, origin peer.ID, data []byte) pubsub.ValidationResult {
	_, r := c.book.Offer(origin, data)
	switch {
	case r == market.Kept:
		return pubsub.ValidationAccept
	case r.Penalize():
		c.log.Debug("ad rejected", "from", origin, "reason", r)
		return pubsub.ValidationReject
	default:
		return pubsub.ValidationIgnore
	}
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
		}
	}
}

// Book is the client's ad book.
func (c *Client) Book() *market.Book { return c.book }

// Selector is the client's selector (latency and reputation of the workers).
func (c *Client) Selector() *market.Selector { return c.sel }

// Models implements runtime.Backend: every model offered in the book, with the
// largest context length offered.
func (c *Client) Models() []runtime.Model {
	var out []runtime.Model
	idx := map[string]int{}
	for _, a := range c.book.All() {
		for _, m := range a.Models {
			i, ok := idx[m.ID]
			if !ok {
				idx[m.ID] = len(out)
				out = append(out, runtime.Model{ID: m.ID, Digest: m.WeightsDigest, ContextLength: int(m.ContextLength)})
				continue
			}
			out[i].ContextLength = max(out[i].ContextLength, int(m.ContextLength))
			if out[i].Digest != m.WeightsDigest {
				out[i].Digest = "" // workers disagree: no single digest to show
			}
		}
	}
	return out
}

// ModelSummary is what the book says of one model across its workers.
type ModelSummary struct {
	ID            string
	Workers       int
	ContextLength int
	MinPrice      market.Price     // the lowest of each price over the workers
	MaxPrice      market.Price     // the highest of each price
	TEE           []market.TEEKind // the kinds offered, in the order of TEEKind values
}

// Summaries lists every model in the book with its worker count, price range and
// TEE kinds, ordered by model ID.
func (c *Client) Summaries() []ModelSummary {
	by := map[string]*ModelSummary{}
	var ids []string
	for _, a := range c.book.All() {
		for _, m := range a.Models {
			s, ok := by[m.ID]
			if !ok {
				s = &ModelSummary{ID: m.ID, MinPrice: m.Price, MaxPrice: m.Price}
				by[m.ID] = s
				ids = append(ids, m.ID)
			}
			s.Workers++
			s.ContextLength = max(s.ContextLength, int(m.ContextLength))
			s.MinPrice = market.Price{Prompt: min(s.MinPrice.Prompt, m.Price.Prompt), Completion: min(s.MinPrice.Completion, m.Price.Completion)}
			s.MaxPrice = market.Price{Prompt: max(s.MaxPrice.Prompt, m.Price.Prompt), Completion: max(s.MaxPrice.Completion, m.Price.Completion)}
			if !slices.Contains(s.TEE, a.TEE.Kind) {
				s.TEE = append(s.TEE, a.TEE.Kind)
			}
		}
	}
	slices.Sort(ids)
	out := make([]ModelSummary, 0, len(ids))
	for _, id := range ids {
		s := by[id]
		slices.Sort(s.TEE)
		out = append(out, *s)
	}
	return out
}

// ListModels is the hook of openaiapi.Handler for GET /v1/models: the book's
// models with "workers", "price_nanoton_per_1m" (min and max prompt and
// completion prices) and "tee" (the kinds offered; sim is not confidential).
func (c *Client) ListModels(context.Context) ([]openaiapi.Model, error) {
	out := []openaiapi.Model{}
	for _, s := range c.Summaries() {
		tee := make([]string, len(s.TEE))
		for i, k := range s.TEE {
			tee[i] = k.String()
		}
		out = append(out, openaiapi.Model{ID: s.ID, Object: "model", OwnedBy: "cocoon", ContextLength: s.ContextLength,
			Extra: map[string]any{
				"workers": s.Workers,
				"tee":     tee,
				"price_nanoton_per_1m": map[string]any{
					"prompt_min": s.MinPrice.Prompt, "prompt_max": s.MaxPrice.Prompt,
					"completion_min": s.MinPrice.Completion, "completion_max": s.MaxPrice.Completion,
				},
			}})
	}
	return out, nil
}

// Close implements runtime.Backend: it stops taking ads (the validator is
// removed) and waits for its goroutines. Streams still open keep running.
func (c *Client) Close() error {
	c.node.SetAdsValidator(nil)
	c.node.Host.Network().StopNotify(c.nb)
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
			if o, ok := ad.Offer(pol.Model); ok && pol.Allows(ad.TEE.Kind) {
				cs = append(cs, market.Candidate{Peer: ai.ID, Ad: ad, Offer: o})
			}
			continue
		}
		cs = append(cs, market.Candidate{Peer: ai.ID})
	}
	return keep(cs)
}

// lock waits until no other job of this client runs on p; the returned func ends
// the hold.
func (c *Client) lock(ctx context.Context, p peer.ID) (func(), error) {
	c.mu.Lock()
	ch, ok := c.locks[p]
	if !ok {
		ch = make(chan struct{}, 1)
		c.locks[p] = ch
	}
	c.mu.Unlock()
	select {
	case ch <- struct{}{}:
		return func() { <-ch }, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for the running job on %s: %w", p, ctx.Err())
	}
}

// busy reports whether a job of this client holds p now.
func (c *Client) busy(p peer.ID) bool {
	c.mu.Lock()
	ch, ok := c.locks[p]
	c.mu.Unlock()
	return ok && len(ch) > 0
}

func boolCmp(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// jobStream is the client's job stream. Closing it waits (up to jobAckTimeout)
// for the worker to close its side, which the worker does once it has taken the
// last voucher, and only then releases the hold on the worker: vouchers of the
// next job on the channel must not overtake this job's. While it is open, a
// probe (Client.watch) checks that a silent worker is still there.
type jobStream struct {
	network.Stream
	once    sync.Once
	release func()

	heard      atomic.Int64 // unix nanos of the last bytes read, or of the open
	stopProbe  context.CancelFunc
	probeEnded chan struct{}
}

func (s *jobStream) Read(p []byte) (int, error) {
	n, err := s.Stream.Read(p)
	if n > 0 {
		s.heard.Store(time.Now().UnixNano())
	}
	return n, err
}

// watch probes the worker p behind s whenever s has been silent for
// ProbeAfter: a ping over the connection that gets no answer within the probe
// timeout means the worker is gone without a word (killed behind QUIC, cable
// pulled), so the connection is closed, which ends the job's Run at once with
// the stream reset (the attempt fails over), and p is marked down. A worker
// that is only slow (a long prompt, a chain lookup) answers pings. Close
// stops the probe.
func (c *Client) watch(s *jobStream, p peer.ID) {
	s.heard.Store(time.Now().UnixNano())
	s.probeEnded = make(chan struct{})
	if c.cfg.ProbeAfter < 0 {
		s.stopProbe = func() {}
		close(s.probeEnded)
		return
	}
	ctx, cancel := context.WithCancel(c.ctx)
	s.stopProbe = cancel
	go func() {
		defer close(s.probeEnded)
		after := c.cfg.ProbeAfter
		t := time.NewTimer(after)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if silent := time.Since(time.Unix(0, s.heard.Load())); silent < after {
				t.Reset(after - silent)
				continue
			}
			timeout := max(c.cfg.ProbeTimeout, 4*c.node.Host.Peerstore().LatencyEWMA(p))
			start := time.Now()
			if c.answers(ctx, p, timeout) {
				s.heard.Store(time.Now().UnixNano())
				t.Reset(after)
				continue
			}
			if ctx.Err() != nil {
				return // the job ended while the ping was out
			}
			c.log.Info("worker does not answer on its connection: closing it and failing over", "peer", p, "probe", time.Since(start).Round(time.Millisecond))
			c.sel.MarkDown(p)
			_ = s.Stream.Conn().Close()
			return
		}
	}()
}

// answers reports whether p answers a ping on an existing connection within
// timeout. A peer that does not speak the ping protocol counts as answering.
func (c *Client) answers(ctx context.Context, p peer.ID, timeout time.Duration) bool {
	ctx, cancel := context.WithTimeout(network.WithNoDial(ctx, "probe worker"), timeout)
	defer cancel()
	select {
	case res := <-ping.Ping(ctx, c.node.Host, p):
		return res.Error == nil || errors.Is(res.Error, msmux.ErrNotSupported[protocol.ID]{})
	case <-ctx.Done():
		return false
	}
}

// jobAckTimeout bounds how long closing a job stream waits for the worker's close.
const jobAckTimeout = 2 * time.Second

func (s *jobStream) Close() error {
	if s.stopProbe != nil {
		s.stopProbe()
		<-s.probeEnded
	}
	err := s.Stream.CloseWrite()
	if err == nil {
		_ = s.Stream.SetReadDeadline(time.Now().Add(jobAckTimeout))
		ack := make(chan struct{})
		go func() {
			defer close(ack)
			_, _ = io.Copy(io.Discard, io.LimitReader(s.Stream, market.MaxWorkerFrame))
		}()
		select { // mocknet streams ignore deadlines: bound the wait here too
		case <-ack:
		case <-time.After(jobAckTimeout):
			_ = s.Stream.Reset()
		}
	}
	err = errors.Join(err, s.Stream.Close())
	s.once.Do(s.release)
	return err
}

// workerReadAhead is the buffer of client bytes a worker's job stream reads
// ahead of the job: vouchers (a few hundred bytes each) must never wait behind
// the chunks the worker is writing, also on transports without a receive
// window (mocknet's synchronous pipes), or both sides could block in Write.
const workerReadAhead = 256 << 10

// workerStream is the worker's side of a job stream: a goroutine reads ahead up
// to workerReadAhead bytes, and a read deadline in the past (the job protocol
// sets one only when it has stopped reading) ends a blocked Read at once, also
// where the transport's deadlines are no-ops.
type workerStream struct {
	network.Stream
	mu     sync.Mutex
	cond   *sync.Cond
	buf    []byte
	err    error // from the stream, after buf is drained
	closed bool  // reading stopped by the job
}

func newWorkerStream(s network.Stream) *workerStream {
	ws := &workerStream{Stream: s}
	ws.cond = sync.NewCond(&ws.mu)
	go ws.fill()
	return ws
}

func (ws *workerStream) fill() {
	tmp := make([]byte, 16<<10)
	for {
		n, err := ws.Stream.Read(tmp)
		ws.mu.Lock()
		ws.buf = append(ws.buf, tmp[:n]...)
		for len(ws.buf) >= workerReadAhead && !ws.closed {
			ws.cond.Broadcast()
			ws.cond.Wait()
		}
		if err != nil {
			ws.err = err
		}
		stop := ws.closed || err != nil
		ws.cond.Broadcast()
		ws.mu.Unlock()
		if stop {
			return
		}
	}
}

func (ws *workerStream) Read(p []byte) (int, error) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for len(ws.buf) == 0 && ws.err == nil && !ws.closed {
		ws.cond.Wait()
	}
	switch {
	case ws.closed:
		return 0, io.ErrClosedPipe
	case len(ws.buf) > 0:
		n := copy(p, ws.buf)
		ws.buf = ws.buf[n:]
		ws.cond.Broadcast()
		return n, nil
	}
	return 0, ws.err
}

func (ws *workerStream) SetReadDeadline(t time.Time) error {
	if !t.IsZero() && !t.After(time.Now()) {
		ws.stopReading()
	}
	return nil
}

// stopReading ends reading: a blocked Read returns, the read side is closed.
func (ws *workerStream) stopReading() {
	ws.mu.Lock()
	already := ws.closed
	ws.closed = true
	ws.cond.Broadcast()
	ws.mu.Unlock()
	if !already {
		_ = ws.Stream.CloseRead()
	}
}

// GeneratePolicy runs req on the network under pol and returns its stream once
// the first text has arrived (or the answer ended): the stream's Header names
// the worker that started it. Errors before any text are returned here, wrapping
// runtime.ErrUnknownModel when no worker offers the model.
func (c *Client) GeneratePolicy(ctx context.Context, req runtime.Request, pol market.Policy) (*NetStream, error) {
	pol.Model = req.Model
	cands := c.candidates(ctx, pol)
	if len(cands) == 0 {
		if down := c.sel.DownPeers(pol); len(down) > 0 {
			errs := make([]error, len(down))
			for i, p := range down {
				errs[i] = fmt.Errorf("worker %s: %w: its connection failed; skipped until its next ad", p, market.ErrUnreachable)
			}
			return nil, &market.NoWorkerError{Errs: errs}
		}
		return nil, fmt.Errorf("%w: no worker offers %q under the policy", runtime.ErrUnknownModel, req.Model)
	}
	// A worker running another job of this client would make this one wait:
	// try the idle ones first, keeping the selector's order otherwise.
	slices.SortStableFunc(cands, func(a, b market.Candidate) int { return boolCmp(c.busy(a.Peer), c.busy(b.Peer)) })
	rctx, cancel := context.WithCancel(ctx)
	s := &NetStream{cancel: cancel, events: make(chan streamEvent), done: make(chan struct{}), tiers: map[peer.ID]string{}}
	var cur atomic.Pointer[market.Candidate]
	fo := &market.Failover{
		Dial: func(ctx context.Context, cd market.Candidate) (io.ReadWriteCloser, error) {
			release, err := c.lock(ctx, cd.Peer)
			if err != nil {
				return nil, err
			}
			st, err := c.node.Host.NewStream(ctx, cd.Peer, p2p.ProtocolJob)
			if err != nil {
				release()
				return nil, fmt.Errorf("open job stream: %w", err)
			}
			cur.Store(&cd)
			js := &jobStream{Stream: st, release: release}
			c.watch(js, cd.Peer)
			return js, nil
		},
		Payer: c.cfg.Payer,
		Verify: func(ctx context.Context, cd market.Candidate) error {
			tier, err := c.verify(ctx, cd, pol)
			if err != nil {
				return err
			}
			s.mu.Lock()
			s.tiers[cd.Peer] = tier
			s.mu.Unlock()
			return nil
		},
		Selector:    c.sel,
		MaxAttempts: c.cfg.MaxAttempts,
		Options:     c.cfg.Options,
		Observer:    c.cfg.Observer,
	}
	job := market.Job{ID: market.NewJobID(), Request: req, MaxPrice: pol.MaxPrice}
	go func() {
		defer close(s.done)
		attempts, err := fo.Run(rctx, cands, job, func(ch market.Chunk) error {
			cd := cur.Load()
			select {
			case s.events <- streamEvent{chunk: ch, worker: cd}:
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
		s.setWorker(ev.worker)
		return s, nil
	case <-s.done:
		if s.err != nil {
			cancel()
			return nil, s.err
		}
		if len(s.attempts) > 0 {
			cd := s.attempts[len(s.attempts)-1].Candidate
			s.setWorker(&cd)
		}
		return s, nil
	case <-ctx.Done():
		cancel()
		<-s.done
		return nil, ctx.Err()
	}
}

// verify checks the attestation of the connection to cd against pol and cd's ad,
// and returns the tier to show.
func (c *Client) verify(ctx context.Context, cd market.Candidate, pol market.Policy) (string, error) {
	if cd.Ad != nil && cd.Ad.TEE.Kind == market.TEENone {
		if !pol.Allows(market.TEENone) {
			return "", fmt.Errorf("worker %s has no TEE: %w", cd.Peer, market.ErrAttestation)
		}
		return enclave.KindNone.Tier(), nil
	}
	vd, err := c.att.Verify(ctx, cd.Peer)
	if err != nil {
		return "", err
	}
	k, err := market.ParseTEEKind(string(vd.Kind))
	if err != nil {
		return "", fmt.Errorf("verdict kind %q: %w", vd.Kind, err)
	}
	if !pol.Allows(k) {
		return "", fmt.Errorf("worker %s attested %s, not allowed by the policy: %w", cd.Peer, k, market.ErrAttestation)
	}
	if cd.Ad != nil {
		if k != cd.Ad.TEE.Kind {
			return "", fmt.Errorf("worker %s attested %s but advertises %s: %w", cd.Peer, k, cd.Ad.TEE.Kind, market.ErrAttestation)
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

type streamEvent struct {
	chunk  market.Chunk
	worker *market.Candidate
}

// NetStream is the stream of one request bought on the network. Besides
// runtime.Stream it has the hooks the OpenAI handler looks for: Header (the
// worker and its TEE tier) and CostNanoTON (what the client paid).
type NetStream struct {
	cancel context.CancelFunc
	events chan streamEvent
	done   chan struct{}
	first  *streamEvent

	header   http.Header
	worker   peer.ID
	tier     string
	tokens   int
	finished bool

	mu       sync.Mutex
	tiers    map[peer.ID]string
	attempts []market.Attempt
	err      error
}

// Header names the worker that started the answer and its TEE tier
// (X-Cocoon-Worker, X-Cocoon-TEE).
func (s *NetStream) Header() http.Header { return s.header }

func (s *NetStream) setWorker(cd *market.Candidate) {
	if cd == nil {
		return
	}
	s.worker = cd.Peer
	s.mu.Lock()
	s.tier = s.tiers[cd.Peer]
	s.mu.Unlock()
	s.header = http.Header{}
	s.header.Set("X-Cocoon-Worker", cd.Peer.String())
	if s.tier != "" {
		s.header.Set("X-Cocoon-TEE", s.tier)
	}
}

// Worker is the peer that started the answer.
func (s *NetStream) Worker() peer.ID { return s.worker }

func (s *NetStream) finish(attempts []market.Attempt, err error) {
	s.mu.Lock()
	s.attempts, s.err = attempts, err
	s.mu.Unlock()
}

// Recv implements runtime.Stream.
func (s *NetStream) Recv() (runtime.Delta, error) {
	if s.first != nil {
		ev := s.first
		s.first = nil
		s.tokens = ev.chunk.TokensSoFar
		return runtime.Delta{Text: ev.chunk.Text, Tokens: ev.chunk.Tokens}, nil
	}
	select {
	case ev := <-s.events:
		s.tokens = ev.chunk.TokensSoFar
		return runtime.Delta{Text: ev.chunk.Text, Tokens: ev.chunk.Tokens}, nil
	case <-s.done:
	}
	s.finished = true
	if s.err != nil {
		return runtime.Delta{}, fmt.Errorf("%w: %w", runtime.ErrUpstream, s.err)
	}
	return runtime.Delta{}, io.EOF
}

// Attempts returns every worker's part of the answer, each with its receipt;
// complete once Recv has returned an error or io.EOF, or after Close.
func (s *NetStream) Attempts() []market.Attempt {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attempts
}

// Usage implements runtime.Stream: the completion tokens delivered by all
// workers together, and the prompt tokens billed (each worker's own prompt,
// continuation included, as its Done reported).
func (s *NetStream) Usage() runtime.Usage {
	u := runtime.Usage{CompletionTokens: s.tokens}
	for _, a := range s.Attempts() {
		u.PromptTokens += int(a.Receipt.PromptTokens)
	}
	return u
}

// FinishReason implements runtime.Stream: the last worker's.
func (s *NetStream) FinishReason() string {
	as := s.Attempts()
	if len(as) == 0 {
		return ""
	}
	return as[len(as)-1].Receipt.FinishReason
}

// CostNanoTON is what the client paid for the answer, all workers together.
func (s *NetStream) CostNanoTON() uint64 {
	var n uint64
	for _, a := range s.Attempts() {
		n += a.Receipt.Paid
	}
	return n
}

// Close implements runtime.Stream: it cancels a running answer (paying for what
// arrived) and waits until the workers are settled.
func (s *NetStream) Close() error {
	s.cancel()
	<-s.done
	return nil
}
