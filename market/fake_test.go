package market

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/runtime"
)

// textBackend is a runtime.Backend whose answer is a deterministic function of
// the prompt and seed: token i of the answer is " t<i>.<h>" with h a hash of the
// prompt, the seed and i. The answer is textLen tokens long (finish "stop"),
// shorter when MaxTokens cuts it ("length"). A continuation must be a prefix of
// the answer on token boundaries; generation resumes after it.
type textBackend struct {
	model     string
	textLen   int
	perDelta  int           // tokens per delta (0: 1)
	tokenWait time.Duration // sleep before each delta
	// stallAfter > 0: after that many deltas Recv blocks until ctx ends.
	stallAfter int
	// failAfter > 0: after that many deltas Recv fails.
	failAfter int
	// onDelta, when set, runs before delta n (1-based) is produced.
	onDelta   func(n int)
	mu        sync.Mutex
	generated int // deltas produced over all streams
}

func (b *textBackend) Models() []runtime.Model {
	return []runtime.Model{{ID: b.model, ContextLength: 2048}}
}

func (b *textBackend) Close() error { return nil }

func promptText(r runtime.Request) string {
	var sb strings.Builder
	sb.WriteString(r.Prompt)
	for _, m := range r.Messages {
		sb.WriteString(m.Role + ": " + m.Content + "\n")
	}
	return sb.String()
}

// token returns token i of the answer to r.
func answerToken(r runtime.Request, i int) string {
	h := fnv.New32a()
	seed := uint64(0)
	if r.Seed != nil {
		seed = *r.Seed
	}
	fmt.Fprintf(h, "%s|%d|%d", promptText(r), seed, i)
	return fmt.Sprintf(" t%d.%d", i, h.Sum32()%1000)
}

// answer is the whole answer to r without continuation, cut at max tokens.
func (b *textBackend) answer(r runtime.Request, maxTokens int) string {
	var sb strings.Builder
	n := b.textLen
	if maxTokens > 0 {
		n = min(n, maxTokens)
	}
	for i := range n {
		sb.WriteString(answerToken(r, i))
	}
	return sb.String()
}

func (b *textBackend) Generate(ctx context.Context, r runtime.Request) (runtime.Stream, error) {
	if r.Model != b.model {
		return nil, runtime.ErrUnknownModel
	}
	start := 0
	rest := r.Continuation
	for rest != "" {
		tok := answerToken(r, start)
		if !strings.HasPrefix(rest, tok) {
			return nil, fmt.Errorf("text backend: continuation is not a prefix of the answer at token %d", start)
		}
		rest = rest[len(tok):]
		start++
	}
	end := b.textLen
	finish := runtime.FinishStop
	if r.MaxTokens > 0 && start+r.MaxTokens < end {
		end, finish = start+r.MaxTokens, runtime.FinishLength
	}
	prompt := len(strings.Fields(promptText(r))) + start
	per := max(b.perDelta, 1)
	return &textStream{b: b, ctx: ctx, r: r, next: start, end: end, per: per, finish: finish, prompt: prompt}, nil
}

type textStream struct {
	b          *textBackend
	ctx        context.Context
	r          runtime.Request
	next, end  int
	per        int
	deltas     int
	completion int
	prompt     int
	finish     string
	closed     bool
}

func (s *textStream) Recv() (runtime.Delta, error) {
	if s.closed {
		return runtime.Delta{}, errors.New("text backend: stream closed")
	}
	if err := s.ctx.Err(); err != nil {
		return runtime.Delta{}, err
	}
	if s.b.failAfter > 0 && s.deltas >= s.b.failAfter {
		return runtime.Delta{}, errors.New("text backend: out of memory")
	}
	if s.b.stallAfter > 0 && s.deltas >= s.b.stallAfter {
		<-s.ctx.Done()
		return runtime.Delta{}, s.ctx.Err()
	}
	if s.next >= s.end {
		return runtime.Delta{}, io.EOF
	}
	if s.b.onDelta != nil {
		s.b.onDelta(s.deltas + 1)
	}
	if s.b.tokenWait > 0 {
		select {
		case <-time.After(s.b.tokenWait):
		case <-s.ctx.Done():
			return runtime.Delta{}, s.ctx.Err()
		}
	}
	var sb strings.Builder
	n := 0
	for ; n < s.per && s.next < s.end; n++ {
		sb.WriteString(answerToken(s.r, s.next))
		s.next++
	}
	s.deltas++
	s.completion += n
	s.b.mu.Lock()
	s.b.generated++
	s.b.mu.Unlock()
	return runtime.Delta{Text: sb.String(), Tokens: n}, nil
}

func (s *textStream) Usage() runtime.Usage {
	return runtime.Usage{PromptTokens: s.prompt, CompletionTokens: s.completion}
}
func (s *textStream) FinishReason() string { return s.finish }
func (s *textStream) Close() error         { s.closed = true; return nil }

// memChannel is an in-memory payment channel from one client to one worker,
// with the lanes' rules (settle.PayerLane, settle.PayeeLane) over an HMAC
// instead of a signature: the payer signs channel-wide cumulative states
// (seqno, cumulative) that its jobs' payments raise; the payee keeps the
// highest, and gives each job what its voucher messages attribute, out of
// what the states paid and no job was given. A job that claims more than that,
// more than it cost, or less than before is refused.
type memChannel struct {
	key []byte

	mu         sync.Mutex
	payerJob   map[JobID]uint64 // highest total signed per job
	payerSeq   uint64
	payerCum   uint64
	payeeJob   map[JobID]uint64 // highest total given per job
	payeeSeq   uint64
	payeeCum   uint64
	payeeState []byte
	pool       uint64
	failAfter  int // >0: Pay fails from that call on
	payCalls   int
	acceptLog  []uint64 // newly given amounts, in order
	monotonErr error    // first monotonicity violation seen on either side
}

func newMemChannel() *memChannel {
	return &memChannel{key: []byte("test channel key"), payerJob: map[JobID]uint64{}, payeeJob: map[JobID]uint64{}}
}

type memPayer struct{ ch *memChannel }
type memPayee struct{ ch *memChannel }
type memAccount struct {
	ch  *memChannel
	job JobID
}

func (c *memChannel) payer() Payer { return memPayer{c} }
func (c *memChannel) payee() Payee { return memPayee{c} }

func (c *memChannel) sign(seq, cum uint64) []byte {
	v := make([]byte, 16, 16+32)
	binary.BigEndian.PutUint64(v, seq)
	binary.BigEndian.PutUint64(v[8:], cum)
	m := hmac.New(sha256.New, c.key)
	m.Write(v)
	return m.Sum(v)
}

func (c *memChannel) verify(v []byte) (seq, cum uint64, err error) {
	if len(v) != 48 {
		return 0, 0, errors.New("mem channel: voucher length")
	}
	m := hmac.New(sha256.New, c.key)
	m.Write(v[:16])
	if !hmac.Equal(m.Sum(nil), v[16:]) {
		return 0, 0, errors.New("mem channel: bad signature")
	}
	return binary.BigEndian.Uint64(v), binary.BigEndian.Uint64(v[8:]), nil
}

func (p memPayer) Channel() string { return "" }

func (p memPayer) Sync(state []byte) error {
	if len(state) == 0 {
		return nil
	}
	c := p.ch
	seq, cum, err := c.verify(state)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if seq > c.payerSeq {
		c.payerSeq, c.payerCum = seq, cum
	}
	return nil
}

func (p memPayer) End(job JobID) {}

func (p memPayer) Pay(ctx context.Context, job JobID, total uint64) ([]byte, error) {
	c := p.ch
	c.mu.Lock()
	defer c.mu.Unlock()
	c.payCalls++
	if c.failAfter > 0 && c.payCalls >= c.failAfter {
		return nil, errors.New("mem channel: payer out of funds")
	}
	prev := c.payerJob[job]
	if total <= prev {
		err := fmt.Errorf("mem channel: pay %d for job %s after %d: not increasing", total, job, prev)
		if c.monotonErr == nil {
			c.monotonErr = err
		}
		return nil, err
	}
	c.payerSeq++
	c.payerCum += total - prev
	c.payerJob[job] = total
	return c.sign(c.payerSeq, c.payerCum), nil
}

func (p memPayee) Open(ctx context.Context, job JobID, channel string) (Account, error) {
	return &memAccount{ch: p.ch, job: job}, nil
}

func (a *memAccount) Reserve(want int) int { return want }
func (a *memAccount) Close()               {}

func (a *memAccount) State() []byte {
	a.ch.mu.Lock()
	defer a.ch.mu.Unlock()
	return a.ch.payeeState
}

func (a *memAccount) Durable() (uint64, <-chan struct{}) {
	a.ch.mu.Lock()
	defer a.ch.mu.Unlock()
	return a.ch.payeeJob[a.job], nil
}

func (a *memAccount) Accept(v []byte, total, most uint64) (uint64, error) {
	c := a.ch
	seq, cum, err := c.verify(v)
	if err != nil {
		return 0, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case seq > c.payeeSeq && cum < c.payeeCum, seq <= c.payeeSeq && cum > c.payeeCum:
		err := fmt.Errorf("mem channel: state (%d, %d) contradicts (%d, %d)", seq, cum, c.payeeSeq, c.payeeCum)
		if c.monotonErr == nil {
			c.monotonErr = err
		}
		return 0, err
	case seq > c.payeeSeq:
		c.pool += cum - c.payeeCum
		c.payeeSeq, c.payeeCum, c.payeeState = seq, cum, v
	}
	prev := c.payeeJob[a.job]
	switch {
	case total < prev:
		return 0, fmt.Errorf("mem channel: job total %d below %d", total, prev)
	case total > most:
		return 0, fmt.Errorf("mem channel: job total %d above its cost %d", total, most)
	case total-prev > c.pool:
		return 0, fmt.Errorf("mem channel: job claims %d, the states pay %d", total-prev, c.pool)
	}
	newly := total - prev
	c.pool -= newly
	c.payeeJob[a.job] = total
	if newly > 0 {
		c.acceptLog = append(c.acceptLog, newly)
	}
	return newly, nil
}

// accepted is what the payee holds for job.
func (c *memChannel) accepted(job JobID) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.payeeJob[job]
}

func (c *memChannel) checkMonotonic(t *testing.T) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.monotonErr != nil {
		t.Errorf("payment monotonicity: %v", c.monotonErr)
	}
}

// pipeResult is what one job over net.Pipe produced.
type pipeResult struct {
	rc        Receipt
	err       error
	chunks    []Chunk
	text      string
	workerErr error
}

// runPipe runs w.Serve and Run on the two ends of a net.Pipe and waits for both.
func runPipe(ctx context.Context, w *Worker, job Job, pay Payer, opt RunOptions, out func(Chunk) error) pipeResult {
	cc, wc := net.Pipe()
	return runConns(ctx, cc, wc, w, job, pay, opt, out)
}

// runConns runs w.Serve on wc and Run on cc and waits for both.
func runConns(ctx context.Context, cc, wc net.Conn, w *Worker, job Job, pay Payer, opt RunOptions, out func(Chunk) error) pipeResult {
	var res pipeResult
	done := make(chan struct{})
	go func() {
		defer close(done)
		res.workerErr = w.Serve(context.WithoutCancel(ctx), wc) // the client's cancel must travel by wire
		wc.Close()
	}()
	var sb strings.Builder
	res.rc, res.err = Run(ctx, cc, job, pay, func(c Chunk) error {
		res.chunks = append(res.chunks, c)
		sb.WriteString(c.Text)
		if out != nil {
			return out(c)
		}
		return nil
	}, opt)
	cc.Close()
	<-done
	res.text = sb.String()
	return res
}

func seed(n uint64) *uint64 { return &n }

func testJob(model string, maxTokens int) Job {
	return Job{
		ID: NewJobID(),
		Request: runtime.Request{
			Model:     model,
			Messages:  []runtime.Message{{Role: "user", Content: "once upon a time"}},
			MaxTokens: maxTokens,
			Seed:      seed(7),
		},
	}
}
