package service_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/market/service"
)

// recorder keeps every event an observer receives.
type recorder struct {
	mu       sync.Mutex
	started  []market.JobEvent
	ended    []market.JobEvent
	vouchers []market.VoucherEvent
	attested []market.AttestEvent
}

func (r *recorder) JobStarted(e market.JobEvent) {
	r.mu.Lock()
	r.started = append(r.started, e)
	r.mu.Unlock()
}
func (r *recorder) JobEnded(e market.JobEvent) {
	r.mu.Lock()
	r.ended = append(r.ended, e)
	r.mu.Unlock()
}
func (r *recorder) Voucher(e market.VoucherEvent) {
	r.mu.Lock()
	r.vouchers = append(r.vouchers, e)
	r.mu.Unlock()
}
func (r *recorder) Attested(e market.AttestEvent) {
	r.mu.Lock()
	r.attested = append(r.attested, e)
	r.mu.Unlock()
}

// snapshot copies the events under the lock.
func (r *recorder) snapshot() recorder {
	r.mu.Lock()
	defer r.mu.Unlock()
	return recorder{started: append([]market.JobEvent(nil), r.started...), ended: append([]market.JobEvent(nil), r.ended...),
		vouchers: append([]market.VoucherEvent(nil), r.vouchers...), attested: append([]market.AttestEvent(nil), r.attested...)}
}

// TestNetObserver runs jobs through the client service, one of them stopped by
// the caller, and checks that both sides' observers saw every job, voucher and
// attestation, with the money in the events equal to the channels' balances.
func TestNetObserver(t *testing.T) {
	noLeaks(t)
	f := newNetFixture(t, 2, market.RunOptions{}, nil)
	const jobs = 4
	var spent uint64
	for i := range jobs {
		req := netRequest(i)
		s, err := f.cs.Generate(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		if i == jobs-1 { // the caller stops after the first text: a cancelled job
			s.Recv()
			s.Close()
		} else if _, err := drain(s); err != nil {
			t.Fatal(err)
		}
		s.Close()
		spent += s.(*service.NetStream).CostNanoTON()
	}
	waitFor(t, 10e9, "the workers' end events", func() bool {
		n := 0
		for _, w := range f.workers {
			n += len(w.obs.snapshot().ended)
		}
		return n == jobs
	})

	c := f.obs.snapshot()
	if len(c.started) != jobs || len(c.ended) != jobs {
		t.Fatalf("client observer: %d started, %d ended; want %d each", len(c.started), len(c.ended), jobs)
	}
	var endedPaid, vouchersPaid uint64
	outcomes := map[market.Outcome]int{}
	for i, e := range c.ended {
		if e.Side != market.SideClient || e.ID != c.started[i].ID || e.Peer != c.started[i].Peer || e.Model != netModel {
			t.Errorf("client job %d: ended %+v does not match started %+v", i, e, c.started[i])
		}
		if e.CompletionTokens == 0 || e.TTFT <= 0 || e.Duration < e.TTFT {
			t.Errorf("client job %d: tokens %d, ttft %v, duration %v", i, e.CompletionTokens, e.TTFT, e.Duration)
		}
		outcomes[e.Outcome]++
		endedPaid += e.NanoTON
	}
	if outcomes[market.OutcomeOK] != jobs-1 || outcomes[market.OutcomeCancelled] != 1 {
		t.Errorf("client outcomes %v; want %d ok and 1 cancelled", outcomes, jobs-1)
	}
	for _, v := range c.vouchers {
		vouchersPaid += v.NanoTON
	}
	if endedPaid != spent || vouchersPaid != spent {
		t.Errorf("client: jobs say %d nanoTON, vouchers %d, streams cost %d; want equal", endedPaid, vouchersPaid, spent)
	}
	workersUsed := map[peer.ID]bool{}
	for _, e := range c.ended {
		workersUsed[e.Peer] = true
	}
	accepted := 0
	for _, a := range c.attested {
		if a.Verdict != market.VerdictAccepted || a.Kind != tee.Sim || !workersUsed[a.Peer] {
			t.Errorf("attestation %+v; want sim accepted from a worker used", a)
		}
		accepted++
	}
	if accepted != len(workersUsed) {
		t.Errorf("%d attestations for %d workers; want one each (cached after)", accepted, len(workersUsed))
	}

	var earned uint64
	for _, w := range f.workers {
		ws := w.obs.snapshot()
		var jobsPaid, vPaid uint64
		for _, e := range ws.ended {
			if e.Side != market.SideWorker || e.Peer != f.client.Host.ID() {
				t.Errorf("worker event %+v: want side worker, peer the client", e)
			}
			if e.Outcome != market.OutcomeOK && e.Outcome != market.OutcomeCancelled {
				t.Errorf("worker job outcome %s: %v", e.Outcome, e.Err)
			}
			jobsPaid += e.NanoTON
		}
		for _, v := range ws.vouchers {
			vPaid += v.NanoTON
		}
		bal, err := w.payee.Balance(w.channel)
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Fatal(err)
		}
		if jobsPaid != bal || vPaid != bal || len(ws.started) != len(ws.ended) {
			t.Errorf("worker %s: jobs say %d, vouchers %d, balance %d; started %d ended %d",
				w.node.Host.ID().ShortString(), jobsPaid, vPaid, bal, len(ws.started), len(ws.ended))
		}
		earned += bal
	}
	if earned != spent {
		t.Errorf("workers earned %d nanoTON, the client spent %d", earned, spent)
	}
	t.Logf("%d jobs, client spent %d nanoTON = workers earned, outcomes %v", jobs, spent, outcomes)
}
