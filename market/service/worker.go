package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/cocoon-network/cocoon/enclave"
	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/p2p"
	"github.com/cocoon-network/cocoon/runtime"
)

// Defaults of the worker service.
const (
	// MinAdGap is the shortest time between two ads of one worker: a capacity change
	// sooner than that is published when the gap has passed.
	MinAdGap = time.Second
	// adPeerDelay is how long after a new connection a worker re-publishes its ad,
	// so that the new peer (subscribed by then) gets it before the next period.
	adPeerDelay = 500 * time.Millisecond
	adPoll      = 100 * time.Millisecond
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
	// Payee takes the clients' vouchers (Payees over settle's lanes, which
	// also reads from the chain a channel a client names).
	Payee market.Payee
	// Settlement is how this worker is paid (wallet, channel key, minimum deposit).
	Settlement market.Settlement
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

// DrainTimeout bounds how long Worker.Close lets the jobs in flight finish
// before it cuts them.
const DrainTimeout = 5 * time.Second

// Worker sells a backend's inference on the network: it serves the job
// protocol (one stream per job) and the attestation protocol, publishes a
// capacity ad every AdInterval and when its free slots or queue change, and
// provides every served model in the DHT. Close takes no more jobs, lets those
// in flight finish (up to DrainTimeout), then stops it all.
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
	jobWG  sync.WaitGroup // the job streams being served
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
		o := market.OfferOf(m, p)
		if rep, ok := unwrapBackend(cfg.Backend).(runtime.OffloadReporter); ok {
			if off, ok := rep.Offload(m.ID); ok && off.Layers >= 0 && off.GPULayers >= 0 && off.Layers <= math.MaxUint32 {
				o.Llama, o.Layers, o.GPULayers = off.Lib, uint32(off.Layers), uint32(min(off.GPULayers, off.Layers))
			}
		}
		w.models = append(w.models, o)
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

// queueCap is the queue's capacity of a backend that has one
// (runtime.Limited: the node's runtime.queue), 0 otherwise.
func queueCap(b runtime.Backend) int {
	if q, ok := b.(interface{ QueueCap() int }); ok {
		return q.QueueCap()
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
	w.jobWG.Add(1)
	w.jobs++
	w.mu.Unlock()
	defer w.wg.Done()
	defer w.jobWG.Done()
	w.Republish()
	ws := newWorkerStream(s)
	err := w.worker.ServePeer(w.ctx, ws, s.Conn().RemotePeer())
	ws.stopReading()
	// A reject, and a cancel for a bad request, are clean ends: Close
	// delivers the Reject or Cancel frame, where Reset may drop it before the
	// client has read it (the client then sees a reset, not the code, and
	// fails over to the next worker instead of answering 400).
	var rej *market.RejectError
	if err != nil && !errors.As(err, &rej) && !errors.Is(err, runtime.ErrInvalidRequest) {
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
	// The same ad on the topic of each model it offers: a node joins only
	// the topics of the models it wants.
	var failed error
	for _, m := range ad.Models {
		if err := w.node.PublishAd(ctx, m.ID, b); err != nil {
			failed = err
		}
	}
	if failed != nil {
		if w.ctx.Err() == nil {
			w.log.Warn("publish ad", "err", failed)
		}
		return
	}
	w.mu.Lock()
	w.lastAd = ad
	w.mu.Unlock()
	w.log.Debug("ad published", "seq", ad.Seq, "slots_free", ad.Capacity.SlotsFree, "queue", ad.Capacity.QueueLength)
}

// newSubscriber updates subs with the subscribers of the worker's models'
// topics and reports whether one is new.
func (w *Worker) newSubscriber(subs map[peer.ID]bool) bool {
	fresh := false
	seen := map[peer.ID]bool{}
	for _, m := range w.models {
		for _, p := range w.node.AdPeers(m.ID) {
			seen[p] = true
			if !subs[p] {
				fresh = true
			}
		}
	}
	clear(subs)
	maps.Copy(subs, seen)
	return fresh
}

// publishCatalogue names the worker's models on the catalogue topic (see
// catalogue.go for the rate every node holds it to).
func (w *Worker) publishCatalogue() {
	ids := make([]string, 0, len(w.models))
	for _, m := range w.models {
		ids = append(ids, m.ID)
	}
	b := EncodeCatalogue(ids)
	if _, ok := DecodeCatalogue(b); !ok {
		w.log.Warn("models not published in the catalogue: too many or too long ids", "models", len(ids))
		return
	}
	ctx, cancel := context.WithTimeout(w.ctx, 5*time.Second)
	defer cancel()
	if err := w.node.PublishCatalogue(ctx, b); err != nil && w.ctx.Err() == nil {
		w.log.Warn("publish catalogue", "err", err)
	}
}

func (w *Worker) adLoop() {
	defer w.wg.Done()
	t := time.NewTicker(adPoll)
	defer t.Stop()
	w.publish()
	last, lastCap := time.Now(), w.capacity()
	var lastCat time.Time      // the catalogue waits for a peer that relays it
	subs := map[peer.ID]bool{} // subscribers of its models' topics, as last seen
	polls := 0
	for {
		select {
		case <-w.ctx.Done():
			return
		case <-t.C:
		case <-w.kick: // a job started or ended: check sooner
		}
		now := time.Now()
		if polls++; polls%5 == 0 && w.newSubscriber(subs) {
			// A peer joined one of its models' topics (a client asked for
			// the model): it gets the ad at the next chance, not in 10 s.
			w.peerAt.CompareAndSwap(0, now.UnixNano())
		}
		c := w.capacity()
		capChanged := c.SlotsFree != lastCap.SlotsFree || c.QueueLength != lastCap.QueueLength || c.SlotsTotal != lastCap.SlotsTotal
		due := now.Sub(last) >= w.cfg.AdInterval
		// A new peer's ad waits out MinAdGap too: a node's validator holds
		// each worker to one ad per MinAdGap per model (AdRateEvery).
		if pa := w.peerAt.Load(); pa != 0 && now.UnixNano() >= pa && now.Sub(last) >= MinAdGap {
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
		if (lastCat.IsZero() || now.Sub(lastCat) >= CatalogueEvery) && len(w.node.Catalogue.ListPeers()) > 0 {
			w.publishCatalogue()
			lastCat = now
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
		if w.node.RoutingTableSize() > 0 {
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
		// Let the jobs in flight finish, above all their last vouchers: the
		// client answered its caller when it sent the last one, and a worker
		// that stopped before taking it could not claim it.
		drained := make(chan struct{})
		go func() { w.jobWG.Wait(); close(drained) }()
		t := time.NewTimer(DrainTimeout)
		select {
		case <-drained:
		case <-t.C:
			w.log.Warn("worker service stopping with jobs in flight", "after", DrainTimeout)
		}
		t.Stop()
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

// unwrapBackend is the backend under the wrappers that expose one
// (runtime.Limited): where the engine's own reports live.
func unwrapBackend(b runtime.Backend) runtime.Backend {
	for {
		u, ok := b.(interface{ Unwrap() runtime.Backend })
		if !ok {
			return b
		}
		b = u.Unwrap()
	}
}
