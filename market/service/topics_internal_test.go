package service

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"

	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/p2p"
)

// mockNode is a p2p node on a new mocknet, both closed when t ends.
func mockNode(t *testing.T) (mocknet.Mocknet, *p2p.Node) {
	t.Helper()
	mn := mocknet.New()
	t.Cleanup(func() { mn.Close() })
	h, err := mn.GenPeer()
	if err != nil {
		t.Fatal(err)
	}
	nd, err := p2p.New(context.Background(), p2p.Config{Host: h, DHTMode: p2p.DHTServer})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nd.Close() })
	return mn, nd
}

// StrangerAd is a valid ad of p offering model at seq, a stranger's (exported
// for the package's external tests).
func StrangerAd(t *testing.T, p peer.ID, model string, seq uint64) []byte {
	t.Helper()
	ad := &market.Ad{
		Peer: p, Seq: seq, IssuedAt: time.Now(), TTL: time.Minute,
		Models:     []market.ModelOffer{{ID: model, ContextLength: 128, Price: market.Price{Prompt: 1, Completion: 1}}},
		Capacity:   market.Capacity{SlotsTotal: 1, SlotsFree: 1},
		TEE:        market.TEE{Kind: tee.None},
		Settlement: market.Settlement{WalletAddress: "flooder-wallet", ChannelKey: []byte{1}},
	}
	b, err := ad.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fakeClock is a settable clock for ClientConfig.Now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// TestTopicJoinAndIdle: a request for a model the client has not joined
// joins its topic (the request itself goes to the DHT: none here); one not
// asked for in TopicIdle is left, while a pinned (served or configured) model
// stays joined whatever the time.
func TestTopicJoinAndIdle(t *testing.T) {
	_, nd := mockNode(t)
	clock := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	c, err := NewClient(ClientConfig{
		Node: nd, Payer: func(market.Candidate) (market.Payer, error) { return nil, nil },
		Models: []string{"pinned"}, TopicIdle: 10 * time.Minute, Now: clock.Now, FindTimeout: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if j := c.Joined(); !slices.Equal(j, []string{"pinned"}) {
		t.Fatalf("joined %v at start; want [pinned]", j)
	}
	pol := market.Policy{Model: "asked"}
	if cs := c.candidates(context.Background(), pol); len(cs) != 0 { // the cold path: no provider here
		t.Fatalf("candidates = %v; want none", cs)
	}
	if j := c.Joined(); !slices.Equal(j, []string{"asked", "pinned"}) {
		t.Fatalf("joined %v after a request; want [asked pinned]", j)
	}
	clock.Add(9 * time.Minute)
	c.candidates(context.Background(), pol) // asked again: the idle time restarts
	clock.Add(9 * time.Minute)
	c.leaveIdle()
	if !nd.Joined("asked") {
		t.Fatal("left a topic asked for 9 minutes ago")
	}
	clock.Add(time.Minute)
	c.leaveIdle()
	if j := c.Joined(); !slices.Equal(j, []string{"pinned"}) {
		t.Fatalf("joined %v after 10 idle minutes; want [pinned]", j)
	}
	c.candidates(context.Background(), pol) // asked once more: joined again
	if !nd.Joined("asked") {
		t.Fatal("a new request did not join the topic again")
	}
}

// TestAdRate: an honest worker's cadence (an ad every 10 s, and one per
// second at most when its slots change, delivered with jitter) is always
// within the rate; a peer at twice the rate is refused its excess and crosses
// the flood line about 6.5 s after its first ad; one at 10 times the rate
// within a quarter second of its burst. The flood line is the third ad beyond
// the rate, counted across the ads topics: one flooding two topics crosses it
// as soon, before gossipsub's graylist would hide its ads from the validator.
func TestAdRate(t *testing.T) {
	l := newLimiter()
	t0 := time.Unix(1_800_000_000, 0)
	honest := rateKey{peer.ID("honest"), "m"}
	at := t0
	for i := range 600 {
		gap := time.Second
		if i%7 == 3 {
			gap = 200 * time.Millisecond // two ads bunched by the network
		} else if i%7 == 4 {
			gap = 1800 * time.Millisecond
		}
		at = at.Add(gap)
		if ok, flood := l.take(honest, adRule, at); !ok || flood {
			t.Fatalf("honest ad %d at +%s refused (flood %v)", i, at.Sub(t0), flood)
		}
	}
	for _, c := range []struct {
		name     string
		gap      time.Duration
		min, max time.Duration // when the flood line is crossed
	}{
		{"2x", 500 * time.Millisecond, 6500 * time.Millisecond, 6900 * time.Millisecond},
		{"10x", 100 * time.Millisecond, 600 * time.Millisecond, 750 * time.Millisecond},
	} {
		k := rateKey{peer.ID(c.name), "m"}
		for i := 0; ; i++ {
			at := t0.Add(time.Duration(i) * c.gap)
			ok, flood := l.take(k, adRule, at)
			if flood {
				if d := at.Sub(t0); d < c.min || d > c.max {
					t.Errorf("%s: crossed the flood line after %s; want %s to %s", c.name, d, c.min, c.max)
				}
				break
			}
			if i < AdBurst && !ok {
				t.Fatalf("%s: ad %d refused within the burst", c.name, i)
			}
			if i > 1000 {
				t.Fatalf("%s: never crossed the flood line", c.name)
			}
		}
	}
	// Two topics at 10 times the rate each: their bursts, then the third ad
	// beyond the rate crosses the line, whichever topic it came on.
	excess := 0
	for i := 0; ; i++ {
		k := rateKey{peer.ID("two-topics"), "m" + strconv.Itoa(i%2)}
		ok, flood := l.take(k, adRule, t0.Add(time.Duration(i)*50*time.Millisecond))
		if !ok {
			excess++
		}
		if flood {
			if excess != FloodExcess {
				t.Errorf("two topics: crossed the flood line at ad %d beyond the rate; want ad %d", excess, FloodExcess)
			}
			break
		}
		if i > 100 {
			t.Fatal("two topics: never crossed the flood line")
		}
	}
	// The catalogue: two messages in a burst, then the third beyond crosses
	// the line (the fifth message at once).
	for i := 1; ; i++ {
		_, flood := l.take(rateKey{peer.ID("catalogue"), catalogueKey}, catalogueRule, t0)
		if flood {
			if i != 5 {
				t.Errorf("catalogue: crossed the flood line at message %d of a burst; want 5", i)
			}
			break
		}
		if i > 100 {
			t.Fatal("catalogue: never crossed the flood line")
		}
	}
	l.prune(t0.Add(time.Hour))
	if len(l.buckets) != 0 {
		t.Errorf("%d buckets left after an idle hour", len(l.buckets))
	}
}

func TestDecodeCatalogue(t *testing.T) {
	for _, c := range []struct {
		in string
		ok bool
	}{
		{"stories260K", true},
		{"a\nb", true},
		{"", false},
		{"a\n\nb", false},
		{"a\na", false},
		{"a\x01b", false},
		{"\xff", false},
	} {
		if _, ok := DecodeCatalogue([]byte(c.in)); ok != c.ok {
			t.Errorf("DecodeCatalogue(%q) ok = %v; want %v", c.in, ok, c.ok)
		}
	}
}

// TestBlockedPeersAdInFlight: an ad (or a catalogue message) of a peer validated just after the peer
// was blocked (gossipsub validates concurrently: it passed the blacklist
// before the ad that crossed the flood line blocked its origin) is not
// admitted. block forgets the peer's rates, so without the check it would
// come back with a fresh burst and relist the flooder's model.
func TestBlockedPeersAdInFlight(t *testing.T) {
	mn, nd := mockNode(t)
	flooder, err := mn.GenPeer()
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(ClientConfig{Node: nd, Payer: func(market.Candidate) (market.Payer, error) { return nil, nil },
		Models: []string{"m"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	b := StrangerAd(t, flooder.ID(), "m", 1)
	c.block(flooder.ID(), "test")
	if r := c.gate.Validate(context.Background(), "m", flooder.ID(), flooder.ID(), b); r == pubsub.ValidationAccept {
		t.Error("a blocked peer's ad in flight was accepted")
	}
	if _, ok := c.book.Get(flooder.ID()); ok {
		t.Error("a blocked peer's ad in flight is in the book")
	}
	if r := c.validateCatalogue(context.Background(), flooder.ID(), flooder.ID(), EncodeCatalogue([]string{"m"})); r == pubsub.ValidationAccept {
		t.Error("a blocked peer's catalogue message in flight was accepted")
	}
	c.cat.mu.Lock()
	_, listed := c.cat.ads[flooder.ID()]
	c.cat.mu.Unlock()
	if listed {
		t.Error("a blocked peer's catalogue message in flight lists its models")
	}
}
