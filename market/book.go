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
	numDropReasons
)

var dropNames = [...]string{"kept", "too_large", "malformed", "schema", "sender", "replay", "expired", "future"}

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
	case DropTooLarge, DropMalformed, DropSchema, DropSender:
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
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.received++
	if r == Kept && ad.Seq <= b.lastSeq[ad.Peer] {
		r = DropReplay
	}
	if r != Kept {
		b.dropped[r]++
		return nil, r
	}
	b.lastSeq[ad.Peer] = ad.Seq
	b.ads[ad.Peer] = ad
	return ad, Kept
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
