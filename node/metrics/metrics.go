// Package metrics exports a node's Prometheus metrics at /metrics: peers, ads
// received and dropped by reason, jobs by outcome, tokens, time to first token and
// job duration, vouchers, nanoTON earned and spent, attestation verdicts. The node
// (package node) creates one per node, hands it to the market services as their
// market.Observer and mounts Handler on its API (behind the API's bearer token).
//
// Each Metrics has its own registry (never the global one), so that several nodes
// in one process, as in tests, keep separate figures. Besides the cocoon_ metrics
// below it carries the standard go_ and process_ collectors.
//
//	cocoon_peers_connected                       gauge    connected libp2p peers (read at scrape time)
//	cocoon_ads_received_total                    counter  capacity ads offered to the ad book
//	cocoon_ads_accepted_total                    counter  of those, taken into the book
//	cocoon_ads_dropped_total{reason}             counter  of those, dropped (market.DropReasons)
//	cocoon_ads_held                              gauge    ads in the book now
//	cocoon_jobs_total{side,outcome}              counter  jobs ended (side client|worker, market.Outcomes)
//	cocoon_jobs_in_flight{side}                  gauge    jobs started and not yet ended
//	cocoon_tokens_total{side,kind}               counter  tokens billed (kind prompt) and delivered (kind completion)
//	cocoon_job_time_to_first_token_seconds{side} histogram
//	cocoon_job_duration_seconds{side}            histogram
//	cocoon_vouchers_total{side}                  counter  vouchers sent (client) or accepted (worker)
//	cocoon_earned_nanoton_total                  counter  what accepted vouchers added (worker)
//	cocoon_spent_nanoton_total                   counter  what sent vouchers added (client)
//	cocoon_attestations_total{verdict,kind}      counter  attestation exchanges by verdict and TEE kind
//
// A client-side job is one attempt on one worker: a job that fails over counts
// once per worker it tried.
package metrics

import (
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/market"
)

// Sources are the node's live figures the metrics read at scrape time.
type Sources struct {
	// Peers is the number of connected peers; nil: the metric is not exported.
	Peers func() int
	// Book is the ad book's counters (received, dropped by reason); nil on a
	// node without a client service (the ad metrics then stay at zero).
	Book func() market.BookStats
}

// Label values for the kind label of cocoon_tokens_total.
const (
	TokensPrompt     = "prompt"
	TokensCompletion = "completion"
)

// KindUnknown is the kind label of a refused attestation (its evidence's kind is
// not trusted, or there was none).
const KindUnknown = "unknown"

// Buckets are the bounds, in seconds, of the time to first token and job
// duration histograms: from 0.1 ms (a tiny model on loopback) to 60 s (a long
// answer from a large model), about 2.5 times apart.
var Buckets = []float64{
	0.0001, 0.00025, 0.0005,
	0.001, 0.0025, 0.005,
	0.01, 0.025, 0.05,
	0.1, 0.25, 0.5,
	1, 2.5, 5,
	10, 30, 60,
}

var sides = []market.Side{market.SideClient, market.SideWorker}

// Metrics is one node's metrics registry. It implements market.Observer; its
// methods are safe for concurrent use.
type Metrics struct {
	src     Sources
	reg     *prometheus.Registry
	handler http.Handler

	jobs     *prometheus.CounterVec
	inFlight *prometheus.GaugeVec
	tokens   *prometheus.CounterVec
	ttft     *prometheus.HistogramVec
	duration *prometheus.HistogramVec
	vouchers *prometheus.CounterVec
	attests  *prometheus.CounterVec

	// Money is counted in whole nanoTON in integers, never summed in float64:
	// the exposition turns the total into a float64 at scrape time, which is
	// exact up to 2^53 nanoTON (about 9 million TON) and rounds beyond.
	earned, spent atomic.Uint64

	mu sync.Mutex
	// running holds the jobs JobStarted reported, so that an end without a
	// start (a worker that rejected a job before its prompt) cannot push
	// cocoon_jobs_in_flight below zero.
	running map[runKey]struct{}
}

type runKey struct {
	side market.Side
	id   market.JobID
}

// New returns the metrics of a node whose live figures come from src.
func New(src Sources) *Metrics {
	m := &Metrics{
		src: src,
		reg: prometheus.NewRegistry(),
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cocoon_jobs_total",
			Help: "Jobs ended, by side (client: bought, one per worker tried; worker: sold) and outcome.",
		}, []string{"side", "outcome"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cocoon_jobs_in_flight",
			Help: "Jobs started and not yet ended, by side.",
		}, []string{"side"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cocoon_tokens_total",
			Help: "Tokens of ended jobs by side and kind: prompt (billed) or completion (delivered).",
		}, []string{"side", "kind"}),
		ttft: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cocoon_job_time_to_first_token_seconds",
			Help:    "Time to the first text of a job (client: from the prompt leaving; worker: from the prompt arriving), by side.",
			Buckets: Buckets,
		}, []string{"side"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cocoon_job_duration_seconds",
			Help:    "Duration of ended jobs, by side.",
			Buckets: Buckets,
		}, []string{"side"}),
		vouchers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cocoon_vouchers_total",
			Help: "Payment-channel vouchers sent (client) or accepted (worker).",
		}, []string{"side"}),
		attests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cocoon_attestations_total",
			Help: "Attestation exchanges with workers, by verdict (accepted|refused) and TEE kind (unknown when refused).",
		}, []string{"verdict", "kind"}),
		running: make(map[runKey]struct{}),
	}
	// Every series a dashboard or alert may name exists from the start, at 0.
	for _, s := range sides {
		for _, o := range market.Outcomes() {
			m.jobs.WithLabelValues(string(s), string(o))
		}
		m.inFlight.WithLabelValues(string(s))
		m.tokens.WithLabelValues(string(s), TokensPrompt)
		m.tokens.WithLabelValues(string(s), TokensCompletion)
		m.ttft.WithLabelValues(string(s))
		m.duration.WithLabelValues(string(s))
		m.vouchers.WithLabelValues(string(s))
	}
	for _, k := range tee.Kinds {
		m.attests.WithLabelValues(market.VerdictAccepted, k.String())
	}
	m.attests.WithLabelValues(market.VerdictRefused, KindUnknown)

	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.jobs, m.inFlight, m.tokens, m.ttft, m.duration, m.vouchers, m.attests,
		live{m},
	)
	m.handler = promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
	return m
}

// Handler serves the metrics in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler { return m.handler }

// Gatherer is the registry behind Handler.
func (m *Metrics) Gatherer() prometheus.Gatherer { return m.reg }

// JobStarted implements market.Observer.
func (m *Metrics) JobStarted(e market.JobEvent) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := runKey{e.Side, e.ID}
	if _, dup := m.running[k]; dup {
		return
	}
	m.running[k] = struct{}{}
	m.inFlight.WithLabelValues(string(e.Side)).Inc()
}

// JobEnded implements market.Observer.
func (m *Metrics) JobEnded(e market.JobEvent) {
	side := string(e.Side)
	m.mu.Lock()
	if k := (runKey{e.Side, e.ID}); hasKey(m.running, k) {
		delete(m.running, k)
		m.inFlight.WithLabelValues(side).Dec()
	}
	m.mu.Unlock()
	m.jobs.WithLabelValues(side, string(e.Outcome)).Inc()
	// Token counts are far below 2^53, where float64 stops being exact.
	m.tokens.WithLabelValues(side, TokensPrompt).Add(float64(e.PromptTokens))
	m.tokens.WithLabelValues(side, TokensCompletion).Add(float64(e.CompletionTokens))
	if e.TTFT > 0 {
		m.ttft.WithLabelValues(side).Observe(e.TTFT.Seconds())
	}
	m.duration.WithLabelValues(side).Observe(e.Duration.Seconds())
}

func hasKey(set map[runKey]struct{}, k runKey) bool { _, ok := set[k]; return ok }

// Voucher implements market.Observer: a client's voucher is money spent, a
// worker's money earned.
func (m *Metrics) Voucher(e market.VoucherEvent) {
	m.vouchers.WithLabelValues(string(e.Side)).Inc()
	switch e.Side {
	case market.SideClient:
		m.spent.Add(e.NanoTON)
	case market.SideWorker:
		m.earned.Add(e.NanoTON)
	}
}

// Attested implements market.Observer.
func (m *Metrics) Attested(e market.AttestEvent) {
	kind := e.Kind.String()
	if e.Verdict != market.VerdictAccepted || !e.Kind.Valid() {
		kind = KindUnknown
	}
	m.attests.WithLabelValues(e.Verdict, kind).Inc()
}

var (
	descPeers = prometheus.NewDesc("cocoon_peers_connected",
		"Connected libp2p peers.", nil, nil)
	descAdsReceived = prometheus.NewDesc("cocoon_ads_received_total",
		"Capacity ads offered to the ad book (gossip and lookups).", nil, nil)
	descAdsAccepted = prometheus.NewDesc("cocoon_ads_accepted_total",
		"Capacity ads taken into the ad book.", nil, nil)
	descAdsDropped = prometheus.NewDesc("cocoon_ads_dropped_total",
		"Capacity ads dropped by the ad book, by reason.", []string{"reason"}, nil)
	descAdsHeld = prometheus.NewDesc("cocoon_ads_held",
		"Capacity ads in the ad book now (expired ones until pruned).", nil, nil)
	descEarned = prometheus.NewDesc("cocoon_earned_nanoton_total",
		"NanoTON earned: what the vouchers this worker accepted added.", nil, nil)
	descSpent = prometheus.NewDesc("cocoon_spent_nanoton_total",
		"NanoTON spent: what the vouchers this client sent added.", nil, nil)
)

// live reads the figures the node keeps elsewhere (peers, the ad book) and the
// integer money counters at scrape time, as const metrics.
type live struct{ m *Metrics }

func (l live) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPeers, descAdsReceived, descAdsAccepted, descAdsDropped, descAdsHeld, descEarned, descSpent} {
		ch <- d
	}
}

func (l live) Collect(ch chan<- prometheus.Metric) {
	if l.m.src.Peers != nil {
		ch <- prometheus.MustNewConstMetric(descPeers, prometheus.GaugeValue, float64(l.m.src.Peers()))
	}
	var st market.BookStats
	if l.m.src.Book != nil {
		st = l.m.src.Book()
	}
	var dropped uint64
	for _, r := range market.DropReasons() {
		n := st.Dropped[r]
		dropped += n
		ch <- prometheus.MustNewConstMetric(descAdsDropped, prometheus.CounterValue, float64(n), r.String())
	}
	ch <- prometheus.MustNewConstMetric(descAdsReceived, prometheus.CounterValue, float64(st.Received))
	// Every offer is either kept or dropped for one reason, so this never decreases.
	ch <- prometheus.MustNewConstMetric(descAdsAccepted, prometheus.CounterValue, float64(st.Received-min(dropped, st.Received)))
	ch <- prometheus.MustNewConstMetric(descAdsHeld, prometheus.GaugeValue, float64(st.Ads))
	ch <- prometheus.MustNewConstMetric(descEarned, prometheus.CounterValue, float64(l.m.earned.Load()))
	ch <- prometheus.MustNewConstMetric(descSpent, prometheus.CounterValue, float64(l.m.spent.Load()))
}
