package market

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/cocoon-network/cocoon/market/pb"
	"github.com/cocoon-network/cocoon/runtime"
)

// Payee is the worker's side of its clients' payment channels
// (service.Payees over settle's lanes). It is safe for concurrent use.
type Payee interface {
	// Open starts job's account, paid on the channel the client named in Open
	// ("" when it named none); ctx bounds reading a channel the worker has not
	// heard of from the chain. An error refuses the job before anything is
	// generated: with the code of a *RejectError it wraps, else
	// REJECT_NO_CHANNEL.
	Open(ctx context.Context, job JobID, channel string) (Account, error)
}

// Account is one job's payments on the worker's side of a channel. Only the
// job's goroutine calls it.
type Account interface {
	// Reserve holds up to want unpaid completion tokens for the job within the
	// credit the client's jobs on the channel may hold together, and returns
	// what it got; 0 refuses the job as busy.
	Reserve(want int) int
	// State returns the newest channel state the worker holds (nil: none), sent
	// in Accept.
	State() []byte
	// Accept takes voucher, which the client says brings the job's total to
	// total nanoTON, where the job has cost at most most so far, and returns
	// what it adds to the job (0 for a resend). The voucher's state may be
	// older than one another job brought.
	Accept(voucher []byte, total, most uint64) (newly uint64, err error)
	// Durable returns the job's total that is on disk, and a channel that
	// receives when it rises. Credit is extended only on it.
	Durable() (uint64, <-chan struct{})
	// Close releases the job's credit; its payments stay.
	Close()
}

// OpenRequest is what the worker's admission hook sees of a job.
type OpenRequest struct {
	Job      JobID
	Model    string
	MaxPrice Price
	Params   runtime.Request // sampling parameters only: no prompt yet
}

// Worker serves jobs on streams. Set the fields before the first Serve; Serve is
// safe for concurrent use.
type Worker struct {
	Backend runtime.Backend
	Payee   Payee
	// Prices holds the price of every model the worker sells; a model absent here
	// or from the backend is rejected as unknown.
	Prices map[string]Price
	// CreditTokens is how many unpaid completion tokens the worker sends before it
	// waits for a voucher (0: 64).
	CreditTokens int
	Settlement   Settlement
	// MaxJobs bounds concurrent jobs; more are rejected as busy (0: no bound).
	MaxJobs int
	// Admit, when set, may decline a job with a reject code (RejectNoChannel when
	// the client has no open channel, RejectPolicy, ...); 0 admits it.
	Admit func(ctx context.Context, req OpenRequest) RejectCode
	// Receipt, when set, builds the receipt sent in Done (e.g. signed by the
	// enclave key).
	Receipt func(ctx context.Context, job JobID, u runtime.Usage, cost uint64) ([]byte, error)
	// MaxPromptBytes caps each message the worker reads (0: DefaultMaxPromptFrame).
	MaxPromptBytes int
	Timeouts       Timeouts
	// Observer, when set, learns of every job (started once its prompt arrived,
	// ended always) and every voucher accepted.
	Observer Observer
	Logger   *slog.Logger

	active atomic.Int64
}

// Serve runs the worker side of one job on rw and returns when the job has ended.
// It returns nil when the job finished and was paid in full, or was cancelled by
// the client. It never closes rw.
func (w *Worker) Serve(ctx context.Context, rw io.ReadWriter) error {
	return w.ServePeer(ctx, rw, "")
}

// ServePeer is Serve for a job from the client remote, whom the job's
// Observer events name.
func (w *Worker) ServePeer(ctx context.Context, rw io.ReadWriter, remote peer.ID) error {
	t := w.Timeouts.withDefaults()
	log := w.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("subsys", "market")
	maxIn := w.MaxPromptBytes
	if maxIn <= 0 {
		maxIn = DefaultMaxPromptFrame
	}
	s := &serveRun{w: w, t: t, log: log, out: newWriter(rw, t.Write), rd: startReader(rw, maxIn, checkClientFrame),
		peer: remote, start: time.Now()}
	defer s.rd.stop()
	err := s.run(ctx)
	if err != nil {
		log.Info("job ended", "job", s.id.String(), "err", err, "sent", s.sent, "paid", s.paid)
	}
	if w.Observer != nil && s.id != (JobID{}) {
		e := s.event()
		e.Duration = time.Since(s.start)
		e.TTFT = s.ttft
		e.PromptTokens, e.CompletionTokens, e.NanoTON = s.prompt, s.sent, s.paid
		e.Outcome, e.Err = workerOutcome(err, s.finishReason), err
		w.Observer.JobEnded(e)
	}
	return err
}

func (s *serveRun) event() JobEvent {
	return JobEvent{ID: s.id, Side: SideWorker, Peer: s.peer, Model: s.model, Start: s.start}
}

// Serve runs one job on rw with a Worker made of these parts and default limits.
func Serve(ctx context.Context, rw io.ReadWriter, backend runtime.Backend, payee Payee, prices map[string]Price) error {
	w := &Worker{Backend: backend, Payee: payee, Prices: prices}
	return w.Serve(ctx, rw)
}

type serveRun struct {
	w          *Worker
	t          Timeouts
	log        *slog.Logger
	out        *frameWriter
	rd         *frameReader
	id         JobID
	price      Price
	acct       Account
	sent       uint64 // completion tokens sent
	paid       uint64 // nanoTON paid for this job and on disk: credit rests on it
	accepted   uint64 // nanoTON the vouchers gave this job, on disk or not
	freeSlot   func() // gives back the MaxJobs slot, once
	releaseGen func() // ends the generation and frees its slots, once
	cost       uint64 // the job's cost, once priced
	priced     bool   // Done has been sent: cost is final
	durable    <-chan struct{}

	// for the observer
	peer         peer.ID
	model        string
	start        time.Time
	prompted     time.Time
	ttft         time.Duration
	prompt       uint64
	finishReason string
}

type genItem struct {
	d      runtime.Delta
	err    error
	usage  runtime.Usage // with err
	finish string        // with err == io.EOF
}

func (s *serveRun) reject(code RejectCode, why string) error {
	_ = s.out.send(&pb.Frame{Msg: &pb.Frame_Reject{Reject: &pb.Reject{Code: pb.RejectCode(code)}}})
	return fmt.Errorf("reject job %s: %s: %w", s.id, why, &RejectError{Code: code})
}

func (s *serveRun) run(ctx context.Context) error {
	f, err := s.rd.next(ctx, s.t.Open, "open")
	if errors.Is(err, ErrProtocol) {
		return s.reject(RejectBadRequest, err.Error())
	}
	if err != nil {
		return fmt.Errorf("wait for open: %w", err)
	}
	mo, ok := f.Msg.(*pb.Frame_Open)
	if !ok {
		return s.reject(RejectBadRequest, "first frame is "+frameName(f))
	}
	open := mo.Open
	copy(s.id[:], open.GetJobId())
	req := paramsFromPB(open.GetModel(), open.GetParams())
	s.model = req.Model
	// The client is a stranger too: its parameters get the gateway's checks
	// before anything is accepted, and its prompt after it arrives.
	if err := req.CheckParams(); err != nil {
		return s.reject(RejectBadRequest, err.Error())
	}
	maxPrice := Price{Prompt: open.GetMaxPricePrompt(), Completion: open.GetMaxPriceCompletion()}
	price, ok := s.w.Prices[req.Model]
	mi := slices.IndexFunc(s.w.Backend.Models(), func(m runtime.Model) bool { return m.ID == req.Model })
	if !ok || mi < 0 {
		return s.reject(RejectUnknownModel, "model "+req.Model)
	}
	model := s.w.Backend.Models()[mi]
	if err := model.Serves(req); err != nil {
		// A client selects only workers whose ad offers what the request uses.
		return s.reject(RejectBadRequest, err.Error())
	}
	if open.GetEmbed() {
		if err := model.ServesEmbeddings(); err != nil {
			return s.reject(RejectBadRequest, err.Error())
		}
		if _, ok := s.w.Backend.(runtime.Embedder); !ok {
			return s.reject(RejectBadRequest, "the backend serves no embeddings")
		}
	}
	if (maxPrice.Prompt != 0 && price.Prompt > maxPrice.Prompt) || (maxPrice.Completion != 0 && price.Completion > maxPrice.Completion) {
		return s.reject(RejectPrice, "client's maximum below the price")
	}
	lctx, cancel := context.WithTimeout(ctx, s.t.Channel)
	acct, err := s.w.Payee.Open(lctx, s.id, open.GetChannel())
	cancel()
	if err != nil {
		code := RejectNoChannel
		if re := (*RejectError)(nil); errors.As(err, &re) {
			code = re.Code
		}
		return s.reject(code, err.Error())
	}
	defer acct.Close()
	s.acct = acct
	if s.w.Admit != nil {
		if code := s.w.Admit(ctx, OpenRequest{Job: s.id, Model: req.Model, MaxPrice: maxPrice, Params: req}); code != 0 {
			return s.reject(code, "admission")
		}
	}
	if n := s.w.active.Add(1); s.w.MaxJobs > 0 && n > int64(s.w.MaxJobs) {
		s.w.active.Add(-1)
		return s.reject(RejectBusy, "all slots taken")
	}
	// The slot is the generation's: it is freed when the generation ends, not
	// when the job's last voucher has come (see generate).
	s.freeSlot = sync.OnceFunc(func() { s.w.active.Add(-1) })
	defer s.freeSlot()
	s.price = price
	credit := s.w.CreditTokens
	if credit <= 0 {
		credit = 64
	}
	credit = min(credit, maxCreditToken)
	if credit = acct.Reserve(credit); credit <= 0 {
		return s.reject(RejectBusy, "the client's jobs hold all the credit the worker extends it")
	}
	credit = min(credit, maxCreditToken)
	s.paid, s.durable = acct.Durable()
	s.accepted = s.paid
	err = s.out.send(&pb.Frame{Msg: &pb.Frame_Accept{Accept: &pb.Accept{
		PricePrompt: price.Prompt, PriceCompletion: price.Completion,
		CreditTokens: uint32(credit), Settlement: s.w.Settlement.toPB(),
		ChannelState: acct.State(),
	}}})
	if err != nil {
		return fmt.Errorf("accept job %s: %w", s.id, err)
	}

	f, err = s.rd.next(ctx, s.t.Prompt, "prompt")
	if err != nil {
		return s.fail(CancelProtocol, fmt.Errorf("wait for prompt: %w", err))
	}
	switch m := f.Msg.(type) {
	case *pb.Frame_Prompt:
		if open.GetEmbed() != (len(m.Prompt.GetInputs()) > 0) {
			return s.fail(CancelProtocol, fmt.Errorf("prompt: embedding inputs do not match the open: %w", ErrProtocol))
		}
		if open.GetEmbed() {
			return s.embed(ctx, model, runtime.EmbedRequest{Model: req.Model, Inputs: m.Prompt.GetInputs()})
		}
		req.Prompt = m.Prompt.GetPrompt()
		req.Continuation = m.Prompt.GetContinuation()
		req.Messages = messagesFromPB(m.Prompt.GetMessages())
	case *pb.Frame_Cancel:
		s.finishReason = FinishCancelled
		return nil // the client declined (price, attestation) before sending the prompt
	default:
		return s.fail(CancelProtocol, fmt.Errorf("wait for prompt: got %s: %w", frameName(f), ErrProtocol))
	}
	if err := req.Check(); err != nil {
		return s.fail(CancelBadRequest, fmt.Errorf("prompt: %w", err))
	}
	if err := model.Serves(req); err != nil { // the messages' tool calls and images
		return s.fail(CancelBadRequest, fmt.Errorf("prompt: %w", err))
	}
	s.prompted = time.Now()
	if s.w.Observer != nil {
		s.w.Observer.JobStarted(s.event())
	}
	return s.generate(ctx, req, uint64(credit))
}

// embed serves an embeddings job: the vectors, one Embedding each, then
// Done priced at the prompt price, and the wait for its voucher.
func (s *serveRun) embed(ctx context.Context, model runtime.Model, req runtime.EmbedRequest) error {
	if err := req.Check(); err != nil {
		return s.fail(CancelBadRequest, fmt.Errorf("prompt: %w", err))
	}
	s.prompted = time.Now()
	if s.w.Observer != nil {
		s.w.Observer.JobStarted(s.event())
	}
	e, err := s.w.Backend.(runtime.Embedder).Embed(ctx, req)
	s.freeSlot()
	switch {
	case errors.Is(err, runtime.ErrInvalidRequest):
		return s.fail(CancelBadRequest, fmt.Errorf("embed: %w", err))
	case err != nil:
		return s.fail(CancelInternal, fmt.Errorf("embed: %w", err))
	case len(e.Vectors) != len(req.Inputs) || e.PromptTokens < 0 || e.PromptTokens > math.MaxUint32:
		return s.fail(CancelInternal, fmt.Errorf("embed: the backend answered %d vectors for %d inputs, %d tokens", len(e.Vectors), len(req.Inputs), e.PromptTokens))
	}
	s.ttft = time.Since(s.prompted)
	for i, v := range e.Vectors {
		if len(v) != model.EmbeddingDims || len(v) > maxEmbeddingDims {
			return s.fail(CancelInternal, fmt.Errorf("embed: a vector of %d, the ad says %d", len(v), model.EmbeddingDims))
		}
		if err := s.out.send(&pb.Frame{Msg: &pb.Frame_Embedding{Embedding: &pb.Embedding{Index: uint32(i), Vector: vectorToPB(v)}}}); err != nil {
			return s.fail(CancelInternal, fmt.Errorf("send embedding: %w", err))
		}
	}
	return s.finish(ctx, e.PromptTokens, FinishEmbedded)
}

// fail sends Cancel for a wire-visible error and returns err.
func (s *serveRun) fail(code CancelCode, err error) error {
	if errors.Is(err, ErrTimeout) {
		code = CancelTimeout
	}
	if !errors.Is(err, ErrStreamEnded) {
		_ = s.out.cancel(code)
	}
	return fmt.Errorf("job %s: %w", s.id, err)
}

func (s *serveRun) generate(ctx context.Context, req runtime.Request, credit uint64) error {
	gctx, stopGen := context.WithCancel(ctx)
	st, err := s.w.Backend.Generate(gctx, req)
	if err != nil {
		stopGen()
		code := CancelInternal
		if errors.Is(err, runtime.ErrInvalidRequest) {
			code = CancelBadRequest
		}
		return s.fail(code, fmt.Errorf("start generation: %w", err))
	}
	// The producer owns the stream: it is the only goroutine that calls it. It
	// blocks on the channel while the credit window is spent, which pauses the
	// generation too.
	items := make(chan genItem)
	quit := make(chan struct{}) // closed when nobody reads items any more
	prodDone := make(chan struct{})
	go func() {
		defer close(prodDone)
		defer st.Close()
		for {
			d, err := st.Recv()
			it := genItem{d: d, err: err}
			if err != nil {
				it.usage = st.Usage()
				it.finish = st.FinishReason()
			}
			select {
			case items <- it:
			case <-gctx.Done():
				if err == nil {
					continue // drop deltas until the backend notices the cancellation
				}
				select { // hand over the final usage if anyone still listens
				case items <- it:
				case <-quit:
				}
				return
			case <-quit:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	// release ends the generation and frees its slots (the backend's, and
	// MaxJobs'), before the job waits for its last voucher: a client's next
	// job must not find the worker busy with one that is only being paid.
	release := sync.OnceFunc(func() {
		stopGen()
		close(quit)
		<-prodDone
		s.freeSlot()
	})
	defer release()
	s.releaseGen = release

	var (
		pending     *runtime.Delta
		voucherWait *time.Timer
		final       genItem
		ended       bool
	)
	defer func() {
		if voucherWait != nil {
			voucherWait.Stop()
		}
	}()
	for {
		if pending != nil {
			next := s.sent + uint64(pending.Tokens)
			if creditAllows(s.price, credit, s.sent, next, s.paid) {
				for _, c := range chunksOf(*pending, uint32(next)) {
					if err := s.out.send(&pb.Frame{Msg: &pb.Frame_Chunk{Chunk: c}}); err != nil {
						return s.fail(CancelInternal, fmt.Errorf("send chunk: %w", err))
					}
				}
				if s.sent == 0 {
					s.ttft = time.Since(s.prompted)
				}
				s.sent = next
				pending = nil
			}
		}
		if pending == nil && ended {
			break
		}
		var itemsC chan genItem
		var voucherC <-chan time.Time
		if pending == nil {
			itemsC = items
			if voucherWait != nil {
				voucherWait.Stop()
				voucherWait = nil
			}
		} else {
			if voucherWait == nil {
				voucherWait = time.NewTimer(s.t.Voucher)
			}
			voucherC = voucherWait.C
		}
		select {
		case it := <-itemsC:
			switch {
			case it.err == nil:
				if it.d.Tokens < 0 || (it.d.Tokens == 0 && it.d.Text == "" && it.d.Refusal == "" && len(it.d.ToolCalls) == 0 && len(it.d.Logprobs) == 0) {
					continue
				}
				d := it.d
				pending = &d
			case errors.Is(it.err, io.EOF):
				ended, final = true, it
			default:
				// The client pays for the tokens it received when it reads the
				// Cancel; wait for that voucher, then report the failure.
				err := s.fail(CancelInternal, fmt.Errorf("generate: %w", it.err))
				release()
				if owed, cerr := Cost(Price{Completion: s.price.Completion}, 0, s.sent); cerr == nil {
					if perr := s.waitPaid(ctx, owed); perr != nil {
						err = errors.Join(err, perr)
					}
				}
				return err
			}
		case it := <-s.rd.frames:
			if it.err != nil {
				return s.fail(CancelProtocol, fmt.Errorf("stream: %w", it.err))
			}
			switch m := it.f.Msg.(type) {
			case *pb.Frame_Voucher:
				if err := s.voucher(m.Voucher); err != nil {
					return err
				}
				if voucherWait != nil { // progress: the deadline starts again
					voucherWait.Stop()
					voucherWait = nil
				}
			case *pb.Frame_Cancel:
				stopGen()
				return s.cancelled(ctx, CancelCode(m.Cancel.GetCode()), items)
			default:
				return s.fail(CancelProtocol, fmt.Errorf("stream: got %s: %w", frameName(it.f), ErrProtocol))
			}
		case <-s.durable:
			s.paid, _ = s.acct.Durable()
		case <-voucherC:
			return s.fail(CancelNoPayment, fmt.Errorf("no voucher within %v with %d tokens sent, %d nanoTON paid: %w",
				s.t.Voucher, s.sent, s.paid, ErrNoPayment))
		case <-ctx.Done():
			return s.fail(CancelInternal, ctx.Err())
		}
	}
	finish := final.finish
	if finish == "" {
		finish = FinishStop
	}
	release()
	return s.finish(ctx, final.usage.PromptTokens, finish)
}

// voucher takes a payment for the job: it must name this job and pay no more
// than the job has cost (the completion tokens sent, and the prompt once Done
// has priced it).
func (s *serveRun) voucher(v *pb.Voucher) error {
	if JobID(v.GetJobId()) != s.id {
		return s.fail(CancelProtocol, fmt.Errorf("voucher names job %x, not this stream's: %w", v.GetJobId(), ErrProtocol))
	}
	most := s.cost
	if !s.priced {
		var err error
		if most, err = Cost(Price{Completion: s.price.Completion}, 0, s.sent); err != nil {
			return s.fail(CancelInternal, fmt.Errorf("price %d tokens: %w", s.sent, err))
		}
	}
	newly, err := s.acct.Accept(v.GetVoucher(), v.GetCumulative(), most)
	if err != nil {
		return s.fail(CancelBadVoucher, fmt.Errorf("accept voucher: %w", err))
	}
	s.accepted += newly
	if newly > 0 && s.w.Observer != nil {
		s.w.Observer.Voucher(VoucherEvent{Side: SideWorker, Peer: s.peer, Job: s.id, NanoTON: newly})
	}
	s.paid, _ = s.acct.Durable()
	return nil
}

// cancelled answers a client's Cancel: Done with what was sent, then the final
// voucher.
func (s *serveRun) cancelled(ctx context.Context, code CancelCode, items chan genItem) error {
	prompt := 0
	// The backend's usage is complete after Recv fails; wait briefly for it so
	// that the prompt is billed.
	t := time.NewTimer(s.t.Done / 2)
	defer t.Stop()
wait:
	for {
		select {
		case it := <-items:
			if it.err != nil {
				prompt = it.usage.PromptTokens
				break wait
			}
		case <-t.C:
			break wait
		}
	}
	s.releaseGen()
	s.log.Debug("job cancelled by client", "job", s.id.String(), "code", code)
	if err := s.finish(ctx, prompt, FinishCancelled); err != nil && !errors.Is(err, ErrUnderpaid) {
		return err
	}
	return nil
}

// finish sends Done and waits for the voucher that pays the job in full.
func (s *serveRun) finish(ctx context.Context, prompt int, reason string) error {
	s.prompt, s.finishReason = uint64(prompt), reason
	u := runtime.Usage{PromptTokens: prompt, CompletionTokens: int(s.sent)}
	cost, err := Cost(s.price, uint64(prompt), s.sent)
	if err != nil {
		return s.fail(CancelInternal, fmt.Errorf("price job: %w", err))
	}
	s.cost, s.priced = cost, true
	var receipt []byte
	if s.w.Receipt != nil {
		if receipt, err = s.w.Receipt(ctx, s.id, u, cost); err != nil {
			return s.fail(CancelInternal, fmt.Errorf("build receipt: %w", err))
		}
	}
	err = s.out.send(&pb.Frame{Msg: &pb.Frame_Done{Done: &pb.Done{
		Usage:        &pb.Usage{PromptTokens: uint32(prompt), CompletionTokens: uint32(s.sent)},
		FinishReason: reason,
		Receipt:      receipt,
	}}})
	if err != nil {
		return fmt.Errorf("job %s: send done: %w", s.id, err)
	}
	return s.waitPaid(ctx, cost)
}

// waitPaid waits up to the voucher deadline for vouchers that bring the job's
// total on disk to cost. After the client's Cancel, its first voucher after
// Done is its last: chunks in flight when the Cancel left never reached its
// caller, and it does not pay for them (the worker's loss is at most the
// credit window).
func (s *serveRun) waitPaid(ctx context.Context, cost uint64) error {
	t := time.NewTimer(s.t.Voucher)
	defer t.Stop()
	defer func() { s.paid, _ = s.acct.Durable() }()
	final := false
	for s.paid < cost {
		if final && s.paid >= s.accepted {
			return fmt.Errorf("job %s: the client paid %d of %d nanoTON after its cancel: %w", s.id, s.accepted, cost, ErrUnderpaid)
		}
		if s.accepted >= cost || final { // paid; the disk is a commit away
			select {
			case <-s.durable:
				s.paid, _ = s.acct.Durable()
				continue
			case <-t.C:
				return fmt.Errorf("job %s: paid %d of %d nanoTON, %d of it on disk: %w", s.id, s.accepted, cost, s.paid, ErrTimeout)
			case <-ctx.Done():
				return fmt.Errorf("job %s: %w", s.id, ctx.Err())
			}
		}
		f, err := s.rd.nextTimer(ctx, t.C, "final voucher")
		if err != nil {
			return fmt.Errorf("job %s: paid %d of %d nanoTON: %w: %w", s.id, s.accepted, cost, ErrUnderpaid, err)
		}
		switch m := f.Msg.(type) {
		case *pb.Frame_Voucher:
			if err := s.voucher(m.Voucher); err != nil {
				return err
			}
			final = s.finishReason == FinishCancelled
		case *pb.Frame_Cancel:
			return fmt.Errorf("job %s: paid %d of %d nanoTON: %w: %w", s.id, s.accepted, cost, ErrUnderpaid,
				&CancelError{Code: CancelCode(m.Cancel.GetCode())})
		default:
			return s.fail(CancelProtocol, fmt.Errorf("wait for final voucher: got %s: %w", frameName(f), ErrProtocol))
		}
	}
	return nil
}
