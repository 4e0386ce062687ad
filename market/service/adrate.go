package service

import (
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// The ad rate rule, per origin peer and model topic. A worker publishes at
// most one ad per MinAdGap (1 s) on each of its models' topics: every
// AdInterval (10 s) and when its slots or queue change, never sooner than
// MinAdGap after the last one, a new peer's ad included. So:
//
//   - Rate: an origin's new ads on one model's topic refill at one per
//     AdRateEvery (1 s, the most an honest worker sends), up to AdBurst (5,
//     for ads that gossip bunches up). An ad beyond it is DropRate: rejected
//     when the origin delivered it itself (gossipsub scores its sender down
//     by 100 × the count of such messages squared, the count halving each
//     second: from the third in quick succession it is under the graylist
//     threshold, -400, and gossipsub drops all it sends), ignored when
//     relayed, since a relay cannot know what other paths brought us.
//   - Flood: the ads beyond the rate also draw on a second bucket holding
//     FloodExcess (3), refilled at one per FloodRefill (10 s), one per
//     origin across all the ads topics. A peer that empties it (at 10 times
//     the rate, within a quarter second of its burst; at twice the rate,
//     about 6.5 s after its first ad) is blocked (p2p.Node.Block: disconnected, refused and its
//     gossip dropped for p2p.BlockTime, 10 min), and its ads leave the book,
//     so its models are no longer listed. The line sits before gossipsub's
//     graylist (under -400): the ad that empties the bucket follows at most
//     two rejected ones (-400 at worst), so the validator sees it however
//     fast they came and on however many topics. Were the line past the
//     graylist, a fast flooder would be graylisted first, and stay
//     unblocked, its ads listed, until its score decayed (over a second).
//
// Only ads that pass every other check count (the book's admit hook): a
// replayed or expired ad of another peer cannot spend that peer's rate.
const (
	AdRateEvery = time.Second
	AdBurst     = 5
	FloodExcess = 3
	FloodRefill = 10 * time.Second
)

type rateKey struct {
	origin peer.ID
	topic  string // a model, catalogueKey, askNamesKey or adsFloodKey
}

// adsFloodKey is the limiter's key of an origin's flood bucket shared by all
// the ads topics (model ids never contain a newline).
const adsFloodKey = "\nads"

// bucket is a pair of token buckets: the allowed rate, and the flood line
// drawn on by what exceeds it.
type bucket struct {
	rate, flood float64
	at          time.Time
	full        time.Duration // unused this long, both buckets are full again
}

// rateRule is one rate: tokens per second and burst, for both buckets.
// floodKey, when set, is the topic key of the origin's one flood bucket for
// every topic of the rule; otherwise each key has its own.
type rateRule struct {
	perSec, burst           float64
	floodPerSec, floodBurst float64
	floodKey                string
}

var adRule = rateRule{
	perSec: 1 / AdRateEvery.Seconds(), burst: AdBurst,
	floodPerSec: 1 / FloodRefill.Seconds(), floodBurst: FloodExcess,
	floodKey: adsFloodKey,
}

// limiter holds the buckets of every origin and topic seen lately. It is
// safe for concurrent use.
type limiter struct {
	mu      sync.Mutex
	buckets map[rateKey]*bucket
}

func newLimiter() *limiter { return &limiter{buckets: map[rateKey]*bucket{}} }

// take spends one message of k at now under rule: ok says whether it is
// within the rate, flood whether the flood line was crossed (the flood
// bucket emptied).
func (l *limiter) take(k rateKey, rule rateRule, now time.Time) (ok, flood bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.refill(k, rule, now)
	if b.rate >= 1 {
		b.rate--
		return true, false
	}
	if rule.floodKey != "" {
		b = l.refill(rateKey{k.origin, rule.floodKey}, rule, now)
	}
	b.flood--
	if b.flood < 1 {
		b.flood = 0
		return false, true
	}
	return false, false
}

// refill is k's bucket under rule, new or refilled up to now; l.mu is held.
func (l *limiter) refill(k rateKey, rule rateRule, now time.Time) *bucket {
	b, seen := l.buckets[k]
	if !seen {
		full := max(rule.burst/rule.perSec, rule.floodBurst/rule.floodPerSec)
		b = &bucket{rate: rule.burst, flood: rule.floodBurst, at: now, full: time.Duration(full * float64(time.Second))}
		l.buckets[k] = b
	}
	if dt := now.Sub(b.at).Seconds(); dt > 0 {
		b.rate = min(rule.burst, b.rate+dt*rule.perSec)
		b.flood = min(rule.floodBurst, b.flood+dt*rule.floodPerSec)
		b.at = now
	}
	return b
}

// prune forgets the buckets that have refilled since their last use: a new
// bucket would hold as much.
func (l *limiter) prune(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, b := range l.buckets {
		if now.Sub(b.at) >= b.full {
			delete(l.buckets, k)
		}
	}
}

// forget drops every bucket of p (blocked: the rest is the blocklist's).
func (l *limiter) forget(p peer.ID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k := range l.buckets {
		if k.origin == p {
			delete(l.buckets, k)
		}
	}
}
