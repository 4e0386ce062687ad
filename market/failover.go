package market

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/cocoon-network/cocoon/runtime"
)

// Attempt is one worker's part of a job run by Failover: the worker, the TEE
// tier its attestation showed, and, once it has ended, its receipt and error.
// Run hands it to out with every chunk the worker delivers, so whatever the
// caller shows of the worker (headers naming it) travels with the text itself.
type Attempt struct {
	Candidate Candidate
	// Tier is what Verify returned for the worker ("" before Verify ran or
	// without a Verify), e.g. "sim (not confidential)".
	Tier    string
	Receipt Receipt
	Err     error // nil for the attempt that finished the job
}

// Failover runs a job on an ordered list of candidates and moves on to the next
// one when a worker fails before finishing: the next worker gets the prompt plus
// the text delivered so far as a continuation, and only the tokens it adds. The
// caller sees one stream; each worker is paid only for its own part.
//
// Two kinds of failed attempt are counted apart, so that a few peers that
// advertise and then serve nothing cannot spend a request's attempts:
//
//   - a quick failure: the candidate could not be dialled (ErrUnreachable),
//     failed its attestation (ErrAttestation), or rejected the job
//     (*RejectError), each before it delivered anything. It cost one round
//     trip; it counts against MaxQuickFailures only.
//   - any other failure (a phase deadline, a stream that broke or misbehaved
//     after Accept) counts against MaxAttempts, as does a success.
//
// Either way the request's ctx bounds the whole run. A candidate that could
// not be dialled, failed its attestation, rejected the model its ad offers
// (RejectUnknownModel) or never answered the Open (the accept phase deadline)
// is marked down in the Selector (see Selector.MarkDown for how long). Other
// rejects (busy, price, channel, policy, bad request) an honest worker
// answers too, often for the client's own cause: they mark nothing.
type Failover struct {
	// Dial opens a job stream to a candidate; Failover closes it after the attempt.
	Dial func(ctx context.Context, c Candidate) (io.ReadWriteCloser, error)
	// Payer returns the payer of the client's channel to c.
	Payer func(c Candidate) (Payer, error)
	// Verify, when set, checks c's attestation (the verdict of its connection)
	// before the job stream opens, so a worker never holds a slot while the
	// client attests, and returns the TEE tier to show for it, which the
	// attempt then carries (Attempt.Tier). An error ends the attempt with
	// ErrAttestation: nothing of the job reaches that worker.
	Verify func(ctx context.Context, c Candidate) (tier string, err error)
	// Selector, when set, records every attempt's outcome and latency.
	Selector *Selector
	// MaxAttempts bounds the attempts that reached a worker: a success, or a
	// failure other than a quick one (0: every candidate).
	MaxAttempts int
	// MaxQuickFailures bounds the quick failures (dial, attestation, reject)
	// one run tolerates beyond MaxAttempts (0: DefaultMaxQuickFailures, or
	// every candidate when MaxAttempts is 0).
	MaxQuickFailures int
	Options          RunOptions
	// Observer, when set, learns of every attempt (as a client job) and every
	// voucher sent.
	Observer Observer
}

// DefaultMaxQuickFailures is Failover.MaxQuickFailures' default: enough to get
// past a handful of peers that advertise and serve nothing, and small enough
// that a request with no reachable worker ends after a few round trips.
const DefaultMaxQuickFailures = 8

// ErrNoWorker is returned by Failover.Run when every candidate failed (as a
// *NoWorkerError), and by service.Client when none could be tried.
var ErrNoWorker = errors.New("market: no worker finished the job")

// ErrUnreachable marks an attempt that never reached its worker: the dial (or
// opening the job stream) failed. Failover marks such a worker down in its
// Selector.
var ErrUnreachable = errors.New("market: worker unreachable")

// NoWorkerError is the error when no worker finished a job: each attempt's
// error in order (none when no worker could be tried). It matches ErrNoWorker
// and each attempt's error. Its HTTPStatus is what an OpenAI-compatible
// gateway answers, and OpenAI clients retry all three: 503 when no worker took
// the job (each was busy or unreachable, or none could be tried), 504 when each
// attempt ran out of a phase deadline, else 502.
type NoWorkerError struct{ Errs []error }

func (e *NoWorkerError) Error() string {
	if len(e.Errs) == 0 {
		return ErrNoWorker.Error() + ": no worker available"
	}
	return ErrNoWorker.Error() + ": " + errors.Join(e.Errs...).Error()
}

func (e *NoWorkerError) Is(target error) bool { return target == ErrNoWorker }
func (e *NoWorkerError) Unwrap() []error      { return e.Errs }

// HTTPStatus implements openaiapi.StatusError.
func (e *NoWorkerError) HTTPStatus() int {
	switch {
	case e.all(func(err error) bool { return isBusy(err) || errors.Is(err, ErrUnreachable) }):
		return http.StatusServiceUnavailable
	case e.all(func(err error) bool { return errors.Is(err, ErrTimeout) }):
		return http.StatusGatewayTimeout
	}
	return http.StatusBadGateway
}

// ErrorCode is the OpenAI error code that goes with HTTPStatus.
func (e *NoWorkerError) ErrorCode() string {
	switch e.HTTPStatus() {
	case http.StatusServiceUnavailable:
		return "no_worker_available"
	case http.StatusGatewayTimeout:
		return "timeout"
	}
	return "no_worker_finished"
}

// all reports whether every attempt's error satisfies f (true for none).
func (e *NoWorkerError) all(f func(error) bool) bool {
	for _, err := range e.Errs {
		if !f(err) {
			return false
		}
	}
	return true
}

// quickFailure reports whether err ended an attempt before the worker took
// the job: it was not reached, failed its attestation or rejected the job.
func quickFailure(err error) bool {
	var re *RejectError
	return errors.Is(err, ErrUnreachable) || errors.Is(err, ErrAttestation) || errors.As(err, &re)
}

// noAccept reports whether err is the accept phase's deadline: the peer took
// the job stream and never answered the Open, which no working worker does.
func noAccept(err error) bool {
	var te *TimeoutError
	return errors.As(err, &te) && te.Phase == "accept"
}

func isBusy(err error) bool { return isRejected(err, RejectBusy) }

func isRejected(err error, code RejectCode) bool {
	var re *RejectError
	return errors.As(err, &re) && re.Code == code
}

// Run runs job, streaming the joined answer to out with the attempt that
// delivered each chunk (its Candidate and Tier; its Receipt and Err are known
// only in Run's result). It returns the attempts in
// order, each with its own receipt, and a *NoWorkerError when no worker
// finished. It stops early, without trying further workers, when ctx ends, out
// fails, or an attempt fails with runtime.ErrInvalidRequest (the request is at
// fault, not the worker). Attempts are bounded as the Failover doc says: quick
// failures (dial, attestation, reject) do not use up MaxAttempts, and a
// worker that failed so, or never answered the Open, is marked down in the
// Selector.
func (fo *Failover) Run(ctx context.Context, cands []Candidate, job Job, out func(Attempt, Chunk) error) ([]Attempt, error) {
	var (
		attempts  []Attempt
		delivered strings.Builder
		tokens    int
		calls     bool // a tool call or a refusal was delivered: no worker can resume after it
		sinkErr   error
		errs      []error
	)
	maxAttempts, maxQuick := fo.MaxAttempts, fo.MaxQuickFailures
	if maxAttempts <= 0 {
		maxAttempts = len(cands)
	}
	if maxQuick <= 0 {
		maxQuick = DefaultMaxQuickFailures
		if fo.MaxAttempts <= 0 {
			maxQuick = len(cands)
		}
	}
	reached, quick := 0, 0 // attempts that reached a worker; quick failures
	for i, c := range cands {
		if reached >= maxAttempts || quick >= maxQuick {
			break
		}
		sub := job
		if i > 0 || sub.ID == (JobID{}) {
			sub.ID = NewJobID()
		}
		sub.Request.Continuation = job.Request.Continuation + delivered.String()
		if job.Request.MaxTokens > 0 {
			sub.Request.MaxTokens = job.Request.MaxTokens - tokens
			if sub.Request.MaxTokens <= 0 {
				break // the earlier workers delivered everything asked for
			}
		}
		base := tokens
		a := Attempt{Candidate: c}
		sink := func(ch Chunk) error {
			delivered.WriteString(ch.Text)
			tokens = base + ch.TokensSoFar
			calls = calls || len(ch.ToolCalls) > 0 || ch.Refusal != ""
			ch.TokensSoFar = tokens
			if err := out(a, ch); err != nil {
				sinkErr = err
				return err
			}
			return nil
		}
		start := time.Now()
		rc, err := fo.attempt(ctx, &a, sub, sink)
		a.Receipt, a.Err = rc, err
		attempts = append(attempts, a)
		callerStopped := sinkErr != nil || ctx.Err() != nil
		// A request at fault (a max_tokens beyond the protocol, a prompt the
		// worker refused by its input checks) fails on every worker alike, and
		// it is the caller's fault, not the worker's.
		badRequest := errors.Is(err, runtime.ErrInvalidRequest)
		if fo.Observer != nil {
			fo.Observer.JobEnded(JobEvent{
				ID: rc.Job, Side: SideClient, Peer: c.Peer, Model: sub.Request.Model,
				Start: start, TTFT: rc.TTFT, Duration: time.Since(start),
				PromptTokens: rc.PromptTokens, CompletionTokens: rc.CompletionTokens, NanoTON: rc.Paid,
				Outcome: clientOutcome(err, callerStopped), Err: err,
			})
		}
		isQuick := err != nil && tokens == base && quickFailure(err)
		if isQuick {
			quick++
		} else {
			reached++
		}
		if fo.Selector != nil && !((callerStopped || badRequest) && rc.Violation == ViolationNone) {
			fo.Selector.Record(c.Peer, rc, err) // the caller's own failure is no mark against the worker
			if !callerStopped && tokens == base && (errors.Is(err, ErrUnreachable) || errors.Is(err, ErrAttestation) ||
				isRejected(err, RejectUnknownModel) || noAccept(err)) {
				fo.Selector.MarkDown(c.Peer)
			}
		}
		if err == nil {
			return attempts, nil
		}
		errs = append(errs, fmt.Errorf("worker %s: %w", c.Peer, err))
		if callerStopped || badRequest {
			return attempts, errors.Join(errs...)
		}
		if calls {
			// Text resumes where it stopped; a half-delivered tool call or
			// refusal does not: the answer ends with the failure.
			return attempts, &NoWorkerError{Errs: append(errs, errors.New("a tool call or refusal was already delivered: no other worker can continue it"))}
		}
	}
	if job.Request.MaxTokens > 0 && tokens >= job.Request.MaxTokens && len(attempts) > 0 {
		// Every token asked for arrived, though the last worker failed
		// before its Done: the answer is whole, cut at max_tokens.
		if last := &attempts[len(attempts)-1].Receipt; last.FinishReason == "" {
			last.FinishReason = FinishLength
		}
		return attempts, nil
	}
	return attempts, &NoWorkerError{Errs: errs}
}

// attempt runs job on a.Candidate: Verify first (its tier goes into a.Tier,
// so every chunk sink sees carries it), then the job stream.
func (fo *Failover) attempt(ctx context.Context, a *Attempt, job Job, sink func(Chunk) error) (Receipt, error) {
	c := a.Candidate
	if fo.Observer != nil {
		fo.Observer.JobStarted(JobEvent{ID: job.ID, Side: SideClient, Peer: c.Peer, Model: job.Request.Model, Start: time.Now()})
	}
	pay, err := fo.Payer(c)
	if err != nil {
		return Receipt{Job: job.ID}, fmt.Errorf("payer: %w", err)
	}
	if fo.Observer != nil {
		pay = &observedPayer{Payer: pay, obs: fo.Observer, peer: c.Peer}
	}
	if fo.Verify != nil {
		tier, err := fo.Verify(ctx, c)
		if err != nil {
			return Receipt{Job: job.ID}, fmt.Errorf("verify worker before the job: %w: %w", ErrAttestation, err)
		}
		a.Tier = tier
	}
	if job.Embed != nil { // the vectors' length is the worker's own
		job.EmbeddingDims = int(c.Offer.EmbeddingDims)
	}
	s, err := fo.Dial(ctx, c)
	if err != nil {
		if ctx.Err() != nil {
			return Receipt{Job: job.ID}, fmt.Errorf("dial: %w", err)
		}
		return Receipt{Job: job.ID}, fmt.Errorf("dial: %w: %w", ErrUnreachable, err)
	}
	defer s.Close()
	return Run(ctx, s, job, pay, sink, fo.Options)
}
