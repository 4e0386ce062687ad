package market

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// DropReason says why an ad was not taken into the book.
type DropReason int

// Drop reasons, counted per reason by Book.
const (
	Kept          DropReason = iota // not dropped
	DropTooLarge                    // over MaxAdSize
	DropMalformed                   // not a protobuf Ad
	DropSchema                      // a field out of range or missing
	DropSender                      // the gossip sender is not the ad's peer
	DropReplay                      // seq not above the newest seen from that peer
	DropExpired                     // issued_at + ttl is in the past
	DropFuture                      // issued_at more than MaxClockSkew ahead
	DropTopic                       // on the ads topic of a model the ad does not offer
	DropRate                        // faster than its peer's allowed ad rate (see OfferOn's admit)
	numDropReasons
)

var dropNames = [...]string{"kept", "too_large", "malformed", "schema", "sender", "replay", "expired", "future", "topic", "rate"}

func (r DropReason) String() string {
	if r >= 0 && int(r) < len(dropNames) {
		return dropNames[r]
	}
	return fmt.Sprintf("drop(%d)", int(r))
}

// Penalize reports whether the sender of an ad dropped for r broke the rules (a
// gossipsub validator rejects and scores it down) rather than being merely late or
// duplicated (ignored).
func (r DropReason) Penalize() bool {
	switch r {
	case DropTooLarge, DropMalformed, DropSchema, DropSender, DropTopic, DropRate:
		return true
	}
	return false
}

// DropReasons lists every reason an ad can be dropped for, for metrics.
func DropReasons() []DropReason {
	out := make([]DropReason, 0, numDropReasons-1)
	for r := DropTooLarge; r < numDropReasons; r++ {
		out = append(out, r)
	}
	return out
}

// Book holds the newest valid ad of each worker. It is safe for concurrent use;
// the zero value is not: use NewBook.
type Book struct {
	now func() time.Time

	mu       sync.Mutex
	ads      map[peer.ID]*Ad
	lastSeq  map[peer.ID]uint64 // kept after an ad expires, so an old ad cannot come back
	received uint64
	dropped  [numDropReasons]uint64
}

// NewBook returns an empty book reading the clock from now (nil: time.Now).
func NewBook(now func() time.Time) *Book {
	if now == nil {
		now = time.Now
	}
	return &Book{now: now, ads: make(map[peer.ID]*Ad), lastSeq: make(map[peer.ID]uint64)}
}

// Offer validates an ad received from the gossip sender from and keeps it if it is
// the newest valid ad of its peer. It is meant to be the gossipsub topic validator:
// Kept means accept; otherwise r.Penalize() tells reject from ignore.
func (b *Book) Offer(from peer.ID, data []byte) (*Ad, DropReason) {
	return b.offer("", from, data, nil)
}

// OfferOn is Offer for an ad received on the ads topic of model: an ad that
// does not offer model is dropped (DropTopic), and the newest ad of its peer,
// received again on another model's topic (a worker publishes the same ad on
// the topic of each model it sells), is Kept again without being stored
// twice, so that it is relayed on that topic too. admit, when not nil, is
// asked last, under the book's lock, whether to keep an ad that passed every
// other check (the caller's rate limit); an answer other than Kept drops it
// for that reason. Replays and expired ads never reach admit, so another
// peer cannot spend a worker's rate by replaying its old ads.
func (b *Book) OfferOn(model string, from peer.ID, data []byte, admit func(*Ad) DropReason) (*Ad, DropReason) {
	return b.offer(model, from, data, admit)
}

func (b *Book) offer(model string, from peer.ID, data []byte, admit func(*Ad) DropReason) (*Ad, DropReason) {
	now := b.now()
	ad, err := DecodeAd(data)
	r := Kept
	switch {
	case errors.Is(err, ErrAdTooLarge):
		r = DropTooLarge
	case errors.Is(err, ErrAdMalformed):
		r = DropMalformed
	case err != nil:
		r = DropSchema
	case ad.Peer != from:
		r = DropSender
	case !ad.Expires().After(now):
		r = DropExpired
	case ad.IssuedAt.After(now.Add(MaxClockSkew)):
		r = DropFuture
	case model != "":
		if _, ok := ad.Offer(model); !ok {
			r = DropTopic
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.received++
	again := false
	if r == Kept {
		last := b.lastSeq[ad.Peer]
		again = model != "" && ad.Seq == last && b.ads[ad.Peer] != nil && b.ads[ad.Peer].Seq == last
		if ad.Seq < last || (ad.Seq == last && !again) {
			r = DropReplay
		}
	}
	if r == Kept && admit != nil {
		r = admit(ad)
	}
	if r != Kept {
		b.dropped[r]++
		return nil, r
	}
	if again {
		return b.ads[ad.Peer], Kept
	}
	b.lastSeq[ad.Peer] = ad.Seq
	b.ads[ad.Peer] = ad
	return ad, Kept
}

// Count counts an ad the caller dropped for r before offering it.
func (b *Book) Count(r DropReason) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.received++
	if r != Kept && r < numDropReasons {
		b.dropped[r]++
	}
}

// Get returns the current ad of p, if it has one that has not expired.
func (b *Book) Get(p peer.ID) (*Ad, bool) {
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	a, ok := b.ads[p]
	if !ok || !a.Expires().After(now) {
		return nil, false
	}
	return a, true
}

// Remove forgets p's ad (its seq stays remembered).
func (b *Book) Remove(p peer.ID) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.ads, p)
}

// Prune drops expired ads and returns how many it dropped.
func (b *Book) Prune() int {
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for p, a := range b.ads {
		if !a.Expires().After(now) {
			delete(b.ads, p)
			n++
		}
	}
	return n
}

// ByModel returns the unexpired ads that offer model, ordered by peer ID. The ads
// are shared: callers must not modify them.
func (b *Book) ByModel(model string) []*Ad {
	return b.filter(func(a *Ad) bool { _, ok := a.Offer(model); return ok })
}

// All returns every unexpired ad, ordered by peer ID.
func (b *Book) All() []*Ad { return b.filter(func(*Ad) bool { return true }) }

func (b *Book) filter(keep func(*Ad) bool) []*Ad {
	now := b.now()
	b.mu.Lock()
	out := make([]*Ad, 0, len(b.ads))
	for _, a := range b.ads {
		if a.Expires().After(now) && keep(a) {
			out = append(out, a)
		}
	}
	b.mu.Unlock()
	slices.SortFunc(out, func(x, y *Ad) int { return strings.Compare(string(x.Peer), string(y.Peer)) })
	return out
}

// BookStats counts what a Book was offered.
type BookStats struct {
	Received uint64                // every call of Offer
	Dropped  map[DropReason]uint64 // per reason, only reasons seen
	Ads      int                   // ads held now (expired ones until pruned)
}

// Stats returns the counters.
func (b *Book) Stats() BookStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := BookStats{Received: b.received, Dropped: make(map[DropReason]uint64), Ads: len(b.ads)}
	for r, n := range b.dropped {
		if n > 0 {
			s.Dropped[DropReason(r)] = n
		}
	}
	return s
}
