package market

import (
	"context"
	"errors"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/cocoon-network/cocoon/enclave/tee"
)

// Side says which end of a job an event comes from.
type Side string

const (
	SideClient Side = "client" // this node bought the job
	SideWorker Side = "worker" // this node sold it
)

// Outcome is how a job ended, as the metrics and the status page count it.
type Outcome string

const (
	OutcomeOK        Outcome = "ok"        // finished and paid in full
	OutcomeCancelled Outcome = "cancelled" // the client stopped it (paid for what it received)
	OutcomeRejected  Outcome = "rejected"  // the worker declined it before any text
	OutcomeUnderpaid Outcome = "underpaid" // worker side: the final voucher never came
	OutcomeFailed    Outcome = "failed"    // anything else: protocol, timeout, backend, network
)

// Outcomes lists every outcome, for metrics that pre-create their series.
func Outcomes() []Outcome {
	return []Outcome{OutcomeOK, OutcomeCancelled, OutcomeRejected, OutcomeUnderpaid, OutcomeFailed}
}

// JobEvent describes one job on one worker, seen from one side. JobStarted gets
// ID, Side, Peer, Model and Start; JobEnded gets every field.
type JobEvent struct {
	ID    JobID
	Side  Side
	Peer  peer.ID // the other side: the worker for a client, the client for a worker
	Model string
	Start time.Time
	// TTFT is the time to the first text (client: from the prompt leaving;
	// worker: from the prompt arriving); 0 when none came.
	TTFT     time.Duration
	Duration time.Duration
	// PromptTokens and CompletionTokens are those billed (prompt) and delivered.
	PromptTokens     uint64
	CompletionTokens uint64
	// NanoTON is what the job's vouchers carried: spent by a client, earned by a worker.
	NanoTON uint64
	Outcome Outcome
	Err     error // why, when the outcome is not ok
}

// VoucherEvent is one voucher sent (client) or accepted (worker); NanoTON is
// what it added to the job's total.
type VoucherEvent struct {
	Side    Side
	Peer    peer.ID
	Job     JobID
	NanoTON uint64
}

// Attestation verdicts as observers see them.
const (
	VerdictAccepted = "accepted" // the evidence verified under the policy
	VerdictRefused  = "refused"  // it did not (or the peer sent none)
)

// AttestEvent is the outcome of one attestation exchange (cached verdicts are
// not reported again).
type AttestEvent struct {
	Peer    peer.ID
	Kind    tee.Kind // the TEE kind of the verdict; empty when refused
	Tier    string   // e.g. "sim (not confidential)"
	Verdict string   // VerdictAccepted or VerdictRefused
	Err     error
}

// Observer learns what a node's market did: its Prometheus metrics and its
// status page implement it. Calls come synchronously from the job's own
// goroutine and must return quickly.
type Observer interface {
	JobStarted(JobEvent)
	JobEnded(JobEvent)
	Voucher(VoucherEvent)
	Attested(AttestEvent)
}

// Observers fans events out to each non-nil observer in order; nil when none.
func Observers(obs ...Observer) Observer {
	var list multiObserver
	for _, o := range obs {
		if o != nil {
			list = append(list, o)
		}
	}
	switch len(list) {
	case 0:
		return nil
	case 1:
		return list[0]
	}
	return list
}

type multiObserver []Observer

func (m multiObserver) JobStarted(e JobEvent) {
	for _, o := range m {
		o.JobStarted(e)
	}
}

func (m multiObserver) JobEnded(e JobEvent) {
	for _, o := range m {
		o.JobEnded(e)
	}
}

func (m multiObserver) Voucher(e VoucherEvent) {
	for _, o := range m {
		o.Voucher(e)
	}
}

func (m multiObserver) Attested(e AttestEvent) {
	for _, o := range m {
		o.Attested(e)
	}
}

// workerOutcome classifies how Worker.Serve ended.
func workerOutcome(err error, finish string) Outcome {
	var rej *RejectError
	switch {
	case err == nil && finish == FinishCancelled:
		return OutcomeCancelled
	case err == nil:
		return OutcomeOK
	case errors.As(err, &rej):
		return OutcomeRejected
	case errors.Is(err, ErrUnderpaid):
		return OutcomeUnderpaid
	}
	return OutcomeFailed
}

// clientOutcome classifies how one attempt of Run ended; stopped says the
// caller (not the worker) ended it.
func clientOutcome(err error, stopped bool) Outcome {
	var rej *RejectError
	switch {
	case err == nil:
		return OutcomeOK
	case stopped:
		return OutcomeCancelled
	case errors.As(err, &rej):
		return OutcomeRejected
	}
	return OutcomeFailed
}

// observedPayer reports every voucher a client's payer signs for a job.
type observedPayer struct {
	Payer
	obs  Observer
	peer peer.ID
	last uint64
}

func (p *observedPayer) Pay(ctx context.Context, job JobID, total uint64) ([]byte, error) {
	v, err := p.Payer.Pay(ctx, job, total)
	if err == nil && total > p.last {
		p.obs.Voucher(VoucherEvent{Side: SideClient, Peer: p.peer, Job: job, NanoTON: total - p.last})
		p.last = total
	}
	return v, err
}
