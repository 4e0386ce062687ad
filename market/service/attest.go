package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/cocoon-network/cocoon/enclave"
	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/market"
)

// AttestProtocol is the attestation session protocol: one stream per exchange, the
// client sends a nonce, the prover returns evidence bound to its peer ID and that
// nonce (enclave.ServeAttest / enclave.AttestPeer).
const AttestProtocol protocol.ID = "/cocoon/attest/1.0.0"

// Defaults of AttestConfig.
const (
	DefaultAttestTimeout   = 30 * time.Second
	DefaultAttestInterval  = 2 * time.Second
	DefaultAttestBurst     = 3
	DefaultAttestInflight  = 2
	attestLimiterPruneSize = 1024
)

// ErrAttestClosed is returned by Verify after Close.
var ErrAttestClosed = errors.New("market: attestation service closed")

// AttestConfig configures Attestations. The zero value is a client-only service that
// cannot verify: set Verifier to verify peers, Attester to serve evidence.
type AttestConfig struct {
	// Attester makes this node's evidence; nil: the node serves no evidence (the
	// protocol handler is not registered).
	Attester enclave.Attester
	// Verifier checks other nodes' evidence; nil: Verify fails.
	Verifier *enclave.Verifier
	// Timeout bounds one exchange, on either side (0: DefaultAttestTimeout). Real
	// quotes take up to seconds.
	Timeout time.Duration
	// Interval and Burst rate-limit evidence requests per remote peer: Burst requests
	// at once, then one per Interval (0: DefaultAttestInterval, DefaultAttestBurst).
	Interval time.Duration
	Burst    int
	// MaxInflight bounds evidence being made at once for all peers (0:
	// DefaultAttestInflight); requests beyond it wait within their timeout.
	MaxInflight int
	// Observer, when set, learns the outcome of every exchange Verify ran.
	Observer market.Observer
	// Logger receives the service's logs (nil: slog.Default()).
	Logger *slog.Logger
}

// Attestations serves this node's evidence on AttestProtocol and verifies other
// nodes, caching each verdict for the connection it was made on until that
// connection closes. Safe for concurrent use; Close stops it.
type Attestations struct {
	h   host.Host
	cfg AttestConfig
	log *slog.Logger
	sem chan struct{}
	nb  *network.NotifyBundle

	// ctx ends at Close, abandoning the evidence being made; wg counts the
	// requests being served, which Close waits for.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	closed   bool
	verdicts map[string]attestCached // by connection ID
	inflight map[peer.ID]*attestCall
	limiter  map[peer.ID]*attestBucket
}

type attestCached struct {
	peer    peer.ID
	verdict enclave.Verdict
}

type attestCall struct {
	done    chan struct{}
	verdict enclave.Verdict
	err     error
}

type attestBucket struct {
	tokens float64
	last   time.Time
}

// NewAttestations starts the service on h: it registers the AttestProtocol handler
// when cfg.Attester is set, and watches connections to drop cached verdicts.
func NewAttestations(h host.Host, cfg AttestConfig) *Attestations {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultAttestTimeout
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultAttestInterval
	}
	if cfg.Burst <= 0 {
		cfg.Burst = DefaultAttestBurst
	}
	if cfg.MaxInflight <= 0 {
		cfg.MaxInflight = DefaultAttestInflight
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	a := &Attestations{
		h:        h,
		cfg:      cfg,
		log:      log.With("subsys", "attest"),
		sem:      make(chan struct{}, cfg.MaxInflight),
		verdicts: make(map[string]attestCached),
		inflight: make(map[peer.ID]*attestCall),
		limiter:  make(map[peer.ID]*attestBucket),
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	a.nb = &network.NotifyBundle{DisconnectedF: a.disconnected}
	h.Network().Notify(a.nb)
	if cfg.Attester != nil {
		h.SetStreamHandler(AttestProtocol, a.serve)
		a.log.Info("serving attestation evidence", "kind", cfg.Attester.Kind(), "tier", cfg.Attester.Kind().Tier())
	}
	return a
}

// Close unregisters the handler and the connection watcher, abandons the
// evidence requests being served (their streams are reset) and waits for
// them. Verify calls in progress end with their own context or timeout.
func (a *Attestations) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	a.verdicts = make(map[string]attestCached)
	a.mu.Unlock()
	if a.cfg.Attester != nil {
		a.h.RemoveStreamHandler(AttestProtocol)
	}
	a.h.Network().StopNotify(a.nb)
	a.cancel()
	a.wg.Wait()
	return nil
}

// Verify returns the verdict on peer p: the cached one if a live connection to p was
// already attested, otherwise the outcome of a fresh exchange (one at a time per
// peer), cached for the connection it ran on. Evidence is bound to the remote peer
// ID that the connection's security handshake authenticated.
func (a *Attestations) Verify(ctx context.Context, p peer.ID) (enclave.Verdict, error) {
	if a.cfg.Verifier == nil {
		return enclave.Verdict{}, fmt.Errorf("attest %s: no verifier configured", p)
	}
	conns := a.h.Network().ConnsToPeer(p) // outside a.mu: the swarm has its own locks
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return enclave.Verdict{}, ErrAttestClosed
	}
	if vd, ok := a.cachedLocked(p, conns); ok {
		a.mu.Unlock()
		return vd, nil
	}
	if call, ok := a.inflight[p]; ok {
		a.mu.Unlock()
		select {
		case <-call.done:
			return call.verdict, call.err
		case <-ctx.Done():
			return enclave.Verdict{}, fmt.Errorf("attest %s: %w", p, ctx.Err())
		}
	}
	call := &attestCall{done: make(chan struct{})}
	a.inflight[p] = call
	a.mu.Unlock()

	call.verdict, call.err = a.exchange(ctx, p)
	if o := a.cfg.Observer; o != nil {
		e := market.AttestEvent{Peer: p, Verdict: market.VerdictAccepted, Kind: call.verdict.Kind, Tier: call.verdict.Tier}
		if call.err != nil {
			e = market.AttestEvent{Peer: p, Verdict: market.VerdictRefused, Err: call.err}
		}
		o.Attested(e)
	}

	a.mu.Lock()
	delete(a.inflight, p)
	a.mu.Unlock()
	close(call.done)
	return call.verdict, call.err
}

// Accepts reports whether the verifier's policy accepts workers of kind k at
// all (false without a Verifier). A worker outside any TEE (tee.None) serves
// no evidence, so this is all a client can check of it.
func (a *Attestations) Accepts(k tee.Kind) bool {
	return a.cfg.Verifier != nil && a.cfg.Verifier.Policy.Accepts(k)
}

// Cached returns the cached verdict on p, if a live connection to p has one.
func (a *Attestations) Cached(p peer.ID) (enclave.Verdict, bool) {
	conns := a.h.Network().ConnsToPeer(p)
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cachedLocked(p, conns)
}

// Forget drops the cached verdicts on p, so the next Verify attests afresh (for
// instance after a policy change).
func (a *Attestations) Forget(p peer.ID) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, c := range a.verdicts {
		if c.peer == p {
			delete(a.verdicts, id)
		}
	}
}

// cachedLocked finds a verdict for one of conns, p's live connections.
func (a *Attestations) cachedLocked(p peer.ID, conns []network.Conn) (enclave.Verdict, bool) {
	for _, c := range conns {
		if e, ok := a.verdicts[c.ID()]; ok && e.peer == p {
			return e.verdict, true
		}
	}
	return enclave.Verdict{}, false
}

// exchange runs one client exchange with p and caches a successful verdict.
func (a *Attestations) exchange(ctx context.Context, p peer.ID) (enclave.Verdict, error) {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.Timeout)
	defer cancel()
	// A short exchange, allowed on a relayed connection (p2p.Node.NewStream).
	s, err := a.h.NewStream(network.WithAllowLimitedConn(ctx, "attest"), p, AttestProtocol)
	if err != nil {
		return enclave.Verdict{}, fmt.Errorf("attest %s: open stream: %w", p, err)
	}
	conn := s.Conn()
	remote := conn.RemotePeer() // authenticated by the Noise/TLS handshake
	vd, err := enclave.AttestPeer(ctx, s, []byte(remote), a.cfg.Verifier)
	if err != nil {
		_ = s.Reset()
		a.log.Warn("attestation refused", "peer", p, "kind", vd.Kind, "err", err)
		return vd, fmt.Errorf("attest %s: %w", p, err)
	}
	_ = s.Close()

	a.mu.Lock()
	if !a.closed {
		a.verdicts[conn.ID()] = attestCached{peer: remote, verdict: vd}
	}
	a.mu.Unlock()
	// The connection may have closed before the entry went in, after its
	// Disconnected notification ran: keep entries of live connections only.
	if !slices.ContainsFunc(a.h.Network().ConnsToPeer(remote), func(c network.Conn) bool { return c.ID() == conn.ID() }) {
		a.mu.Lock()
		delete(a.verdicts, conn.ID())
		a.mu.Unlock()
	}
	a.log.Info("peer attested", "peer", p, "kind", vd.Kind, "tier", vd.Tier, "measurement", vd.Measurement, "not_checked", len(vd.NotChecked))
	return vd, nil
}

func (a *Attestations) disconnected(_ network.Network, c network.Conn) {
	a.mu.Lock()
	delete(a.verdicts, c.ID())
	a.mu.Unlock()
}

// allow takes one token from p's bucket.
func (a *Attestations) allow(p peer.ID, now time.Time) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	burst := float64(a.cfg.Burst)
	refill := func(b *attestBucket) {
		b.tokens = min(burst, b.tokens+float64(now.Sub(b.last))/float64(a.cfg.Interval))
		b.last = now
	}
	if len(a.limiter) >= attestLimiterPruneSize {
		for id, b := range a.limiter {
			if refill(b); b.tokens >= burst {
				delete(a.limiter, id)
			}
		}
	}
	b, ok := a.limiter[p]
	if !ok {
		b = &attestBucket{tokens: burst, last: now}
		a.limiter[p] = b
	}
	refill(b)
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// serve answers one evidence request, within the stream deadline, rate-limited per
// remote peer.
func (a *Attestations) serve(s network.Stream) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		_ = s.Reset()
		return
	}
	a.wg.Add(1)
	a.mu.Unlock()
	defer a.wg.Done()
	// Close resets the stream: a stream deadline alone does not end a blocked
	// read or write on every transport (mocknet ignores deadlines).
	defer context.AfterFunc(a.ctx, func() { _ = s.Reset() })()
	remote := s.Conn().RemotePeer()
	ctx, cancel := context.WithTimeout(a.ctx, a.cfg.Timeout)
	defer cancel()
	_ = s.SetDeadline(time.Now().Add(a.cfg.Timeout))
	if !a.allow(remote, time.Now()) {
		a.log.Debug("evidence request rate-limited", "peer", remote)
		_ = enclave.WriteRefusal(s, enclave.StatusRateLimited)
		_ = s.Close()
		return
	}
	select {
	case a.sem <- struct{}{}:
		defer func() { <-a.sem }()
	case <-ctx.Done():
		_ = enclave.WriteRefusal(s, enclave.StatusUnavailable)
		_ = s.Close()
		return
	}
	if err := enclave.ServeAttest(ctx, s, []byte(a.h.ID()), a.cfg.Attester); err != nil && a.ctx.Err() == nil {
		a.log.Warn("evidence request failed", "peer", remote, "err", err)
	}
	_ = s.Close() // after a refusal too: the status code must reach the peer
}
