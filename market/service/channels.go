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

// SettlePayee is the worker's Payee over settle's channel store: each voucher is
// a signed cumulative state of the client's channel (settle.Payee.Accept verifies
// and fsyncs it), and what it adds to the channel is what it adds to the job.
//
// That attribution holds because a client runs one job at a time on a channel
// (Client serialises its jobs per worker): the vouchers of one job are the
// only ones in flight on it.
type SettlePayee struct {
	P *settle.Payee
}

// Accept implements Payee.
func (s SettlePayee) Accept(_ context.Context, job market.JobID, voucher []byte) (uint64, error) {
	newly, err := s.P.Accept(voucher)
	if err != nil {
		return 0, fmt.Errorf("accept voucher for job %s: %w", job, err)
	}
	return newly, nil
}

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

// Learn makes the channel at addr, as the client names it in Open, one the
// payee accepts vouchers on. It reads the contract with lookup and refuses it
// unless it is open (initialised, no close started), funded by the client
// (balance A above zero) and pays this payee's wallet key (Payee.AddChannel
// checks the key); the deposit recorded is the one on the chain, never the
// client's word. A known channel has its deposit refreshed from the chain.
func (s SettlePayee) Learn(ctx context.Context, lookup ChannelLookup, addr string) error {
	a, err := settle.ParseAddress(addr)
	if err != nil {
		return fmt.Errorf("learn channel: %w", err)
	}
	ch, st, err := lookup(ctx, a)
	if err != nil {
		return fmt.Errorf("learn channel: %w", err)
	}
	if st == nil || st.Storage == nil || st.Status != settle.StatusOpen {
		status := settle.StatusMissing
		if st != nil {
			status = st.Status
		}
		return fmt.Errorf("learn channel %s: contract is %v, not open", ch.ID, status)
	}
	deposit := st.Storage.BalanceA
	if deposit == 0 {
		return fmt.Errorf("learn channel %s: the client deposited nothing", ch.ID)
	}
	if r, err := s.P.Latest(ch.ID); err == nil && !r.Closed && r.Deposit == deposit &&
		r.Channel.ClientKey.Equal(ch.ClientKey) && r.Channel.WorkerKey.Equal(ch.WorkerKey) {
		return nil // known, nothing changed
	}
	if err := s.P.AddChannel(ch, deposit); err != nil {
		return fmt.Errorf("learn channel: %w", err)
	}
	return nil
}

// SettlePayers finds and pays the client's channel to each worker from settle's
// channel store. The channel of a worker is the one bound to its peer with Bind,
// or else the newest open channel whose worker key is the channel key in the
// worker's ad (Settlement.ChannelKey). It is safe for concurrent use.
type SettlePayers struct {
	P *settle.Payer

	mu     sync.Mutex
	byPeer map[peer.ID]settle.ChannelID
}

// NewSettlePayers returns the payers of p's channels.
func NewSettlePayers(p *settle.Payer) *SettlePayers {
	return &SettlePayers{P: p, byPeer: make(map[peer.ID]settle.ChannelID)}
}

// Bind makes id the channel to pay worker p (a worker found without an ad, or one
// with several channels).
func (s *SettlePayers) Bind(p peer.ID, id settle.ChannelID) {
	s.mu.Lock()
	s.byPeer[p] = id
	s.mu.Unlock()
}

// Channel returns the channel that pays c.
func (s *SettlePayers) Channel(c market.Candidate) (settle.ChannelID, error) {
	s.mu.Lock()
	id, ok := s.byPeer[c.Peer]
	s.mu.Unlock()
	if ok {
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
		if !r.Closed && r.Sent < r.Deposit && bytes.Equal(r.Channel.WorkerKey, c.Ad.Settlement.ChannelKey) {
			return r.Channel.ID, nil
		}
	}
	return settle.ChannelID{}, fmt.Errorf("worker %s (channel key %x): %w", c.Peer, c.Ad.Settlement.ChannelKey, ErrNoChannel)
}

// Payer returns the Payer of the channel to c; it is the Failover.Payer hook.
func (s *SettlePayers) Payer(c market.Candidate) (market.Payer, error) {
	id, err := s.Channel(c)
	if err != nil {
		return nil, err
	}
	rec, err := s.P.Latest(id)
	if err != nil {
		return nil, fmt.Errorf("worker %s: %w", c.Peer, err)
	}
	addr, err := rec.Channel.Address()
	if err != nil {
		return nil, fmt.Errorf("worker %s: channel %s: %w", c.Peer, id, err)
	}
	return &channelPayer{p: s.P, id: id, addr: settle.Friendly(addr), paid: make(map[market.JobID]uint64)}, nil
}

// channelPayer turns per-job totals into cumulative channel states: each Pay
// raises the channel's total by what the job's total rose.
type channelPayer struct {
	p    *settle.Payer
	id   settle.ChannelID
	addr string // the contract's address, named in Open

	mu   sync.Mutex
	paid map[market.JobID]uint64
}

func (c *channelPayer) Pay(_ context.Context, job market.JobID, total uint64) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	prev := c.paid[job]
	if total < prev {
		return nil, fmt.Errorf("pay job %s: total %d below %d already paid", job, total, prev)
	}
	v, _, err := c.p.Increase(c.id, total-prev)
	if err != nil {
		return nil, fmt.Errorf("pay job %s on channel %s: %w", job, c.id, err)
	}
	c.paid[job] = total
	return v, nil
}

// ChannelAddress implements ChannelNamer.
func (c *channelPayer) ChannelAddress() string { return c.addr }
