// Package activity keeps what a node's status page shows of its market: the
// jobs in flight, the recent jobs done, what this node knows of each peer it
// traded with (jobs, last job, attestation verdict), and the totals earned
// (worker side) and spent (client side). The node (package node) creates one
// Journal per node and hands it to the market services as their
// market.Observer; the gateway reads it through Snapshot.
//
// The journal is memory only: it restarts empty with the node. The money it
// counts is what the vouchers carried (each voucher a client signed or a
// worker accepted); the channel store (package settle) stays the books.
package activity

import (
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/market"
)

// Limits of what a journal holds, so that a long-running node or a flood of
// peers cannot grow it without bound.
const (
	// MaxPeers is how many peers a journal remembers; the one heard from least
	// recently is forgotten first.
	MaxPeers = 1024
	// MaxInFlight caps the jobs in flight tracked; a job started beyond it is
	// counted in the totals but not listed.
	MaxInFlight = 4096
	// MaxErrLen caps the error text kept per job or verdict, in bytes.
	MaxErrLen = 300
)

// Job is one job as the status page lists it, in flight or done.
type Job struct {
	ID    string // hex job ID
	Side  market.Side
	Peer  peer.ID // the other side: the worker for a client, the client for a worker
	Model string
	Start time.Time
	// End is zero while the job is in flight.
	End      time.Time
	TTFT     time.Duration
	Duration time.Duration
	// PromptTokens and CompletionTokens are known once the job ended.
	PromptTokens     uint64
	CompletionTokens uint64
	// NanoTON is what the job's vouchers carried: while in flight, the sum of
	// the vouchers so far; once done, the job's final total.
	NanoTON uint64
	Outcome market.Outcome // empty while in flight
	Err     string         // why, when the outcome is not ok (at most MaxErrLen bytes)
}

// Peer is what this node knows of one peer from its market: the jobs it traded
// with it and the last attestation verdict it reached on it.
type Peer struct {
	ID peer.ID
	// Jobs counts the jobs done with this peer, both sides together; OK those
	// that ended ok.
	Jobs, OK uint64
	// InFlight counts its jobs in flight now.
	InFlight int
	LastJob  time.Time // when the last job with it ended; zero: none yet
	// Earned and Spent are the nanoTON its vouchers carried to and from this node.
	Earned, Spent uint64
	// TTFT is the time to first token this node measured as a client of the
	// peer, an exponentially weighted average; zero until measured.
	TTFT time.Duration
	// Verdict is the last attestation verdict (market.VerdictAccepted or
	// market.VerdictRefused), empty when this node never attested it; Kind and
	// Tier name the accepted TEE; AttestErr says why it was refused.
	Verdict   string
	Kind      tee.Kind
	Tier      string
	AttestErr string
	Attested  time.Time
	LastSeen  time.Time // the last event about this peer
}

// Totals counts one side's jobs.
type Totals struct {
	Jobs             uint64 // jobs done
	ByOutcome        map[market.Outcome]uint64
	PromptTokens     uint64
	CompletionTokens uint64
	// NanoTON is the sum of the side's vouchers: earned (worker) or spent (client).
	NanoTON uint64
	// Vouchers counts them.
	Vouchers uint64
}

// Snapshot is a copy of a journal at one instant; the caller owns it.
type Snapshot struct {
	InFlight []Job  // oldest first
	Done     []Job  // newest first, at most the journal's keep
	Peers    []Peer // most recently heard from first
	// Worker counts the jobs this node sold, Client those it bought.
	Worker, Client Totals
}

// Earned is the nanoTON this node earned as a worker.
func (s Snapshot) Earned() uint64 { return s.Worker.NanoTON }

// Spent is the nanoTON this node spent as a client.
func (s Snapshot) Spent() uint64 { return s.Client.NanoTON }

// Peer returns what the snapshot holds of p.
func (s Snapshot) Peer(p peer.ID) (Peer, bool) {
	for _, x := range s.Peers {
		if x.ID == p {
			return x, true
		}
	}
	return Peer{}, false
}

// ttftAlpha is the weight of a new sample in a peer's TTFT average (the
// market's selector uses the same).
const ttftAlpha = 0.3

type flightKey struct {
	side market.Side
	id   market.JobID
	peer peer.ID
}

// Journal records a node's recent market activity. It implements
// market.Observer and is safe for concurrent use; every method returns quickly
// (no I/O, bounded work).
type Journal struct {
	keep int
	now  func() time.Time

	mu       sync.Mutex
	inflight map[flightKey]*Job
	done     []Job // ring buffer of the last keep jobs; next is the slot to write
	next     int
	full     bool
	peers    map[peer.ID]*Peer
	totals   map[market.Side]*Totals
}

var _ market.Observer = (*Journal)(nil)

// New returns a journal keeping the last keep jobs done (at least 1).
func New(keep int) *Journal {
	return NewWithClock(keep, time.Now)
}

// NewWithClock is New with the clock that stamps end and attestation times,
// for tests.
func NewWithClock(keep int, now func() time.Time) *Journal {
	if keep < 1 {
		keep = 1
	}
	return &Journal{
		keep:     keep,
		now:      now,
		inflight: make(map[flightKey]*Job),
		done:     make([]Job, keep),
		peers:    make(map[peer.ID]*Peer),
		totals: map[market.Side]*Totals{
			market.SideClient: {ByOutcome: map[market.Outcome]uint64{}},
			market.SideWorker: {ByOutcome: map[market.Outcome]uint64{}},
		},
	}
}

// JobStarted implements market.Observer.
func (j *Journal) JobStarted(e market.JobEvent) {
	j.mu.Lock()
	defer j.mu.Unlock()
	p := j.peer(e.Peer)
	k := flightKey{e.Side, e.ID, e.Peer}
	if _, dup := j.inflight[k]; dup || len(j.inflight) >= MaxInFlight {
		return
	}
	start := e.Start
	if start.IsZero() {
		start = j.now()
	}
	j.inflight[k] = &Job{ID: e.ID.String(), Side: e.Side, Peer: e.Peer, Model: e.Model, Start: start}
	p.InFlight++
}

// JobEnded implements market.Observer.
func (j *Journal) JobEnded(e market.JobEvent) {
	now := j.now()
	j.mu.Lock()
	defer j.mu.Unlock()
	p := j.peer(e.Peer)
	if j.endFlight(e) {
		p.InFlight--
	}
	job := Job{
		ID: e.ID.String(), Side: e.Side, Peer: e.Peer, Model: e.Model, Start: e.Start, End: now,
		TTFT: e.TTFT, Duration: e.Duration, PromptTokens: e.PromptTokens, CompletionTokens: e.CompletionTokens,
		NanoTON: e.NanoTON, Outcome: e.Outcome,
	}
	if e.Err != nil {
		job.Err = clip(e.Err.Error())
	}
	j.done[j.next] = job
	j.next = (j.next + 1) % j.keep
	if j.next == 0 {
		j.full = true
	}

	p.Jobs++
	if e.Outcome == market.OutcomeOK {
		p.OK++
	}
	p.LastJob = now
	if e.Side == market.SideClient && e.TTFT > 0 {
		if p.TTFT == 0 {
			p.TTFT = e.TTFT
		} else {
			p.TTFT = time.Duration(ttftAlpha*float64(e.TTFT) + (1-ttftAlpha)*float64(p.TTFT))
		}
	}
	if t := j.totals[e.Side]; t != nil {
		t.Jobs++
		t.ByOutcome[e.Outcome]++
		t.PromptTokens += e.PromptTokens
		t.CompletionTokens += e.CompletionTokens
	}
}

// endFlight removes e's job from the jobs in flight and reports whether it was
// there. A client attempt that failed before it had a job ID ends with a zero
// ID: it then ends the oldest flight of that side and peer.
func (j *Journal) endFlight(e market.JobEvent) bool {
	k := flightKey{e.Side, e.ID, e.Peer}
	if _, ok := j.inflight[k]; ok {
		delete(j.inflight, k)
		return true
	}
	var oldest *flightKey
	var at time.Time
	for fk, f := range j.inflight {
		if fk.side != e.Side || fk.peer != e.Peer {
			continue
		}
		if e.ID != (market.JobID{}) && fk.id != (market.JobID{}) {
			continue // another job of that peer
		}
		if oldest == nil || f.Start.Before(at) {
			c := fk
			oldest, at = &c, f.Start
		}
	}
	if oldest == nil {
		return false
	}
	delete(j.inflight, *oldest)
	return true
}

// Voucher implements market.Observer.
func (j *Journal) Voucher(e market.VoucherEvent) {
	j.mu.Lock()
	defer j.mu.Unlock()
	p := j.peer(e.Peer)
	if f, ok := j.inflight[flightKey{e.Side, e.Job, e.Peer}]; ok {
		f.NanoTON += e.NanoTON
	}
	switch e.Side {
	case market.SideWorker:
		p.Earned += e.NanoTON
	case market.SideClient:
		p.Spent += e.NanoTON
	}
	if t := j.totals[e.Side]; t != nil {
		t.NanoTON += e.NanoTON
		t.Vouchers++
	}
}

// Attested implements market.Observer.
func (j *Journal) Attested(e market.AttestEvent) {
	now := j.now()
	j.mu.Lock()
	defer j.mu.Unlock()
	p := j.peer(e.Peer)
	p.Verdict, p.Kind, p.Tier, p.Attested, p.AttestErr = e.Verdict, e.Kind, e.Tier, now, ""
	if e.Err != nil {
		p.AttestErr = clip(e.Err.Error())
	}
}

// peer returns p's record, creating it (and forgetting the stalest peer when
// the journal is full). The caller holds j.mu.
func (j *Journal) peer(id peer.ID) *Peer {
	now := j.now()
	if p, ok := j.peers[id]; ok {
		p.LastSeen = now
		return p
	}
	if len(j.peers) >= MaxPeers {
		var stale *Peer
		for _, p := range j.peers {
			if p.InFlight == 0 && (stale == nil || p.LastSeen.Before(stale.LastSeen)) {
				stale = p
			}
		}
		if stale != nil {
			delete(j.peers, stale.ID)
		}
	}
	p := &Peer{ID: id, LastSeen: now}
	j.peers[id] = p
	return p
}

// Snapshot returns a copy of the journal.
func (j *Journal) Snapshot() Snapshot {
	j.mu.Lock()
	defer j.mu.Unlock()
	var s Snapshot
	s.InFlight = make([]Job, 0, len(j.inflight))
	for _, f := range j.inflight {
		s.InFlight = append(s.InFlight, *f)
	}
	slices.SortFunc(s.InFlight, func(a, b Job) int { return a.Start.Compare(b.Start) })
	n := j.next
	if j.full {
		n = j.keep
	}
	s.Done = make([]Job, 0, n)
	for i := 1; i <= n; i++ {
		s.Done = append(s.Done, j.done[(j.next-i+j.keep)%j.keep])
	}
	s.Peers = make([]Peer, 0, len(j.peers))
	for _, p := range j.peers {
		s.Peers = append(s.Peers, *p)
	}
	slices.SortFunc(s.Peers, func(a, b Peer) int {
		if c := b.LastSeen.Compare(a.LastSeen); c != 0 {
			return c
		}
		return compareIDs(a.ID, b.ID)
	})
	s.Worker = j.totals[market.SideWorker].clone()
	s.Client = j.totals[market.SideClient].clone()
	return s
}

func compareIDs(a, b peer.ID) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (t *Totals) clone() Totals {
	c := *t
	c.ByOutcome = make(map[market.Outcome]uint64, len(t.ByOutcome))
	for k, v := range t.ByOutcome {
		c.ByOutcome[k] = v
	}
	return c
}

func clip(s string) string {
	if len(s) <= MaxErrLen {
		return s
	}
	// Cut on a rune boundary.
	cut := MaxErrLen
	for cut > 0 && s[cut]&0xC0 == 0x80 {
		cut--
	}
	return s[:cut] + "…"
}
