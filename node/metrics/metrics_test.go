package metrics

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/market"
)

const (
	workerPeer = peer.ID("worker-1")
	clientPeer = peer.ID("client-1")
)

func id(b byte) market.JobID { return market.JobID{b} }

// drive feeds m what a node that bought two jobs (one ok, one failed over after a
// worker's reject) and sold one (ok), and attested two workers, reports.
func drive(m *Metrics) {
	// Bought: job 1 on a worker that rejected it, job 2 on one that answered.
	m.JobStarted(market.JobEvent{ID: id(1), Side: market.SideClient, Peer: workerPeer, Model: "m"})
	m.JobEnded(market.JobEvent{ID: id(1), Side: market.SideClient, Peer: workerPeer, Model: "m",
		Duration: 3 * time.Millisecond, Outcome: market.OutcomeRejected, Err: errors.New("busy")})
	m.JobStarted(market.JobEvent{ID: id(2), Side: market.SideClient, Peer: workerPeer, Model: "m"})
	m.Voucher(market.VoucherEvent{Side: market.SideClient, Peer: workerPeer, Job: id(2), NanoTON: 7})
	m.Voucher(market.VoucherEvent{Side: market.SideClient, Peer: workerPeer, Job: id(2), NanoTON: 93})
	m.JobEnded(market.JobEvent{ID: id(2), Side: market.SideClient, Peer: workerPeer, Model: "m",
		TTFT: 2 * time.Millisecond, Duration: 40 * time.Millisecond, PromptTokens: 5, CompletionTokens: 16,
		NanoTON: 100, Outcome: market.OutcomeOK})
	// Sold: job 3; job 4 was declined before its prompt, so it never started.
	m.JobStarted(market.JobEvent{ID: id(3), Side: market.SideWorker, Peer: clientPeer, Model: "m"})
	m.Voucher(market.VoucherEvent{Side: market.SideWorker, Peer: clientPeer, Job: id(3), NanoTON: 250})
	m.JobEnded(market.JobEvent{ID: id(3), Side: market.SideWorker, Peer: clientPeer, Model: "m",
		TTFT: 300 * time.Microsecond, Duration: 2 * time.Second, PromptTokens: 4, CompletionTokens: 8,
		NanoTON: 250, Outcome: market.OutcomeOK})
	m.JobEnded(market.JobEvent{ID: id(4), Side: market.SideWorker, Peer: clientPeer, Model: "m",
		Duration: time.Millisecond, Outcome: market.OutcomeRejected})
	m.Attested(market.AttestEvent{Peer: workerPeer, Kind: tee.Sim, Tier: tee.Sim.Tier(), Verdict: market.VerdictAccepted})
	m.Attested(market.AttestEvent{Peer: "other", Verdict: market.VerdictRefused, Err: errors.New("bad nonce")})
}

func sources() Sources {
	return Sources{
		Peers: func() int { return 4 },
		Book: func() market.BookStats {
			return market.BookStats{Received: 10, Ads: 2,
				Dropped: map[market.DropReason]uint64{market.DropExpired: 3, market.DropReplay: 1}}
		},
	}
}

// TestExposition drives the observer and compares the exposition of every
// cocoon_ counter and gauge, labels and values, with what the events add up to.
func TestExposition(t *testing.T) {
	m := New(sources())
	drive(m)
	want := `
# HELP cocoon_peers_connected Connected libp2p peers.
# TYPE cocoon_peers_connected gauge
cocoon_peers_connected 4
# HELP cocoon_ads_received_total Capacity ads offered to the ad book (gossip and lookups).
# TYPE cocoon_ads_received_total counter
cocoon_ads_received_total 10
# HELP cocoon_ads_accepted_total Capacity ads taken into the ad book.
# TYPE cocoon_ads_accepted_total counter
cocoon_ads_accepted_total 6
# HELP cocoon_ads_dropped_total Capacity ads dropped by the ad book, by reason.
# TYPE cocoon_ads_dropped_total counter
cocoon_ads_dropped_total{reason="expired"} 3
cocoon_ads_dropped_total{reason="future"} 0
cocoon_ads_dropped_total{reason="malformed"} 0
cocoon_ads_dropped_total{reason="rate"} 0
cocoon_ads_dropped_total{reason="replay"} 1
cocoon_ads_dropped_total{reason="schema"} 0
cocoon_ads_dropped_total{reason="sender"} 0
cocoon_ads_dropped_total{reason="too_large"} 0
cocoon_ads_dropped_total{reason="topic"} 0
# HELP cocoon_ads_held Capacity ads in the ad book now (expired ones until pruned).
# TYPE cocoon_ads_held gauge
cocoon_ads_held 2
# HELP cocoon_jobs_total Jobs ended, by side (client: bought, one per worker tried; worker: sold) and outcome.
# TYPE cocoon_jobs_total counter
cocoon_jobs_total{outcome="cancelled",side="client"} 0
cocoon_jobs_total{outcome="cancelled",side="worker"} 0
cocoon_jobs_total{outcome="failed",side="client"} 0
cocoon_jobs_total{outcome="failed",side="worker"} 0
cocoon_jobs_total{outcome="ok",side="client"} 1
cocoon_jobs_total{outcome="ok",side="worker"} 1
cocoon_jobs_total{outcome="rejected",side="client"} 1
cocoon_jobs_total{outcome="rejected",side="worker"} 1
cocoon_jobs_total{outcome="underpaid",side="client"} 0
cocoon_jobs_total{outcome="underpaid",side="worker"} 0
# HELP cocoon_jobs_in_flight Jobs started and not yet ended, by side.
# TYPE cocoon_jobs_in_flight gauge
cocoon_jobs_in_flight{side="client"} 0
cocoon_jobs_in_flight{side="worker"} 0
# HELP cocoon_tokens_total Tokens of ended jobs by side and kind: prompt (billed) or completion (delivered).
# TYPE cocoon_tokens_total counter
cocoon_tokens_total{kind="completion",side="client"} 16
cocoon_tokens_total{kind="completion",side="worker"} 8
cocoon_tokens_total{kind="prompt",side="client"} 5
cocoon_tokens_total{kind="prompt",side="worker"} 4
# HELP cocoon_vouchers_total Payment-channel vouchers sent (client) or accepted (worker).
# TYPE cocoon_vouchers_total counter
cocoon_vouchers_total{side="client"} 2
cocoon_vouchers_total{side="worker"} 1
# HELP cocoon_earned_nanoton_total NanoTON earned: what the vouchers this worker accepted added.
# TYPE cocoon_earned_nanoton_total counter
cocoon_earned_nanoton_total 250
# HELP cocoon_spent_nanoton_total NanoTON spent: what the vouchers this client sent added.
# TYPE cocoon_spent_nanoton_total counter
cocoon_spent_nanoton_total 100
# HELP cocoon_attestations_total Attestation exchanges with workers, by verdict (accepted|refused) and TEE kind (unknown when refused).
# TYPE cocoon_attestations_total counter
cocoon_attestations_total{kind="none",verdict="accepted"} 0
cocoon_attestations_total{kind="sev-snp",verdict="accepted"} 0
cocoon_attestations_total{kind="sim",verdict="accepted"} 1
cocoon_attestations_total{kind="tdx",verdict="accepted"} 0
cocoon_attestations_total{kind="unknown",verdict="refused"} 1
`
	names := []string{"cocoon_peers_connected", "cocoon_ads_received_total", "cocoon_ads_accepted_total",
		"cocoon_ads_dropped_total", "cocoon_ads_held", "cocoon_jobs_total", "cocoon_jobs_in_flight",
		"cocoon_tokens_total", "cocoon_vouchers_total", "cocoon_earned_nanoton_total",
		"cocoon_spent_nanoton_total", "cocoon_attestations_total"}
	if err := testutil.GatherAndCompare(m.Gatherer(), strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
}

// histogram returns the series of the histogram name with label side.
func histogram(t *testing.T, m *Metrics, name, side string) *dto.Histogram {
	t.Helper()
	mfs, err := m.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, s := range mf.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == "side" && l.GetValue() == side {
					return s.GetHistogram()
				}
			}
		}
	}
	t.Fatalf("no %s{side=%q} in the exposition", name, side)
	return nil
}

// bucket is the cumulative count of h's bucket with upper bound le.
func bucket(t *testing.T, h *dto.Histogram, le float64) uint64 {
	t.Helper()
	for _, b := range h.GetBucket() {
		if b.GetUpperBound() == le {
			return b.GetCumulativeCount()
		}
	}
	t.Fatalf("no bucket le=%g in %v", le, h)
	return 0
}

// TestHistograms checks the time to first token and duration histograms: every
// job's duration counts; a job with no text adds no time to first token.
func TestHistograms(t *testing.T) {
	m := New(sources())
	drive(m)
	for _, c := range []struct {
		name, side string
		count      uint64
		sum        float64
		le         map[float64]uint64 // cumulative counts at some bounds
	}{
		{"cocoon_job_time_to_first_token_seconds", "client", 1, 0.002, map[float64]uint64{0.001: 0, 0.0025: 1}},
		{"cocoon_job_time_to_first_token_seconds", "worker", 1, 0.0003, map[float64]uint64{0.00025: 0, 0.0005: 1}},
		{"cocoon_job_duration_seconds", "client", 2, 0.043, map[float64]uint64{0.001: 0, 0.005: 1, 0.025: 1, 0.05: 2, 60: 2}},
		{"cocoon_job_duration_seconds", "worker", 2, 2.001, map[float64]uint64{0.0005: 0, 0.001: 1, 1: 1, 2.5: 2}},
	} {
		h := histogram(t, m, c.name, c.side)
		if h.GetSampleCount() != c.count || abs(h.GetSampleSum()-c.sum) > 1e-9 {
			t.Errorf("%s{side=%q}: count %d, sum %g; want %d, %g", c.name, c.side, h.GetSampleCount(), h.GetSampleSum(), c.count, c.sum)
		}
		for le, want := range c.le {
			if got := bucket(t, h, le); got != want {
				t.Errorf("%s{side=%q,le=%g} = %d; want %d", c.name, c.side, le, got, want)
			}
		}
		if n := len(h.GetBucket()); n != len(Buckets) {
			t.Errorf("%s has %d buckets; want %d", c.name, n, len(Buckets))
		}
	}
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}

// TestFreshNodeShowsZeros: before any event, every side × outcome, every
// reason and every money counter is exported at zero, so that rate() and
// alerts see a series from the first scrape. A node without an ad book (a pure
// worker) still exports the ad counters.
func TestFreshNodeShowsZeros(t *testing.T) {
	m := New(Sources{})
	for name, want := range map[string]int{
		"cocoon_jobs_total":                      2 * len(market.Outcomes()),
		"cocoon_jobs_in_flight":                  2,
		"cocoon_tokens_total":                    4,
		"cocoon_vouchers_total":                  2,
		"cocoon_ads_dropped_total":               len(market.DropReasons()),
		"cocoon_ads_received_total":              1,
		"cocoon_earned_nanoton_total":            1,
		"cocoon_spent_nanoton_total":             1,
		"cocoon_attestations_total":              5,
		"cocoon_job_duration_seconds":            2,
		"cocoon_job_time_to_first_token_seconds": 2,
		"cocoon_peers_connected":                 0, // no source, no made-up figure
	} {
		got, err := testutil.GatherAndCount(m.Gatherer(), name)
		if err != nil || got != want {
			t.Errorf("%s: %d series (%v); want %d", name, got, err, want)
		}
	}
	if v := testutil.ToFloat64(m.jobs.WithLabelValues("client", "ok")); v != 0 {
		t.Errorf("fresh jobs_total = %g", v)
	}
}

// TestInFlight: the gauge follows starts and ends per side, and an end without
// a start does not take it below zero.
func TestInFlight(t *testing.T) {
	m := New(Sources{})
	inflight := func(side market.Side) float64 { return testutil.ToFloat64(m.inFlight.WithLabelValues(string(side))) }
	m.JobStarted(market.JobEvent{ID: id(1), Side: market.SideWorker})
	m.JobStarted(market.JobEvent{ID: id(2), Side: market.SideWorker})
	m.JobStarted(market.JobEvent{ID: id(2), Side: market.SideClient})
	if w, c := inflight(market.SideWorker), inflight(market.SideClient); w != 2 || c != 1 {
		t.Fatalf("in flight: worker %g, client %g; want 2, 1", w, c)
	}
	m.JobEnded(market.JobEvent{ID: id(9), Side: market.SideWorker, Outcome: market.OutcomeRejected})
	m.JobEnded(market.JobEvent{ID: id(1), Side: market.SideWorker, Outcome: market.OutcomeOK})
	m.JobEnded(market.JobEvent{ID: id(1), Side: market.SideWorker, Outcome: market.OutcomeOK}) // reported twice
	if w, c := inflight(market.SideWorker), inflight(market.SideClient); w != 1 || c != 1 {
		t.Fatalf("in flight after ends: worker %g, client %g; want 1, 1", w, c)
	}
}

// TestConcurrentJobs runs jobs from many goroutines (run with -race): the
// counters add up and nothing stays in flight.
func TestConcurrentJobs(t *testing.T) {
	m := New(Sources{})
	const n = 200
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			e := market.JobEvent{ID: market.JobID{byte(i), byte(i >> 8)}, Side: market.SideWorker, CompletionTokens: 3}
			m.JobStarted(e)
			m.Voucher(market.VoucherEvent{Side: market.SideWorker, NanoTON: 11})
			e.Outcome, e.Duration = market.OutcomeOK, time.Millisecond
			m.JobEnded(e)
		})
	}
	wg.Wait()
	if got := testutil.ToFloat64(m.jobs.WithLabelValues("worker", "ok")); got != n {
		t.Errorf("jobs ok = %g; want %d", got, n)
	}
	if got := testutil.ToFloat64(m.tokens.WithLabelValues("worker", TokensCompletion)); got != 3*n {
		t.Errorf("completion tokens = %g; want %d", got, 3*n)
	}
	if got := m.earned.Load(); got != 11*n {
		t.Errorf("earned = %d; want %d", got, 11*n)
	}
	if got := testutil.ToFloat64(m.inFlight.WithLabelValues("worker")); got != 0 {
		t.Errorf("in flight = %g; want 0", got)
	}
}

// TestMoneyExact: nanoTON accumulate in an integer. Past 2^53 a float64 sum
// would swallow each 1-nanoTON voucher; the integer keeps them all.
func TestMoneyExact(t *testing.T) {
	m := New(Sources{})
	m.Voucher(market.VoucherEvent{Side: market.SideClient, NanoTON: 1 << 53})
	for range 1000 {
		m.Voucher(market.VoucherEvent{Side: market.SideClient, NanoTON: 1})
	}
	want := `
# HELP cocoon_spent_nanoton_total NanoTON spent: what the vouchers this client sent added.
# TYPE cocoon_spent_nanoton_total counter
cocoon_spent_nanoton_total 9007199254741992
`
	if err := testutil.GatherAndCompare(m.Gatherer(), strings.NewReader(want), "cocoon_spent_nanoton_total"); err != nil {
		t.Fatal(err)
	}
	if got := m.spent.Load(); got != 1<<53+1000 {
		t.Fatalf("spent = %d; want %d", got, uint64(1<<53+1000))
	}
}

// TestHandler serves the text format with the cocoon_, go_ and process_ metrics.
func TestHandler(t *testing.T) {
	m := New(sources())
	drive(m)
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET /metrics: %s, %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	for _, line := range []string{
		`cocoon_jobs_total{outcome="ok",side="client"} 1`,
		`cocoon_spent_nanoton_total 100`,
		`cocoon_job_duration_seconds_bucket{side="worker",le="2.5"} 2`,
		`go_goroutines `,
		`process_resident_memory_bytes `,
	} {
		if !strings.Contains(string(body), "\n"+line) {
			t.Errorf("exposition lacks %q:\n%s", line, body)
		}
	}
}

// TestLint runs the Prometheus project's own linter (promlint) over the names,
// types and help texts.
func TestLint(t *testing.T) {
	m := New(sources())
	drive(m)
	problems, err := testutil.GatherAndLint(m.Gatherer())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// BenchmarkObserveJob is what the metrics add to one job's own goroutine: a
// start, a voucher and an end.
func BenchmarkObserveJob(b *testing.B) {
	m := New(Sources{})
	e := market.JobEvent{Side: market.SideWorker, TTFT: time.Millisecond, Duration: 50 * time.Millisecond,
		PromptTokens: 5, CompletionTokens: 16, NanoTON: 100, Outcome: market.OutcomeOK}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		e.ID = market.JobID{byte(i), byte(i >> 8), byte(i >> 16), byte(i >> 24)}
		m.JobStarted(e)
		m.Voucher(market.VoucherEvent{Side: market.SideWorker, NanoTON: 100})
		m.JobEnded(e)
	}
}

// BenchmarkScrape is one whole /metrics response, go_ and process_ included.
func BenchmarkScrape(b *testing.B) {
	m := New(sources())
	drive(m)
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
		if rec.Code != http.StatusOK {
			b.Fatal(rec.Code)
		}
		b.SetBytes(int64(rec.Body.Len()))
	}
}
