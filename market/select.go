package market

import (
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/runtime"
)

// Policy is what a client demands of the workers for one job.
type Policy struct {
	Model string
	// TEE lists the acceptable enclave kinds; empty accepts tdx and sev-snp only
	// (a real TEE). A node sets it from its enclave policy (enclave.Policy.Kinds),
	// the same list its verifier checks the workers' evidence against.
	TEE []tee.Kind
	// MaxPrice caps each price; a zero field means no cap on that price.
	MaxPrice Price
	// Request, when set, admits only offers that serve it: that have every
	// capability it uses (runtime.Model.Serves: a response format, tools,
	// logprobs, logit_bias, images). Nil: plain text.
	Request *runtime.Request
	// Embed admits only offers of embeddings.
	Embed bool
}

// Serves reports whether o has what the job uses; the error names the
// request's field o lacks.
func (p Policy) Serves(o ModelOffer) error {
	if p.Embed {
		if err := o.Model().ServesEmbeddings(); err != nil {
			return err
		}
	}
	if p.Request != nil {
		return o.Model().Serves(*p.Request)
	}
	return nil
}

// NeedsAd reports whether the job uses a capability that only a worker's ad
// says it has, so that a provider known only from the DHT cannot take it.
func (p Policy) NeedsAd() bool {
	return p.Serves(ModelOffer{ID: p.Model}) != nil
}

// Allows reports whether a worker in an enclave of kind k meets the policy.
func (p Policy) Allows(k tee.Kind) bool {
	if len(p.TEE) == 0 {
		return k.Confidential()
	}
	return slices.Contains(p.TEE, k)
}

// offer is a's offer of p.Model when a satisfies p.
func (p Policy) offer(a *Ad) (ModelOffer, bool) {
	o, ok := a.Offer(p.Model)
	if !ok || !p.Allows(a.TEE.Kind) || p.Serves(o) != nil ||
		(p.MaxPrice.Prompt != 0 && o.Price.Prompt > p.MaxPrice.Prompt) ||
		(p.MaxPrice.Completion != 0 && o.Price.Completion > p.MaxPrice.Completion) {
		return ModelOffer{}, false
	}
	return o, true
}

// Candidate is one worker that can run a job, with the score Select gave it
// (lower is better).
type Candidate struct {
	Peer  peer.ID
	Ad    *Ad
	Offer ModelOffer
	Score float64
}

// Selector ranks workers from a Book with what this node measured of them: a
// latency EWMA and a success ratio from its own receipts. It skips a worker
// whose connection has just failed (MarkDown) until it shows it is back. It is
// safe for concurrent use.
//
// An ad costs nothing to publish, so a worker's word weighs only once this
// node has been served by it: a worker is proven once a job with it ended as
// agreed (Record, RecordOutcome). Select puts proven workers first (see
// Select), and a worker marked down that was never proven stays down for
// DownFor whatever it publishes meanwhile.
type Selector struct {
	Book *Book
	// Rand picks among the best candidates (power of two choices); nil: a
	// random source. Tests inject a seeded one.
	Rand *rand.Rand
	// Top is how many of the best candidates the first pick is made from (0: 4).
	Top int
	// Weights of the score's factors (0: defaults 1, 0.5, 2): price, latency,
	// reputation. The score is price^Wp · latency^Wl · slots · (1/rep)^Wr, each
	// factor normalised to the best candidate.
	PriceWeight, LatencyWeight, ReputationWeight float64
	// DownFor is how long a worker marked down is skipped when no newer ad of
	// it arrives first (0: DefaultDownFor).
	DownFor time.Duration
	// Explore is the chance that the first pick is made among every
	// candidate's best rather than only the proven ones, so that new workers
	// earn their first jobs on a quiet network (0: DefaultExplore; negative:
	// never).
	Explore float64

	mu    sync.Mutex
	stats map[peer.ID]*peerStats
}

// DefaultDownFor is Selector.DownFor's default: an ad's lifetime, so that a
// worker that is gone costs a client at most one failed dial before its ad
// expires, while one that is alive is back with its next ad (every 10 s).
const DefaultDownFor = DefaultAdTTL

// DefaultExplore is Selector.Explore's default: one request in 16 may go
// first to an unproven worker. A peer that fails it is down for DownFor, so
// each identity of a peer that serves nothing costs this node at most one
// failed attempt per DownFor.
const DefaultExplore = 1.0 / 16

type peerStats struct {
	ewma      time.Duration // measured time to first token; 0 until measured
	successes uint64
	failures  uint64
	downUntil time.Time // zero: up
	downSeq   uint64    // the seq of its ad in the book when it went down
}

// latencyAlpha is the EWMA weight of a new latency sample.
const latencyAlpha = 0.3

// ObserveLatency folds a measured time to first token of p into its EWMA.
func (s *Selector) ObserveLatency(p peer.ID, ttft time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stat(p)
	if st.ewma == 0 {
		st.ewma = ttft
		return
	}
	st.ewma = time.Duration(latencyAlpha*float64(ttft) + (1-latencyAlpha)*float64(st.ewma))
}

// RecordOutcome counts a finished job with p: ok when it ended as agreed. A
// violation (over-reported usage, ignored cancel or credit) weighs as three
// failures.
func (s *Selector) RecordOutcome(p peer.ID, ok, violation bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stat(p)
	switch {
	case violation:
		st.failures += 3
	case ok:
		st.successes++
	default:
		st.failures++
	}
}

// Record folds a receipt of Run into p's latency and reputation; err is Run's
// error, which should not be one the caller caused (its own cancel).
func (s *Selector) Record(p peer.ID, r Receipt, err error) {
	if r.TTFT > 0 {
		s.ObserveLatency(p, r.TTFT)
	}
	s.RecordOutcome(p, err == nil, r.Violation != ViolationNone)
}

// MarkDown records that the connection to p has just failed: a dial that did
// not reach it, a connection that closed, a probe it did not answer, a job it
// refused or never answered. Select skips p until DownFor passes or, for a
// proven worker, until the book holds an ad of p newer than the one it holds
// now (only a live worker publishes one), so that the next caller does not
// spend a dial timeout, or a phase deadline on a dead connection, on a worker
// that is gone. A peer that never served this node is not let back by its
// ads: it could publish one a second and serve nothing.
func (s *Selector) MarkDown(p peer.ID) {
	var seq uint64
	if s.Book != nil {
		if a, ok := s.Book.Get(p); ok {
			seq = a.Seq
		}
	}
	d := s.DownFor
	if d <= 0 {
		d = DefaultDownFor
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stat(p)
	st.downUntil, st.downSeq = time.Now().Add(d), max(st.downSeq, seq)
}

// Down reports whether Select skips p now (see MarkDown).
func (s *Selector) Down(p peer.ID) bool {
	var seq uint64
	if s.Book != nil {
		if a, ok := s.Book.Get(p); ok {
			seq = a.Seq
		}
	}
	return s.down(p, seq)
}

// down reports whether p, whose newest ad has seq, is down; it ends the mark
// when the time is up or, if p is proven, its ad is newer.
func (s *Selector) down(p peer.ID, seq uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.stats[p]
	if !ok || st.downUntil.IsZero() {
		return false
	}
	if (seq > st.downSeq && st.successes > 0) || !time.Now().Before(st.downUntil) {
		st.downUntil = time.Time{}
		return false
	}
	return true
}

// DownPeers lists the workers that satisfy pol but are marked down now: what
// Select left out.
func (s *Selector) DownPeers(pol Policy) []peer.ID {
	var out []peer.ID
	for _, a := range s.Book.ByModel(pol.Model) {
		if _, ok := pol.offer(a); ok && s.down(a.Peer, a.Seq) {
			out = append(out, a.Peer)
		}
	}
	return out
}

// Reputation returns p's success ratio with a uniform prior: (s+1)/(s+f+2).
func (s *Selector) Reputation(p peer.ID) float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stat(p)
	return float64(st.successes+1) / float64(st.successes+st.failures+2)
}

func (s *Selector) stat(p peer.ID) *peerStats {
	if s.stats == nil {
		s.stats = make(map[peer.ID]*peerStats)
	}
	st, ok := s.stats[p]
	if !ok {
		st = &peerStats{}
		s.stats[p] = st
	}
	return st
}

// Reference job sizes used to compare two price pairs.
const refPrompt, refCompletion = 500, 250

// Select returns the workers that satisfy pol, in the order to try them.
// Workers marked down are left out. It returns nil when no worker qualifies.
//
// The order: each candidate is scored (price, latency, slots, reputation;
// lower is better). The first is the better of two drawn at random among the
// Top best proven workers (those that finished a job for this node), or among
// the Top best of all when none is proven or, with probability Explore, to
// let new workers in. The rest alternate, by score, between proven and
// unproven workers, a proven one first, until either kind runs out: of the
// first k tried at most about half are unproven while proven ones remain, so
// peers that undercut every price and serve nothing cannot push the workers
// that have served out of a request's attempts.
func (s *Selector) Select(pol Policy) []Candidate {
	ads := s.Book.ByModel(pol.Model)
	cands := make([]Candidate, 0, len(ads))
	for _, a := range ads {
		o, ok := pol.offer(a)
		if !ok || s.down(a.Peer, a.Seq) {
			continue
		}
		cands = append(cands, Candidate{Peer: a.Peer, Ad: a, Offer: o})
	}
	if len(cands) == 0 {
		return nil
	}
	s.score(cands)
	// Sort indices, not the large Candidate values. Ties go to the lower peer ID,
	// so the order is total and reproducible.
	order := make([]int, len(cands))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(i, j int) int {
		x, y := &cands[i], &cands[j]
		switch {
		case x.Score < y.Score:
			return -1
		case x.Score > y.Score:
			return 1
		case x.Peer < y.Peer:
			return -1
		case x.Peer > y.Peer:
			return 1
		}
		return 0
	})
	sorted := make([]Candidate, len(cands))
	proven := make(map[peer.ID]bool)
	s.mu.Lock()
	for k, i := range order {
		sorted[k] = cands[i]
		if st, ok := s.stats[cands[i].Peer]; ok && st.successes > 0 {
			proven[cands[i].Peer] = true
		}
	}
	mixed := len(proven) > 0 && len(proven) < len(sorted)
	explore := s.Explore
	if explore == 0 {
		explore = DefaultExplore
	}
	exploring := mixed && s.float64() < explore
	s.mu.Unlock()
	if !mixed {
		s.pickFirst(sorted)
		return sorted
	}
	split := func(cs []Candidate) (old, fresh []Candidate) {
		for _, c := range cs {
			if proven[c.Peer] {
				old = append(old, c)
			} else {
				fresh = append(fresh, c)
			}
		}
		return old, fresh
	}
	if exploring {
		s.pickFirst(sorted)
		old, fresh := split(sorted[1:])
		return append([]Candidate{sorted[0]}, interleave(old, fresh)...)
	}
	old, fresh := split(sorted)
	s.pickFirst(old)
	return interleave(old, fresh)
}

// float64 draws from s.Rand, or the global source without one; s.mu is held.
func (s *Selector) float64() float64 {
	if s.Rand != nil {
		return s.Rand.Float64()
	}
	return rand.Float64()
}

// interleave merges two lists in score order, alternating from a's head:
// a[0], b[0], a[1], b[1], …, then what remains of the longer one.
func interleave(a, b []Candidate) []Candidate {
	out := make([]Candidate, 0, len(a)+len(b))
	for i := 0; i < max(len(a), len(b)); i++ {
		if i < len(a) {
			out = append(out, a[i])
		}
		if i < len(b) {
			out = append(out, b[i])
		}
	}
	return out
}

// pickFirst moves to the front of cands, sorted by score, the better of two
// drawn at random among its Top best (power of two choices).
func (s *Selector) pickFirst(cands []Candidate) {
	top := s.Top
	if top <= 0 {
		top = 4
	}
	top = min(top, len(cands))
	if top < 2 {
		return
	}
	var i, j int
	if r := s.Rand; r != nil {
		s.mu.Lock() // a *rand.Rand is not safe for concurrent use
		i, j = r.IntN(top), r.IntN(top-1)
		s.mu.Unlock()
	} else {
		i, j = rand.IntN(top), rand.IntN(top-1)
	}
	if j >= i {
		j++
	}
	pick := min(i, j) // sorted: the lower index has the better score
	first := cands[pick]
	copy(cands[1:pick+1], cands[:pick])
	cands[0] = first
}

func (s *Selector) score(cands []Candidate) {
	wp, wl, wr := s.PriceWeight, s.LatencyWeight, s.ReputationWeight
	if wp == 0 && wl == 0 && wr == 0 {
		wp, wl, wr = 1, 0.5, 2
	}
	price := make([]float64, len(cands))
	lat := make([]float64, len(cands))
	minPrice, minLat := math.Inf(1), math.Inf(1)
	s.mu.Lock()
	for i, c := range cands {
		// +1 keeps free offers comparable instead of dividing by zero.
		price[i] = float64(c.Offer.Price.Prompt)*refPrompt + float64(c.Offer.Price.Completion)*refCompletion + 1
		l := c.Offer.TTFT
		if st, ok := s.stats[c.Peer]; ok && st.ewma > 0 {
			l = st.ewma
		}
		lat[i] = math.Max(float64(l), float64(time.Millisecond))
		minPrice = math.Min(minPrice, price[i])
		minLat = math.Min(minLat, lat[i])
	}
	for i := range cands {
		c := &cands[i]
		rep := 0.5
		if st, ok := s.stats[c.Peer]; ok {
			rep = float64(st.successes+1) / float64(st.successes+st.failures+2)
		}
		slots := 1.0
		if cap := c.Ad.Capacity; cap.SlotsFree == 0 {
			slots = 2 + float64(cap.QueueLength)/float64(max(cap.SlotsTotal, 1))
		}
		c.Score = math.Pow(price[i]/minPrice, wp) * math.Pow(lat[i]/minLat, wl) * slots * math.Pow(0.5/rep, wr)
	}
	s.mu.Unlock()
}
