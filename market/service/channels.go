package service

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/xssnick/tonutils-go/address"

	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/settle"
)

// ErrNoChannel is returned when the client has no open payment channel to a worker.
var ErrNoChannel = errors.New("market: no open payment channel to the worker")

// ChannelLookup reads the payment channel contract at addr from the chain: the
// Channel its storage names and its state. It must trust nothing but the chain
// (LedgerChannels does, through settle.LookupChannel).
type ChannelLookup func(ctx context.Context, addr *address.Address) (settle.Channel, *settle.ChannelState, error)

// LedgerChannels is the ChannelLookup over a ledger (TON, or the dev ledger).
func LedgerChannels(l settle.Ledger) ChannelLookup {
	return func(ctx context.Context, addr *address.Address) (settle.Channel, *settle.ChannelState, error) {
		return settle.LookupChannel(ctx, l, addr)
	}
}

// DefaultChannelCacheTTL is how long CachedChannels trusts what it read.
const DefaultChannelCacheTTL = 30 * time.Second

// CachedChannels remembers for ttl (0: DefaultChannelCacheTTL) each channel that
// lookup found open, so that a worker reads a client's contract once per ttl
// rather than once per job (a liteserver round trip on TON). Failures are not
// cached: a channel opened a moment ago is found on the next job. Trusting a
// state for ttl is safe because a channel's deposit only changes before it is
// initialised, and a close started on chain leaves the worker its closing
// period (hours) to answer.
func CachedChannels(lookup ChannelLookup, ttl time.Duration) ChannelLookup {
	if ttl <= 0 {
		ttl = DefaultChannelCacheTTL
	}
	type entry struct {
		ch  settle.Channel
		st  *settle.ChannelState
		exp time.Time
	}
	var (
		mu    sync.Mutex
		cache = map[string]entry{}
	)
	return func(ctx context.Context, addr *address.Address) (settle.Channel, *settle.ChannelState, error) {
		key := addr.StringRaw()
		now := time.Now()
		mu.Lock()
		e, ok := cache[key]
		if ok && now.After(e.exp) {
			delete(cache, key)
			ok = false
		}
		mu.Unlock()
		if ok {
			return e.ch, e.st, nil
		}
		ch, st, err := lookup(ctx, addr)
		if err == nil && st != nil && st.Status == settle.StatusOpen {
			mu.Lock()
			if len(cache) >= maxCachedChannels {
				clear(cache) // crude bound; a busy worker simply reads again
			}
			cache[key] = entry{ch: ch, st: st, exp: now.Add(ttl)}
			mu.Unlock()
		}
		return ch, st, err
	}
}

// maxCachedChannels bounds CachedChannels' memory.
const maxCachedChannels = 100_000

// learn makes the channel at addr, as the client names it in Open, one the
// payee accepts vouchers on, and returns its id. Without a Lookup it must be
// in the store already. With one, it reads the contract and refuses it unless
// it is open (initialised, no close started), funded by the client (balance A
// above zero) and pays this payee's wallet key (settle.Payee.AddChannel checks
// the key); the deposit recorded is the one on the chain, never the client's
// word. A known channel has its deposit refreshed from the chain.
func (s *Payees) learn(ctx context.Context, addr string) (settle.ChannelID, error) {
	a, err := settle.ParseAddress(addr)
	if err != nil {
		return settle.ChannelID{}, fmt.Errorf("learn channel: %w", err)
	}
	if s.Lookup == nil {
		return s.stored(a)
	}
	ch, st, err := s.Lookup(ctx, a)
	if err != nil {
		return settle.ChannelID{}, fmt.Errorf("learn channel: %w", err)
	}
	if st == nil || st.Storage == nil || st.Status != settle.StatusOpen {
		status := settle.StatusMissing
		if st != nil {
			status = st.Status
		}
		return settle.ChannelID{}, fmt.Errorf("learn channel %s: contract is %v, not open", ch.ID, status)
	}
	deposit := st.Storage.BalanceA
	if deposit == 0 {
		return settle.ChannelID{}, fmt.Errorf("learn channel %s: the client deposited nothing", ch.ID)
	}
	if r, err := s.P.Latest(ch.ID); err == nil && !r.Closed && r.Deposit == deposit &&
		r.Channel.ClientKey.Equal(ch.ClientKey) && r.Channel.WorkerKey.Equal(ch.WorkerKey) {
		return ch.ID, nil // known, nothing changed
	}
	if err := s.P.AddChannel(ch, deposit); err != nil {
		return settle.ChannelID{}, fmt.Errorf("learn channel: %w", err)
	}
	return ch.ID, nil
}

// stored finds the channel in the store whose contract is at a.
func (s *Payees) stored(a *address.Address) (settle.ChannelID, error) {
	key := a.StringRaw()
	s.mu.Lock()
	id, ok := s.byAddr[key]
	s.mu.Unlock()
	if ok {
		return id, nil
	}
	recs, err := s.P.Channels()
	if err != nil {
		return settle.ChannelID{}, fmt.Errorf("list channels: %w", err)
	}
	for _, r := range recs {
		if ca, err := r.Channel.Address(); err == nil && ca.StringRaw() == key {
			s.mu.Lock()
			s.byAddr[key] = r.Channel.ID
			s.mu.Unlock()
			return r.Channel.ID, nil
		}
	}
	return settle.ChannelID{}, fmt.Errorf("channel %s: not in the store, and the worker reads no chain: %w", settle.Friendly(a), ErrNoChannel)
}

// DefaultLeastCredit is the fewest credit tokens a job is accepted with: below
// it the client's other jobs hold the credit, and the job is refused as busy.
const DefaultLeastCredit = 8

// Payees is the worker's market.Payee over settle's channel lanes: a job is
// paid on the channel its client names in Open, through that channel's
// settle.PayeeLane, which all the client's jobs on it share. It is safe for
// concurrent use.
//
// The credit rule: a job asks for the worker's credit window (market.Worker's
// CreditTokens, its unpaid completion tokens), and the jobs of one channel
// hold at most ClientCredit tokens together; a job that would get fewer than
// DefaultLeastCredit is refused as busy. The worker's exposure to one client is
// therefore at most ClientCredit tokens at its completion price plus the
// prompts of the client's jobs in flight (paid with each job's final voucher),
// and a job extends credit only on payments on disk.
type Payees struct {
	P *settle.Payee
	// Lookup, when set, reads from the chain a channel a client names that the
	// worker has not heard of (LedgerChannels, CachedChannels); a job on a
	// channel that is not open, not funded or pays another key is refused with
	// RejectNoChannel. Nil: only channels added to the store by hand are paid on.
	Lookup ChannelLookup
	// ClientCredit bounds the credit tokens one channel's jobs hold together
	// (0: no bound beyond the worker's job bound times its credit window).
	ClientCredit int

	mu     sync.Mutex
	byAddr map[string]settle.ChannelID
}

// NewPayees returns the worker's side of p's channels.
func NewPayees(p *settle.Payee, lookup ChannelLookup, clientCredit int) *Payees {
	return &Payees{P: p, Lookup: lookup, ClientCredit: clientCredit, byAddr: make(map[string]settle.ChannelID)}
}

// Open implements market.Payee.
func (s *Payees) Open(ctx context.Context, job market.JobID, channel string) (market.Account, error) {
	if channel == "" {
		return nil, fmt.Errorf("open names no payment channel: %w", ErrNoChannel)
	}
	id, err := s.learn(ctx, channel)
	if err != nil {
		return nil, err
	}
	l, err := s.P.Lane(id)
	if err != nil {
		return nil, fmt.Errorf("channel %s: %w", id, err)
	}
	j, err := l.Open(job)
	if err != nil {
		return nil, err
	}
	return &payeeAccount{PayeeJob: j, lane: l, limit: s.ClientCredit}, nil
}

// payeeAccount is one job's market.Account on its channel's lane.
type payeeAccount struct {
	*settle.PayeeJob
	lane  *settle.PayeeLane
	limit int
}

func (a *payeeAccount) Reserve(want int) int {
	return a.PayeeJob.Reserve(want, min(want, DefaultLeastCredit), a.limit)
}

func (a *payeeAccount) State() []byte { return a.lane.State() }

// Payers finds the client's channel to each worker in settle's store and pays
// on it through the channel's settle.PayerLane, which all the client's jobs on
// that worker share. The channel of a worker is the one bound to its peer with
// Bind, or else the newest open channel with funds left whose worker key is the
// channel key in the worker's ad (Settlement.ChannelKey). It is safe for
// concurrent use.
type Payers struct {
	P *settle.Payer

	mu     sync.Mutex
	byPeer map[peer.ID]settle.ChannelID // bound
	found  map[peer.ID]settle.ChannelID // found by the ad's key
}

// NewPayers returns the payers of p's channels.
func NewPayers(p *settle.Payer) *Payers {
	return &Payers{P: p, byPeer: make(map[peer.ID]settle.ChannelID), found: make(map[peer.ID]settle.ChannelID)}
}

// Bind makes id the channel to pay worker p (a worker found without an ad, or one
// with several channels).
func (s *Payers) Bind(p peer.ID, id settle.ChannelID) {
	s.mu.Lock()
	s.byPeer[p] = id
	s.mu.Unlock()
}

// usable reports whether the lane of id can pay more.
func (s *Payers) usable(id settle.ChannelID) bool {
	l, err := s.P.Lane(id)
	if err != nil {
		return false
	}
	r := l.Record()
	return !r.Closed && r.Sent < r.Deposit
}

// Channel returns the channel that pays c.
func (s *Payers) Channel(c market.Candidate) (settle.ChannelID, error) {
	s.mu.Lock()
	id, ok := s.byPeer[c.Peer]
	if !ok {
		id, ok = s.found[c.Peer]
		if ok && (c.Ad == nil || !bytes.Equal(c.Ad.Settlement.ChannelKey, s.keyOf(id))) {
			ok = false
		}
	}
	s.mu.Unlock()
	if ok && s.usable(id) {
		return id, nil
	}
	if c.Ad == nil || len(c.Ad.Settlement.ChannelKey) == 0 {
		return settle.ChannelID{}, fmt.Errorf("worker %s: no ad and no bound channel: %w", c.Peer, ErrNoChannel)
	}
	recs, err := s.P.Channels()
	if err != nil {
		return settle.ChannelID{}, fmt.Errorf("list channels: %w", err)
	}
	for _, r := range recs { // newest first
		if bytes.Equal(r.Channel.WorkerKey, c.Ad.Settlement.ChannelKey) && s.usable(r.Channel.ID) {
			s.mu.Lock()
			s.found[c.Peer] = r.Channel.ID
			s.mu.Unlock()
			return r.Channel.ID, nil
		}
	}
	return settle.ChannelID{}, fmt.Errorf("worker %s (channel key %x): %w", c.Peer, c.Ad.Settlement.ChannelKey, ErrNoChannel)
}

// keyOf returns the worker key of channel id's lane (nil if it has none).
func (s *Payers) keyOf(id settle.ChannelID) []byte {
	l, err := s.P.Lane(id)
	if err != nil {
		return nil
	}
	return l.Channel().WorkerKey
}

// Payer returns the market.Payer of the channel to c; it is the Failover.Payer hook.
func (s *Payers) Payer(c market.Candidate) (market.Payer, error) {
	id, err := s.Channel(c)
	if err != nil {
		return nil, err
	}
	l, err := s.P.Lane(id)
	if err != nil {
		return nil, fmt.Errorf("worker %s: %w", c.Peer, err)
	}
	addr, err := l.Channel().Address()
	if err != nil {
		return nil, fmt.Errorf("worker %s: channel %s: %w", c.Peer, id, err)
	}
	return payerLane{l: l, addr: settle.Friendly(addr)}, nil
}

// payerLane is a channel's lane as market.Payer sees it.
type payerLane struct {
	l    *settle.PayerLane
	addr string // the contract's address, named in Open
}

func (p payerLane) Channel() string         { return p.addr }
func (p payerLane) Sync(state []byte) error { return p.l.Sync(state) }
func (p payerLane) End(job market.JobID)    { p.l.End(job) }

func (p payerLane) Pay(_ context.Context, job market.JobID, total uint64) ([]byte, error) {
	return p.l.Pay(job, total)
}
