package market

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"
	"time"

	"github.com/cocoon-network/cocoon/market/pb"
	"github.com/cocoon-network/cocoon/runtime"
)

// Payer pays one worker on the client's side: the client's lane of its payment
// channel to that worker, which every job the client runs there at once shares
// (service.Payers adapts settle.PayerLane). It is safe for concurrent use.
type Payer interface {
	// Channel names the channel in Open (the TON address of its contract), so
	// that a worker that has not heard of it can read it from the chain; ""
	// names none.
	Channel() string
	// Sync takes the newest state of the channel the worker holds, from its
	// Accept (nil: none), before the job's first Pay: a state the client signed
	// but lost in a crash becomes its own again. An error means the state is not
	// one the client signed, or contradicts its own.
	Sync(state []byte) error
	// Pay returns a voucher that brings job's total to total nanoTON; Run never
	// lowers total between calls for a job.
	Pay(ctx context.Context, job JobID, total uint64) (voucher []byte, err error)
	// End says job's payments are final.
	End(job JobID)
}

// Job is one generation a client buys.
type Job struct {
	ID       JobID
	Request  runtime.Request // Model, Messages or Prompt, sampling, Continuation
	MaxPrice Price           // a zero field: no cap on that price
	// Embed makes it an embeddings job of Request.Model: a vector of
	// EmbeddingDims (the worker's ad's) for each input, each delivered as a
	// Chunk with Vector set.
	Embed         []string
	EmbeddingDims int
}

// Chunk is a piece of the answer as the caller sees it.
type Chunk struct {
	Text        string
	Tokens      int // completion tokens in this chunk
	TokensSoFar int // completion tokens delivered in this job (across workers, under Failover)
	// What runtime.Delta carries besides text.
	ToolCalls []runtime.ToolCallDelta
	Logprobs  []runtime.TokenLogprob
	Refusal   string
	// An embeddings job's vector for input Index.
	Index  int
	Vector []float32
}

// Violation is a breach of the protocol by a worker, which costs it reputation.
type Violation int

// Violations the client detects.
const (
	ViolationNone        Violation = iota
	ViolationOverReport            // Done claims more completion tokens than the chunks carried
	ViolationIgnoredStop           // chunks kept coming, or no Done, after Cancel
	ViolationCredit                // more unpaid tokens than the credit window
	ViolationProtocol              // malformed or out-of-order messages
)

func (v Violation) String() string {
	return [...]string{"none", "over_report", "ignored_cancel", "credit", "protocol"}[v]
}

// Receipt is the client's record of one job on one worker.
type Receipt struct {
	Job          JobID
	Model        string
	Price        Price
	Settlement   Settlement // from the worker's Accept
	CreditTokens int

	PromptTokens       uint64 // as the worker's Done reported (0 without Done)
	CompletionTokens   uint64 // delivered: the sum over the chunks received
	ReportedCompletion uint64 // as the worker's Done reported
	Cost               uint64 // Cost(Price, PromptTokens, CompletionTokens), what the client owes
	Paid               uint64 // the total of the vouchers sent
	FinishReason       string
	WorkerReceipt      []byte // Done.receipt, opaque

	TTFT      time.Duration // from sending the Prompt to the first chunk
	Elapsed   time.Duration
	Violation Violation
}

// RunOptions tune Run. The zero value is usable.
type RunOptions struct {
	// The worker's attestation is checked before the job stream opens
	// (Failover.Verify), not inside the protocol.
	Timeouts Timeouts
	// PayEvery is how many delivered tokens the client lets accumulate before it
	// pays (0: half the worker's credit window, so the worker never waits).
	PayEvery int
	Logger   *slog.Logger
}

type clientRun struct {
	job        Job
	pay        Payer
	out        func(Chunk) error
	t          Timeouts
	w          *frameWriter
	rd         *frameReader
	log        *slog.Logger
	rc         Receipt
	every      uint64
	received   uint64 // tokens_so_far of the last valid chunk
	paidTokens uint64 // delivered completion tokens the vouchers sent so far cover
	prompted   bool   // the Prompt left: a Cancel is answered by Done
	vectors    []bool // an embeddings job: which inputs' vectors came
}

// Run drives the client side of one job over rw, calling out with each chunk in
// order (out returning an error cancels the job). It pays through pay for the
// tokens actually received: during the stream cumulative vouchers cover the
// completion tokens delivered so far, and after Done a final voucher covers
// Cost(price, prompt, completion). Run never closes rw; the caller closes it after
// Run returns, which also ends Run's reader of rw (it discards what follows). A zero job.ID is replaced by a random one (see Receipt.Job). The
// Receipt is filled as far as the job got, also on error.
func Run(ctx context.Context, rw io.ReadWriter, job Job, pay Payer, out func(Chunk) error, opt RunOptions) (Receipt, error) {
	if job.ID == (JobID{}) {
		job.ID = NewJobID() // job IDs key the per-job payment totals: never reuse one
	}
	defer pay.End(job.ID)
	c := &clientRun{
		job: job, pay: pay, out: out,
		t:   opt.Timeouts.withDefaults(),
		log: opt.Logger,
		rc:  Receipt{Job: job.ID, Model: job.Request.Model},
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	c.log = c.log.With("subsys", "market", "job", job.ID.String())
	start := time.Now()
	c.w = newWriter(rw, c.t.Write)
	c.rd = startReader(rw, MaxWorkerFrame, checkWorkerFrame)
	defer c.rd.detach() // the caller's Close of rw ends the reader

	err := c.run(ctx, opt)
	c.rc.Elapsed = time.Since(start)
	if err != nil {
		c.log.Debug("job ended", "err", err, "violation", c.rc.Violation, "paid", c.rc.Paid)
	}
	return c.rc, err
}

func (c *clientRun) run(ctx context.Context, opt RunOptions) error {
	r := c.job.Request
	// Open carries max_tokens in 32 bits: a larger value must not wrap to a small one.
	if r.MaxTokens < 0 || uint64(r.MaxTokens) > math.MaxUint32 {
		return fmt.Errorf("open job: max_tokens %d is outside 0..%d: %w", r.MaxTokens, uint32(math.MaxUint32), runtime.ErrInvalidRequest)
	}
	open := &pb.Open{
		JobId:              c.job.ID[:],
		Model:              r.Model,
		Params:             paramsToPB(r),
		Embed:              c.job.Embed != nil,
		MaxPricePrompt:     c.job.MaxPrice.Prompt,
		MaxPriceCompletion: c.job.MaxPrice.Completion,
	}
	if c.job.Embed != nil {
		open.Params = nil
		if c.job.EmbeddingDims <= 0 || c.job.EmbeddingDims > maxEmbeddingDims {
			return fmt.Errorf("open job: embedding dims %d outside 1..%d: %w", c.job.EmbeddingDims, maxEmbeddingDims, runtime.ErrInvalidRequest)
		}
		c.vectors = make([]bool, len(c.job.Embed))
	}
	open.Channel = c.pay.Channel()
	if err := checkOpen(open); err != nil {
		return fmt.Errorf("open job: %w", err)
	}
	if err := c.w.send(&pb.Frame{Msg: &pb.Frame_Open{Open: open}}); err != nil {
		return fmt.Errorf("open job: %w", err)
	}
	f, err := c.rd.next(ctx, c.t.Accept, "accept")
	if err != nil {
		return c.abort(ctx, "wait for accept", err)
	}
	var acc *pb.Accept
	switch m := f.Msg.(type) {
	case *pb.Frame_Accept:
		acc = m.Accept
	case *pb.Frame_Reject:
		return &RejectError{Code: RejectCode(m.Reject.GetCode())}
	case *pb.Frame_Cancel:
		return fmt.Errorf("wait for accept: %w", &CancelError{Code: CancelCode(m.Cancel.GetCode())})
	default:
		_ = c.w.cancel(CancelProtocol)
		return c.violate(ViolationProtocol, fmt.Errorf("wait for accept: got %s: %w", frameName(f), ErrProtocol))
	}
	c.rc.Price = Price{Prompt: acc.GetPricePrompt(), Completion: acc.GetPriceCompletion()}
	c.rc.Settlement = settlementFromPB(acc.GetSettlement())
	c.rc.CreditTokens = int(acc.GetCreditTokens())
	if (c.job.MaxPrice.Prompt != 0 && c.rc.Price.Prompt > c.job.MaxPrice.Prompt) ||
		(c.job.MaxPrice.Completion != 0 && c.rc.Price.Completion > c.job.MaxPrice.Completion) {
		_ = c.w.cancel(CancelPrice)
		return fmt.Errorf("accept at %+v over %+v: %w", c.rc.Price, c.job.MaxPrice, ErrPrice)
	}
	if err := c.pay.Sync(acc.GetChannelState()); err != nil {
		_ = c.w.cancel(CancelProtocol)
		return c.violate(ViolationProtocol, fmt.Errorf("accept: the worker's channel state: %w: %w", err, ErrProtocol))
	}
	c.every = uint64(opt.PayEvery)
	if c.every == 0 {
		c.every = max(uint64(acc.GetCreditTokens())/2, 1)
	}
	prompt := &pb.Prompt{Prompt: r.Prompt, Continuation: r.Continuation, Messages: messagesToPB(r.Messages), Inputs: c.job.Embed}
	if err := c.w.send(&pb.Frame{Msg: &pb.Frame_Prompt{Prompt: prompt}}); err != nil {
		return fmt.Errorf("send prompt: %w", err)
	}
	c.prompted = true
	sent := time.Now()
	phase, wait := "first chunk", c.t.FirstChunk
	for {
		f, err := c.rd.next(ctx, wait, phase)
		if err != nil {
			return c.abort(ctx, "wait for "+phase, err)
		}
		switch m := f.Msg.(type) {
		case *pb.Frame_Chunk:
			if c.rc.TTFT == 0 {
				c.rc.TTFT = time.Since(sent)
			}
			n, err := c.chunk(m.Chunk)
			if err != nil {
				return err
			}
			c.rc.CompletionTokens = c.received
			calls, lps := deltaFromPB(m.Chunk)
			if err := c.out(Chunk{Text: m.Chunk.GetDelta(), Tokens: int(n), TokensSoFar: int(c.received),
				ToolCalls: calls, Logprobs: lps, Refusal: m.Chunk.GetRefusal()}); err != nil {
				return c.stop(ctx, CancelClient, fmt.Errorf("deliver chunk: %w", err))
			}
			if c.rc.CompletionTokens-c.paidTokens >= c.every {
				if err := c.payCompletion(ctx); err != nil {
					return c.stop(ctx, CancelClient, err)
				}
			}
			phase, wait = "next chunk", c.t.Chunk
		case *pb.Frame_Embedding:
			if err := c.embedding(ctx, m.Embedding); err != nil {
				return err
			}
			phase, wait = "next chunk", c.t.Chunk
		case *pb.Frame_Done:
			if c.vectors != nil && slices.Contains(c.vectors, false) {
				_ = c.w.cancel(CancelProtocol)
				return c.violate(ViolationProtocol, fmt.Errorf("done: an embedding is missing: %w", ErrProtocol))
			}
			return c.done(ctx, m.Done)
		case *pb.Frame_Cancel:
			// Pay for what arrived; the worker stopped on its own.
			perr := c.payCompletion(context.WithoutCancel(ctx))
			return errors.Join(fmt.Errorf("stream: %w", &CancelError{Code: CancelCode(m.Cancel.GetCode())}), perr)
		default:
			_ = c.w.cancel(CancelProtocol)
			return c.violate(ViolationProtocol, fmt.Errorf("stream: got %s: %w", frameName(f), ErrProtocol))
		}
	}
}

// embedding checks an embeddings job's vector and hands it to the caller.
func (c *clientRun) embedding(ctx context.Context, m *pb.Embedding) error {
	i := int(m.GetIndex())
	if c.vectors == nil || i >= len(c.vectors) || c.vectors[i] {
		_ = c.w.cancel(CancelProtocol)
		return c.violate(ViolationProtocol, fmt.Errorf("embedding %d unasked or twice: %w", i, ErrProtocol))
	}
	v, err := vectorFromPB(m.GetVector(), c.job.EmbeddingDims)
	if err != nil {
		_ = c.w.cancel(CancelProtocol)
		return c.violate(ViolationProtocol, fmt.Errorf("%w: %w", err, ErrProtocol))
	}
	c.vectors[i] = true
	if err := c.out(Chunk{Index: i, Vector: v}); err != nil {
		return c.stop(ctx, CancelClient, fmt.Errorf("deliver embedding: %w", err))
	}
	return nil
}

// chunk checks a chunk against what came before and returns its token count.
func (c *clientRun) chunk(m *pb.Chunk) (uint64, error) {
	if c.vectors != nil {
		_ = c.w.cancel(CancelProtocol)
		return 0, c.violate(ViolationProtocol, fmt.Errorf("chunk in an embeddings job: %w", ErrProtocol))
	}
	tsf, prev := uint64(m.GetTokensSoFar()), c.received
	if tsf < prev || (tsf == prev && !chunkHasContent(m)) {
		_ = c.w.cancel(CancelProtocol)
		return 0, c.violate(ViolationProtocol, fmt.Errorf("chunk: tokens_so_far %d after %d: %w", tsf, prev, ErrProtocol))
	}
	if mt := c.job.Request.MaxTokens; mt > 0 && tsf > uint64(mt) {
		_ = c.w.cancel(CancelProtocol)
		return 0, c.violate(ViolationProtocol, fmt.Errorf("chunk: %d tokens over max_tokens %d: %w", tsf, mt, ErrProtocol))
	}
	if !creditAllows(c.rc.Price, uint64(c.rc.CreditTokens), prev, tsf, c.rc.Paid) {
		_ = c.w.cancel(CancelProtocol)
		return 0, c.violate(ViolationCredit, fmt.Errorf("chunk: %d tokens with %d nanoTON paid and credit %d: %w", tsf, c.rc.Paid, c.rc.CreditTokens, ErrCredit))
	}
	c.received = tsf
	return tsf - prev, nil
}

// creditAllows is the credit rule both sides apply: a worker may bring the
// completion tokens sent from prev to next when at most credit of them are unpaid,
// or, for a single delta larger than the whole window, when all before it are paid.
func creditAllows(p Price, credit, prev, next, paid uint64) bool {
	if next <= credit {
		return true
	}
	if c, err := Cost(Price{Completion: p.Completion}, 0, next-credit); err == nil && c <= paid {
		return true
	}
	if next-prev > credit {
		c, err := Cost(Price{Completion: p.Completion}, 0, prev)
		return err == nil && c <= paid
	}
	return false
}

// payCompletion pays for the completion tokens delivered so far.
func (c *clientRun) payCompletion(ctx context.Context) error {
	total, err := Cost(Price{Completion: c.rc.Price.Completion}, 0, c.rc.CompletionTokens)
	if err != nil {
		return fmt.Errorf("pay for %d tokens: %w", c.rc.CompletionTokens, err)
	}
	if err := c.payTo(ctx, total); err != nil {
		return err
	}
	c.paidTokens = c.rc.CompletionTokens
	return nil
}

func (c *clientRun) payTo(ctx context.Context, total uint64) error {
	if total <= c.rc.Paid {
		return nil
	}
	v, err := c.pay.Pay(ctx, c.job.ID, total)
	if err != nil {
		return fmt.Errorf("sign voucher for %d nanoTON: %w", total, err)
	}
	if err := c.w.send(&pb.Frame{Msg: &pb.Frame_Voucher{Voucher: &pb.Voucher{Voucher: v, Cumulative: total, JobId: c.job.ID[:]}}}); err != nil {
		return fmt.Errorf("send voucher for %d nanoTON: %w", total, err)
	}
	c.rc.Paid = total
	return nil
}

// done settles a finished job: it checks the worker's usage against the chunks
// and sends the final voucher.
func (c *clientRun) done(ctx context.Context, d *pb.Done) error {
	if (c.vectors != nil) != (d.GetFinishReason() == FinishEmbedded) {
		_ = c.w.cancel(CancelProtocol)
		return c.violate(ViolationProtocol, fmt.Errorf("done: finish reason %q for this kind of job: %w", d.GetFinishReason(), ErrProtocol))
	}
	u := d.GetUsage()
	c.rc.PromptTokens = uint64(u.GetPromptTokens())
	c.rc.ReportedCompletion = uint64(u.GetCompletionTokens())
	c.rc.FinishReason = d.GetFinishReason()
	c.rc.WorkerReceipt = d.GetReceipt()
	if c.rc.ReportedCompletion > c.received {
		_ = c.w.cancel(CancelOverReport)
		return c.violate(ViolationOverReport, fmt.Errorf("done: usage claims %d completion tokens, chunks carried %d: %w",
			c.rc.ReportedCompletion, c.received, ErrOverReport))
	}
	// The worker may bill fewer tokens than it delivered, never more; nor does the
	// client pay for tokens that reached it after it cancelled.
	completion := min(c.rc.ReportedCompletion, c.rc.CompletionTokens)
	cost, err := Cost(c.rc.Price, c.rc.PromptTokens, completion)
	if err != nil {
		_ = c.w.cancel(CancelInternal)
		return fmt.Errorf("done: %w", err)
	}
	c.rc.Cost = cost
	if err := c.payTo(ctx, cost); err != nil {
		return fmt.Errorf("final payment: %w", err)
	}
	return nil
}

// abort handles an error while waiting for a frame.
func (c *clientRun) abort(ctx context.Context, what string, err error) error {
	err = fmt.Errorf("%s: %w", what, err)
	switch {
	case errors.Is(err, ErrTimeout):
		_ = c.w.cancel(CancelTimeout)
		return err
	case ctx.Err() != nil && errors.Is(err, ctx.Err()):
		if c.prompted {
			return c.stop(ctx, CancelClient, err)
		}
		_ = c.w.cancel(CancelClient)
		return err
	case errors.Is(err, ErrProtocol):
		_ = c.w.cancel(CancelProtocol)
		return c.violate(ViolationProtocol, err)
	}
	return err
}

// stop cancels a running job: it tells the worker, then waits for its Done (and
// pays for what reached the caller) or for the Done deadline, which marks the
// worker as ignoring the cancel. Chunks that arrive after the cancel are counted
// against the worker's credit window but not delivered, nor paid for.
func (c *clientRun) stop(ctx context.Context, code CancelCode, cause error) error {
	if err := c.w.cancel(code); err != nil {
		return errors.Join(cause, err)
	}
	bg := context.WithoutCancel(ctx)
	pre := c.received
	t := time.NewTimer(c.t.Done)
	defer t.Stop()
	for {
		f, err := c.rd.nextTimer(bg, t.C, "done after cancel")
		switch {
		case errors.Is(err, ErrTimeout):
			return errors.Join(cause, c.violate(ViolationIgnoredStop,
				fmt.Errorf("no done within %v of cancel: %w", c.t.Done, ErrIgnoredStop)))
		case err != nil:
			return cause // the worker closed the stream: a valid way to stop
		}
		switch m := f.Msg.(type) {
		case *pb.Frame_Chunk:
			// In flight when the worker read the Cancel: at most the credit window.
			tsf := uint64(m.Chunk.GetTokensSoFar())
			if tsf > pre && (tsf-pre > uint64(c.rc.CreditTokens) ||
				!creditAllows(c.rc.Price, uint64(c.rc.CreditTokens), c.received, tsf, c.rc.Paid)) {
				_ = c.w.cancel(code)
				return errors.Join(cause, c.violate(ViolationIgnoredStop,
					fmt.Errorf("%d tokens after cancel: %w", tsf-pre, ErrIgnoredStop)))
			}
			if _, err := c.chunk(m.Chunk); err != nil {
				return errors.Join(cause, err)
			}
		case *pb.Frame_Done:
			return errors.Join(cause, c.done(bg, m.Done))
		case *pb.Frame_Cancel:
			return cause
		default:
			return errors.Join(cause, c.violate(ViolationProtocol, fmt.Errorf("after cancel: got %s: %w", frameName(f), ErrProtocol)))
		}
	}
}

func (c *clientRun) violate(v Violation, err error) error {
	if c.rc.Violation == ViolationNone {
		c.rc.Violation = v
	}
	c.log.Warn("worker violated the job protocol", "violation", v, "err", err)
	return err
}
