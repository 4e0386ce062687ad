package service

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/p2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
)

// AdGate is a node's validator of the ads topics (p2p.Node.SetAdsValidator):
// the book's checks (market.Book.OfferOn, with origin the gossip message's
// signer and model the topic's, so that an ad on the topic of a model it does
// not offer is rejected), then the ad rate rule (adrate.go), which blocks a
// flooding origin. The Client runs one; testnet/sim runs one per simulated
// node, so that the simulated network applies the rule users run.
type AdGate struct {
	node    *p2p.Node
	book    *market.Book
	rates   *limiter
	now     func() time.Time
	onBlock func(p peer.ID, why string)
	log     *slog.Logger
	blockMu sync.Mutex // makes Block's check and block one step
}

// NewAdGate is the gate of node's ads into book. onBlock, when set, is called
// once for each peer the gate blocks, after its ads have left the book, with
// why. log (nil: discard) gets why an ad was rejected, at Debug. Its limiter
// forgets an origin's buckets only when Prune is called.
func NewAdGate(node *p2p.Node, book *market.Book, log *slog.Logger, onBlock func(p peer.ID, why string)) *AdGate {
	return newAdGate(node, book, newLimiter(), time.Now, log, onBlock)
}

// newAdGate shares rates, the Client's limiter of every topic it rate-limits
// (which the Client prunes).
func newAdGate(node *p2p.Node, book *market.Book, rates *limiter, now func() time.Time, log *slog.Logger, onBlock func(p peer.ID, why string)) *AdGate {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &AdGate{node: node, book: book, rates: rates, now: now, log: log, onBlock: onBlock}
}

// Prune forgets the rate buckets that have refilled since their last use.
func (g *AdGate) Prune() { g.rates.prune(g.now()) }

// Validate is a pubsub validator of model's ads topic: from delivered data,
// which origin signed.
func (g *AdGate) Validate(_ context.Context, model string, from, origin peer.ID, data []byte) pubsub.ValidationResult {
	flood := false
	admit := func(*market.Ad) market.DropReason {
		if origin == g.node.Host.ID() {
			return market.Kept // this node's own worker keeps MinAdGap
		}
		if g.node.Blocked(origin) {
			// Validated concurrently with the ad that got it blocked: Block
			// emptied the book of it and forgot its rate, and this ad would
			// come back with a fresh burst. Checked under the book's lock,
			// which Block's Remove takes after blocking.
			return market.DropRate
		}
		var ok bool
		ok, flood = g.rates.take(rateKey{origin, model}, adRule, g.now())
		if !ok {
			return market.DropRate
		}
		return market.Kept
	}
	_, r := g.book.OfferOn(model, origin, data, admit)
	switch {
	case flood:
		g.Block(origin, "ad flood on "+model)
		return pubsub.ValidationReject
	case r == market.Kept:
		return pubsub.ValidationAccept
	case r == market.DropRate && from != origin:
		return pubsub.ValidationIgnore // relayed: other paths may have brought the rest
	case r.Penalize():
		g.log.Debug("ad rejected", "from", from, "origin", origin, "model", model, "reason", r)
		return pubsub.ValidationReject
	default:
		return pubsub.ValidationIgnore
	}
}

// Block shuts p out (p2p.Node.Block: p2p.BlockTime) and forgets what it said:
// its ads leave the book and its rates are dropped, then onBlock runs with why.
// A peer already blocked, and the node itself, are left alone, so that
// concurrent validations of a flooder's ads block it once.
func (g *AdGate) Block(p peer.ID, why string) {
	g.blockMu.Lock()
	if p == g.node.Host.ID() || g.node.Blocked(p) {
		g.blockMu.Unlock()
		return
	}
	g.node.Block(p)
	g.blockMu.Unlock()
	g.book.Remove(p)
	g.rates.forget(p)
	if g.onBlock != nil {
		g.onBlock(p, why)
	}
}
