package market

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/cocoon-network/cocoon/settle"
)

// ErrNoChannel is returned when the client has no open payment channel to a worker.
var ErrNoChannel = errors.New("market: no open payment channel to the worker")

// SettlePayee is the worker's Payee over settle's channel store: each voucher is
// a signed cumulative state of the client's channel (settle.Payee.Accept verifies
// and fsyncs it), and what it adds to the channel is what it adds to the job.
//
// That attribution holds because a client runs one job at a time on a channel
// (ClientService serialises its jobs per worker): the vouchers of one job are the
// only ones in flight on it.
type SettlePayee struct {
	P *settle.Payee
}

// Accept implements Payee.
func (s SettlePayee) Accept(_ context.Context, job JobID, voucher []byte) (uint64, error) {
	newly, err := s.P.Accept(voucher)
	if err != nil {
		return 0, fmt.Errorf("accept voucher for job %s: %w", job, err)
	}
	return newly, nil
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
func (s *SettlePayers) Channel(c Candidate) (settle.ChannelID, error) {
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
func (s *SettlePayers) Payer(c Candidate) (Payer, error) {
	id, err := s.Channel(c)
	if err != nil {
		return nil, err
	}
	return &channelPayer{p: s.P, id: id, paid: make(map[JobID]uint64)}, nil
}

// channelPayer turns per-job totals into cumulative channel states: each Pay
// raises the channel's total by what the job's total rose.
type channelPayer struct {
	p  *settle.Payer
	id settle.ChannelID

	mu   sync.Mutex
	paid map[JobID]uint64
}

func (c *channelPayer) Pay(_ context.Context, job JobID, total uint64) ([]byte, error) {
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
