package activity

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/market"
)

// clock is a manual clock for the journal's timestamps.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newClock() *clock { return &clock{t: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)} }

func jobID(n byte) market.JobID {
	var id market.JobID
	id[0] = n
	return id
}

func TestJournalJobLifecycle(t *testing.T) {
	clk := newClock()
	j := NewWithClock(10, clk.now)
	worker, client := peer.ID("worker-1"), peer.ID("client-1")

	// This node buys a job from worker (client side) and sells one to client.
	j.JobStarted(market.JobEvent{ID: jobID(1), Side: market.SideClient, Peer: worker, Model: "m", Start: clk.now()})
	j.JobStarted(market.JobEvent{ID: jobID(2), Side: market.SideWorker, Peer: client, Model: "m", Start: clk.now().Add(time.Millisecond)})
	j.Voucher(market.VoucherEvent{Side: market.SideClient, Peer: worker, Job: jobID(1), NanoTON: 40})
	j.Voucher(market.VoucherEvent{Side: market.SideWorker, Peer: client, Job: jobID(2), NanoTON: 7})

	s := j.Snapshot()
	if len(s.InFlight) != 2 || len(s.Done) != 0 {
		t.Fatalf("in flight %d, done %d; want 2, 0", len(s.InFlight), len(s.Done))
	}
	if f := s.InFlight[0]; f.ID != jobID(1).String() || f.Side != market.SideClient || f.NanoTON != 40 || !f.End.IsZero() {
		t.Fatalf("first job in flight = %+v; want job 1, client side, 40 nanoTON so far", f)
	}
	if p, _ := s.Peer(worker); p.InFlight != 1 || p.Spent != 40 || p.Jobs != 0 {
		t.Fatalf("worker peer = %+v; want 1 in flight, 40 spent, 0 jobs", p)
	}
	if s.Spent() != 40 || s.Earned() != 7 {
		t.Fatalf("spent %d earned %d; want 40, 7", s.Spent(), s.Earned())
	}

	clk.add(2 * time.Second)
	j.Voucher(market.VoucherEvent{Side: market.SideClient, Peer: worker, Job: jobID(1), NanoTON: 60})
	j.JobEnded(market.JobEvent{ID: jobID(1), Side: market.SideClient, Peer: worker, Model: "m", Start: clk.now().Add(-2 * time.Second),
		TTFT: 100 * time.Millisecond, Duration: 2 * time.Second, PromptTokens: 5, CompletionTokens: 24, NanoTON: 100, Outcome: market.OutcomeOK})
	j.JobEnded(market.JobEvent{ID: jobID(2), Side: market.SideWorker, Peer: client, Model: "m", Duration: time.Second,
		PromptTokens: 3, CompletionTokens: 1, NanoTON: 7, Outcome: market.OutcomeUnderpaid, Err: errors.New("final voucher never came")})

	s = j.Snapshot()
	if len(s.InFlight) != 0 || len(s.Done) != 2 {
		t.Fatalf("in flight %d, done %d; want 0, 2", len(s.InFlight), len(s.Done))
	}
	// Newest first.
	if d := s.Done[0]; d.ID != jobID(2).String() || d.Outcome != market.OutcomeUnderpaid || d.Err != "final voucher never came" || d.End != clk.now() {
		t.Fatalf("newest done = %+v", d)
	}
	if d := s.Done[1]; d.NanoTON != 100 || d.CompletionTokens != 24 || d.TTFT != 100*time.Millisecond || d.Outcome != market.OutcomeOK || d.Err != "" {
		t.Fatalf("older done = %+v", d)
	}
	p, ok := s.Peer(worker)
	if !ok || p.Jobs != 1 || p.OK != 1 || p.InFlight != 0 || p.Spent != 100 || p.TTFT != 100*time.Millisecond || p.LastJob != clk.now() {
		t.Fatalf("worker peer = %+v", p)
	}
	if p, _ := s.Peer(client); p.Jobs != 1 || p.OK != 0 || p.Earned != 7 || p.TTFT != 0 {
		t.Fatalf("client peer = %+v (a worker-side job measures no TTFT)", p)
	}
	if s.Client.Jobs != 1 || s.Client.ByOutcome[market.OutcomeOK] != 1 || s.Client.CompletionTokens != 24 || s.Client.NanoTON != 100 || s.Client.Vouchers != 2 {
		t.Fatalf("client totals = %+v", s.Client)
	}
	if s.Worker.Jobs != 1 || s.Worker.ByOutcome[market.OutcomeUnderpaid] != 1 || s.Worker.PromptTokens != 3 || s.Worker.NanoTON != 7 {
		t.Fatalf("worker totals = %+v", s.Worker)
	}
}

func TestJournalTTFTAverage(t *testing.T) {
	j := New(4)
	w := peer.ID("w")
	for i, ttft := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond} {
		j.JobStarted(market.JobEvent{ID: jobID(byte(i)), Side: market.SideClient, Peer: w})
		j.JobEnded(market.JobEvent{ID: jobID(byte(i)), Side: market.SideClient, Peer: w, TTFT: ttft, Outcome: market.OutcomeOK})
	}
	// 0.3·200 + 0.7·100 = 130 ms
	if p, _ := j.Snapshot().Peer(w); p.TTFT != 130*time.Millisecond {
		t.Fatalf("TTFT average = %s; want 130ms", p.TTFT)
	}
}

func TestJournalKeepsLastN(t *testing.T) {
	j := New(3)
	w := peer.ID("w")
	for i := range 5 {
		j.JobEnded(market.JobEvent{ID: jobID(byte(i)), Side: market.SideWorker, Peer: w, Outcome: market.OutcomeOK})
	}
	s := j.Snapshot()
	var got []string
	for _, d := range s.Done {
		got = append(got, d.ID[:2])
	}
	if strings.Join(got, ",") != "04,03,02" {
		t.Fatalf("done = %v; want the last three, newest first: 04,03,02", got)
	}
	if p, _ := s.Peer(w); p.Jobs != 5 || s.Worker.Jobs != 5 {
		t.Fatalf("counts: peer %d, worker %d; want 5 (the counts keep every job)", p.Jobs, s.Worker.Jobs)
	}
}

// A client attempt that fails before it has a job ID ends with a zero ID; it
// still leaves the jobs in flight.
func TestJournalEndWithoutID(t *testing.T) {
	j := New(3)
	w := peer.ID("w")
	j.JobStarted(market.JobEvent{ID: jobID(9), Side: market.SideClient, Peer: w})
	j.JobStarted(market.JobEvent{ID: jobID(8), Side: market.SideWorker, Peer: w}) // other side: stays
	j.JobEnded(market.JobEvent{Side: market.SideClient, Peer: w, Outcome: market.OutcomeFailed, Err: errors.New("dial: refused")})
	s := j.Snapshot()
	if len(s.InFlight) != 1 || s.InFlight[0].Side != market.SideWorker {
		t.Fatalf("in flight = %+v; want only the worker-side job", s.InFlight)
	}
	if p, _ := s.Peer(w); p.InFlight != 1 || p.Jobs != 1 {
		t.Fatalf("peer = %+v; want 1 in flight, 1 done", p)
	}
	// An end never started changes no flight.
	j.JobEnded(market.JobEvent{ID: jobID(7), Side: market.SideWorker, Peer: w, Outcome: market.OutcomeOK})
	if p, _ := j.Snapshot().Peer(w); p.InFlight != 1 || p.Jobs != 2 {
		t.Fatalf("peer = %+v; want 1 in flight, 2 done", p)
	}
}

func TestJournalAttestation(t *testing.T) {
	clk := newClock()
	j := NewWithClock(3, clk.now)
	w := peer.ID("w")
	j.Attested(market.AttestEvent{Peer: w, Kind: tee.Sim, Tier: tee.Sim.Tier(), Verdict: market.VerdictAccepted})
	p, _ := j.Snapshot().Peer(w)
	if p.Verdict != market.VerdictAccepted || p.Kind != tee.Sim || p.Tier != tee.Sim.Tier() || p.Attested != clk.now() || p.AttestErr != "" {
		t.Fatalf("peer = %+v", p)
	}
	clk.add(time.Minute)
	j.Attested(market.AttestEvent{Peer: w, Verdict: market.VerdictRefused, Err: errors.New("measurement " + strings.Repeat("é", 400))})
	p, _ = j.Snapshot().Peer(w)
	if p.Verdict != market.VerdictRefused || p.Kind != "" || p.Tier != "" || p.Attested != clk.now() {
		t.Fatalf("peer after refusal = %+v", p)
	}
	if len(p.AttestErr) > MaxErrLen+len("…") || !strings.HasPrefix(p.AttestErr, "measurement é") || !strings.HasSuffix(p.AttestErr, "…") {
		t.Fatalf("refusal error not clipped on a rune boundary: %d bytes, %q", len(p.AttestErr), p.AttestErr)
	}
	for _, r := range p.AttestErr {
		if r == '\uFFFD' {
			t.Fatalf("clipped error holds an invalid rune: %q", p.AttestErr)
		}
	}
}

func TestJournalForgetsStalestPeer(t *testing.T) {
	clk := newClock()
	j := NewWithClock(1, clk.now)
	busy := peer.ID("busy")
	j.JobStarted(market.JobEvent{ID: jobID(1), Side: market.SideWorker, Peer: busy})
	for i := range MaxPeers {
		clk.add(time.Millisecond)
		j.Attested(market.AttestEvent{Peer: peer.ID(fmt.Sprint("p", i)), Verdict: market.VerdictAccepted})
	}
	s := j.Snapshot()
	if len(s.Peers) != MaxPeers {
		t.Fatalf("%d peers kept; want %d", len(s.Peers), MaxPeers)
	}
	if _, ok := s.Peer(busy); !ok {
		t.Fatal("a peer with a job in flight was forgotten")
	}
	if _, ok := s.Peer("p0"); ok {
		t.Fatal("the stalest idle peer p0 was kept")
	}
	if s.Peers[0].ID != peer.ID(fmt.Sprint("p", MaxPeers-1)) {
		t.Fatalf("first peer %s; want the most recent", s.Peers[0].ID)
	}
}

// Many goroutines at once (run with -race): the totals add up.
func TestJournalConcurrent(t *testing.T) {
	j := New(50)
	var wg sync.WaitGroup
	const n, per = 8, 100
	for g := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := peer.ID(fmt.Sprint("w", g))
			for i := range per {
				id := jobID(byte(i))
				id[1] = byte(g)
				j.JobStarted(market.JobEvent{ID: id, Side: market.SideClient, Peer: p})
				j.Voucher(market.VoucherEvent{Side: market.SideClient, Peer: p, Job: id, NanoTON: 3})
				_ = j.Snapshot()
				j.JobEnded(market.JobEvent{ID: id, Side: market.SideClient, Peer: p, NanoTON: 3, Outcome: market.OutcomeOK})
			}
		}()
	}
	wg.Wait()
	s := j.Snapshot()
	if s.Client.Jobs != n*per || s.Spent() != 3*n*per || len(s.InFlight) != 0 || len(s.Done) != 50 {
		t.Fatalf("jobs %d, spent %d, in flight %d, done %d; want %d, %d, 0, 50", s.Client.Jobs, s.Spent(), len(s.InFlight), len(s.Done), n*per, 3*n*per)
	}
}

// The snapshot is a copy: later events do not change it.
func TestSnapshotIsACopy(t *testing.T) {
	j := New(2)
	w := peer.ID("w")
	j.JobEnded(market.JobEvent{ID: jobID(1), Side: market.SideClient, Peer: w, Outcome: market.OutcomeOK})
	s := j.Snapshot()
	j.JobEnded(market.JobEvent{ID: jobID(2), Side: market.SideClient, Peer: w, Outcome: market.OutcomeFailed})
	if s.Client.ByOutcome[market.OutcomeFailed] != 0 || len(s.Done) != 1 || s.Peers[0].Jobs != 1 {
		t.Fatalf("snapshot changed after a later event: %+v", s)
	}
}

// The journal is called synchronously from every job's goroutine: what one
// job's events cost (start, two vouchers, end) with a full ring of done jobs.
func BenchmarkJournalJob(b *testing.B) {
	j := New(50)
	p := peer.ID("worker")
	var id market.JobID
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		id[0], id[1] = byte(i), byte(i>>8)
		j.JobStarted(market.JobEvent{ID: id, Side: market.SideClient, Peer: p, Model: "m"})
		j.Voucher(market.VoucherEvent{Side: market.SideClient, Peer: p, Job: id, NanoTON: 10})
		j.Voucher(market.VoucherEvent{Side: market.SideClient, Peer: p, Job: id, NanoTON: 10})
		j.JobEnded(market.JobEvent{ID: id, Side: market.SideClient, Peer: p, Model: "m", NanoTON: 20, Outcome: market.OutcomeOK})
	}
}
