package market

import (
	"context"
	"errors"
	"math/big"
	"net"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/libp2p/go-msgio/pbio"

	"github.com/cocoon-network/cocoon/market/pb"
)

// wantCost is the design's rounding, computed with big integers.
func wantCost(p Price, prompt, completion uint64) uint64 {
	x := new(big.Int).Mul(new(big.Int).SetUint64(prompt), new(big.Int).SetUint64(p.Prompt))
	x.Add(x, new(big.Int).Mul(new(big.Int).SetUint64(completion), new(big.Int).SetUint64(p.Completion)))
	x.Add(x, big.NewInt(perMillion-1))
	x.Quo(x, big.NewInt(perMillion))
	return x.Uint64()
}

func TestJobHappyPath(t *testing.T) {
	cases := []struct {
		name      string
		price     Price
		credit    int
		perDelta  int
		maxTokens int
		payEvery  int
	}{
		{name: "rounding", price: Price{Prompt: 1_234_567, Completion: 7_654_321}, credit: 64},
		{name: "tiny prices", price: Price{Prompt: 1, Completion: 3}, credit: 4},
		{name: "window of one token, deltas of three", price: Price{Prompt: 999_999, Completion: 1_000_001}, credit: 1, perDelta: 3},
		{name: "pay every token", price: Price{Prompt: 10, Completion: 333_333}, credit: 2, payEvery: 1},
		{name: "free", price: Price{}, credit: 8},
		{name: "huge prices", price: Price{Prompt: 1e15, Completion: 3e15 + 7}, credit: 5},
		{name: "max tokens", price: Price{Prompt: 5_000, Completion: 15_000}, credit: 3, maxTokens: 10},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := &textBackend{model: "m", textLen: 40, perDelta: tc.perDelta}
			ch := newMemChannel()
			w := &Worker{Backend: b, Payee: ch.payee(), Prices: map[string]Price{"m": tc.price}, CreditTokens: tc.credit}
			job := testJob("m", tc.maxTokens)
			res := runPipe(t.Context(), w, job, ch.payer(), RunOptions{PayEvery: tc.payEvery}, nil)
			if res.err != nil || res.workerErr != nil {
				t.Fatalf("Run = %v, Serve = %v; want nil, nil", res.err, res.workerErr)
			}
			if want := b.answer(job.Request, tc.maxTokens); res.text != want {
				t.Fatalf("text = %q; want %q", res.text, want)
			}
			wantTokens := uint64(40)
			wantFinish := FinishStop
			if tc.maxTokens > 0 {
				wantTokens, wantFinish = uint64(tc.maxTokens), FinishLength
			}
			rc := res.rc
			if rc.CompletionTokens != wantTokens || rc.ReportedCompletion != wantTokens || rc.FinishReason != wantFinish {
				t.Fatalf("receipt completion %d reported %d finish %q; want %d, %s", rc.CompletionTokens, rc.ReportedCompletion, rc.FinishReason, wantTokens, wantFinish)
			}
			prev := 0
			for _, c := range res.chunks {
				if c.TokensSoFar != prev+c.Tokens || c.Tokens <= 0 {
					t.Fatalf("chunk %+v after %d tokens", c, prev)
				}
				prev = c.TokensSoFar
			}
			if rc.PromptTokens != 5 { // "user: once upon a time"
				t.Fatalf("prompt tokens = %d; want 5", rc.PromptTokens)
			}
			want := wantCost(tc.price, rc.PromptTokens, wantTokens)
			if rc.Cost != want || rc.Paid != want {
				t.Fatalf("cost %d paid %d; want %d", rc.Cost, rc.Paid, want)
			}
			if got := ch.accepted(job.ID); got != want {
				t.Fatalf("payee holds %d nanoTON for the job; want %d", got, want)
			}
			if rc.Violation != ViolationNone {
				t.Fatalf("violation %v on an honest worker", rc.Violation)
			}
			ch.checkMonotonic(t)
		})
	}
}

func TestCost(t *testing.T) {
	cases := []struct {
		p         Price
		pr, co    uint64
		want      uint64
		wantError bool
	}{
		{Price{}, 100, 100, 0, false},
		{Price{Prompt: 1}, 1, 0, 1, false},
		{Price{Prompt: 1_000_000}, 3, 0, 3, false},
		{Price{Prompt: 1_000_000, Completion: 1}, 3, 1, 4, false},
		{Price{Prompt: 999_999, Completion: 1}, 1, 1, 1, false},
		{Price{Prompt: 999_999, Completion: 2}, 1, 1, 2, false},
		{Price{Prompt: 1 << 62, Completion: 1 << 62}, 1 << 19, 1 << 19, wantCost(Price{Prompt: 1 << 62, Completion: 1 << 62}, 1<<19, 1<<19), false},
		{Price{Prompt: 1 << 63, Completion: 1 << 63}, 1 << 20, 1 << 20, 0, true},
		{Price{Prompt: ^uint64(0), Completion: ^uint64(0)}, ^uint64(0), ^uint64(0), 0, true},
	}
	for _, c := range cases {
		got, err := Cost(c.p, c.pr, c.co)
		if (err != nil) != c.wantError || (err == nil && got != c.want) {
			t.Errorf("Cost(%+v, %d, %d) = %d, %v; want %d (error %v)", c.p, c.pr, c.co, got, err, c.want, c.wantError)
		}
	}
}

func FuzzCost(f *testing.F) {
	f.Add(uint64(1_234_567), uint64(7_654_321), uint64(12), uint64(40))
	f.Add(uint64(1<<63), uint64(3), uint64(1<<40), uint64(1<<30))
	f.Fuzz(func(t *testing.T, pp, pc, pr, co uint64) {
		p := Price{Prompt: pp, Completion: pc}
		got, err := Cost(p, pr, co)
		x := new(big.Int).Mul(new(big.Int).SetUint64(pr), new(big.Int).SetUint64(pp))
		x.Add(x, new(big.Int).Mul(new(big.Int).SetUint64(co), new(big.Int).SetUint64(pc)))
		x.Add(x, big.NewInt(perMillion-1))
		x.Quo(x, big.NewInt(perMillion))
		if !x.IsUint64() {
			if err == nil {
				t.Fatalf("Cost(%+v, %d, %d) = %d; want overflow", p, pr, co, got)
			}
			return
		}
		if err != nil || got != x.Uint64() {
			t.Fatalf("Cost(%+v, %d, %d) = %d, %v; want %d", p, pr, co, got, err, x.Uint64())
		}
	})
}

// rawPeer speaks the job protocol frame by frame, to play a misbehaving side.
type rawPeer struct {
	t  *testing.T
	c  net.Conn
	r  pbio.Reader
	w  pbio.Writer
	id JobID
}

func newRawPeer(t *testing.T, c net.Conn) *rawPeer {
	return &rawPeer{t: t, c: c, r: pbio.NewDelimitedReader(c, DefaultMaxPromptFrame), w: pbio.NewDelimitedWriter(c)}
}

func (p *rawPeer) send(f *pb.Frame) error { return p.w.WriteMsg(f) }

func (p *rawPeer) recv() (*pb.Frame, error) {
	f := new(pb.Frame)
	return f, p.r.ReadMsg(f)
}

func (p *rawPeer) mustRecv() *pb.Frame {
	p.t.Helper()
	f, err := p.recv()
	if err != nil {
		p.t.Fatalf("raw peer read: %v", err)
	}
	return f
}

func (p *rawPeer) mustSend(f *pb.Frame) {
	p.t.Helper()
	if err := p.send(f); err != nil {
		p.t.Fatalf("raw peer write: %v", err)
	}
}

func openFrame(job Job) *pb.Frame {
	return &pb.Frame{Msg: &pb.Frame_Open{Open: &pb.Open{JobId: job.ID[:], Model: job.Request.Model, Params: &pb.Params{MaxTokens: uint32(job.Request.MaxTokens)}}}}
}

func promptFrame(s string) *pb.Frame {
	return &pb.Frame{Msg: &pb.Frame_Prompt{Prompt: &pb.Prompt{Prompt: s}}}
}

func chunkFrame(text string, tsf uint32) *pb.Frame {
	return &pb.Frame{Msg: &pb.Frame_Chunk{Chunk: &pb.Chunk{Delta: text, TokensSoFar: tsf}}}
}

func acceptFrame(p Price, credit uint32) *pb.Frame {
	return &pb.Frame{Msg: &pb.Frame_Accept{Accept: &pb.Accept{PricePrompt: p.Prompt, PriceCompletion: p.Completion, CreditTokens: credit}}}
}

// A client that never pays gets exactly the credit window, then the worker stops
// with CANCEL_NO_PAYMENT once the voucher deadline passes.
func TestCreditWindowBlocksWithoutVoucher(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const credit = 7
		b := &textBackend{model: "m", textLen: 40}
		ch := newMemChannel()
		w := &Worker{Backend: b, Payee: ch.payee(), Prices: map[string]Price{"m": {Prompt: 100, Completion: 2_000_000}}, CreditTokens: credit}
		cc, wc := net.Pipe()
		defer cc.Close()
		serveErr := make(chan error, 1)
		go func() { serveErr <- w.Serve(t.Context(), wc); wc.Close() }()
		p := newRawPeer(t, cc)
		job := testJob("m", 0)
		p.mustSend(openFrame(job))
		if _, ok := p.mustRecv().Msg.(*pb.Frame_Accept); !ok {
			t.Fatal("no accept")
		}
		start := time.Now()
		p.mustSend(promptFrame("hello there"))
		tokens := 0
		for {
			f := p.mustRecv()
			if c, ok := f.Msg.(*pb.Frame_Chunk); ok {
				tokens = int(c.Chunk.TokensSoFar)
				continue
			}
			c, ok := f.Msg.(*pb.Frame_Cancel)
			if !ok || c.Cancel.Code != pb.CancelCode_CANCEL_NO_PAYMENT {
				t.Fatalf("got %v; want Cancel NO_PAYMENT", f)
			}
			break
		}
		if tokens != credit {
			t.Fatalf("unpaying client got %d tokens; want the credit window %d", tokens, credit)
		}
		if waited := time.Since(start); waited != 10*time.Second {
			t.Fatalf("worker stopped after %v; want the voucher deadline 10s", waited)
		}
		if err := <-serveErr; !errors.Is(err, ErrNoPayment) {
			t.Fatalf("Serve = %v; want ErrNoPayment", err)
		}
	})
}

// A client that pays for the first 5 tokens and then stops gets 5 + credit tokens.
func TestClientThatStopsPayingGetsNoMore(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const credit = 4
		price := Price{Prompt: 100, Completion: 2_000_000}
		b := &textBackend{model: "m", textLen: 40}
		ch := newMemChannel()
		w := &Worker{Backend: b, Payee: ch.payee(), Prices: map[string]Price{"m": price}, CreditTokens: credit}
		cc, wc := net.Pipe()
		defer cc.Close()
		serveErr := make(chan error, 1)
		go func() { serveErr <- w.Serve(t.Context(), wc); wc.Close() }()
		p := newRawPeer(t, cc)
		job := testJob("m", 0)
		p.mustSend(openFrame(job))
		p.mustRecv()
		p.mustSend(promptFrame("hello"))
		tokens, paid, paidFor := 0, false, 0
		for {
			f := p.mustRecv()
			if c, ok := f.Msg.(*pb.Frame_Chunk); ok {
				tokens = int(c.Chunk.TokensSoFar)
				if tokens >= 3 && !paid {
					paidFor = tokens // pay for what arrived; paying ahead is refused
					total, _ := Cost(Price{Completion: price.Completion}, 0, uint64(paidFor))
					v, err := ch.payer().Pay(t.Context(), job.ID, total)
					if err != nil {
						t.Fatal(err)
					}
					p.mustSend(&pb.Frame{Msg: &pb.Frame_Voucher{Voucher: &pb.Voucher{Voucher: v, Cumulative: total, JobId: job.ID[:]}}})
					paid = true
				}
				continue
			}
			if c, ok := f.Msg.(*pb.Frame_Cancel); !ok || c.Cancel.Code != pb.CancelCode_CANCEL_NO_PAYMENT {
				t.Fatalf("got %v; want Cancel NO_PAYMENT", f)
			}
			break
		}
		if tokens != paidFor+credit {
			t.Fatalf("client that paid for %d tokens got %d; want %d", paidFor, tokens, paidFor+credit)
		}
		if err := <-serveErr; !errors.Is(err, ErrNoPayment) {
			t.Fatalf("Serve = %v; want ErrNoPayment", err)
		}
	})
}

// When the client's payer fails, the client cancels; the worker is paid exactly
// what was sent, and the worker sent no more than credit beyond that.
func TestPayerFailureCancels(t *testing.T) {
	const credit = 4
	price := Price{Prompt: 100, Completion: 2_000_000}
	b := &textBackend{model: "m", textLen: 40}
	ch := newMemChannel()
	ch.failAfter = 3
	w := &Worker{Backend: b, Payee: ch.payee(), Prices: map[string]Price{"m": price}, CreditTokens: credit}
	job := testJob("m", 0)
	res := runPipe(t.Context(), w, job, ch.payer(), RunOptions{}, nil)
	if res.err == nil {
		t.Fatal("Run succeeded with a failing payer")
	}
	if res.workerErr != nil {
		t.Fatalf("Serve = %v; want nil after a client cancel", res.workerErr)
	}
	if got := ch.accepted(job.ID); got != res.rc.Paid {
		t.Fatalf("payee holds %d; client says it paid %d", got, res.rc.Paid)
	}
	paidTokens := uint64(0)
	for c, _ := Cost(Price{Completion: price.Completion}, 0, paidTokens+1); c <= res.rc.Paid; c, _ = Cost(Price{Completion: price.Completion}, 0, paidTokens+1) {
		paidTokens++
	}
	if res.rc.CompletionTokens > paidTokens+credit {
		t.Fatalf("client received %d tokens with %d paid for; credit %d", res.rc.CompletionTokens, paidTokens, credit)
	}
	ch.checkMonotonic(t)
}

// scriptedWorker accepts a job, reads the prompt and hands the rest to script.
func scriptedWorker(t *testing.T, price Price, credit uint32, script func(p *rawPeer)) (net.Conn, chan struct{}) {
	cc, wc := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer wc.Close()
		p := newRawPeer(t, wc)
		if _, err := p.recv(); err != nil {
			return
		}
		if err := p.send(acceptFrame(price, credit)); err != nil {
			return
		}
		if _, err := p.recv(); err != nil {
			return
		}
		script(p)
	}()
	return cc, done
}

func TestWorkerOverReportingCaught(t *testing.T) {
	price := Price{Prompt: 1000, Completion: 3_000_000}
	ch := newMemChannel()
	var gotCancel *pb.Cancel
	cc, done := scriptedWorker(t, price, 100, func(p *rawPeer) {
		for i := 1; i <= 5; i++ {
			if p.send(chunkFrame(" x", uint32(i))) != nil {
				return
			}
		}
		p.send(&pb.Frame{Msg: &pb.Frame_Done{Done: &pb.Done{Usage: &pb.Usage{PromptTokens: 3, CompletionTokens: 9}, FinishReason: "stop"}}})
		for {
			f, err := p.recv()
			if err != nil {
				return
			}
			if c, ok := f.Msg.(*pb.Frame_Cancel); ok {
				gotCancel = c.Cancel
			}
		}
	})
	job := testJob("m", 0)
	rc, err := Run(t.Context(), cc, job, ch.payer(), func(Chunk) error { return nil }, RunOptions{})
	cc.Close()
	<-done
	if !errors.Is(err, ErrOverReport) || rc.Violation != ViolationOverReport {
		t.Fatalf("Run = %v, violation %v; want ErrOverReport", err, rc.Violation)
	}
	if gotCancel.GetCode() != pb.CancelCode_CANCEL_OVER_REPORT {
		t.Fatalf("worker got cancel %v; want OVER_REPORT", gotCancel)
	}
	if max5, _ := Cost(Price{Completion: price.Completion}, 0, 5); rc.Paid > max5 {
		t.Fatalf("client paid %d for 5 delivered tokens; at most %d", rc.Paid, max5)
	}
	// The reputation hit.
	sel := &Selector{}
	before := sel.Reputation("w")
	sel.Record("w", rc, err)
	if after := sel.Reputation("w"); after >= before {
		t.Fatalf("reputation %v after an over-report; want below %v", after, before)
	}
}

func TestWorkerIgnoringCancelCaught(t *testing.T) {
	price := Price{Prompt: 1000, Completion: 3_000_000}
	t.Run("keeps streaming", func(t *testing.T) {
		ch := newMemChannel()
		const credit = 100
		cc, done := scriptedWorker(t, price, credit, func(p *rawPeer) {
			go func() { // drain the client's frames
				for {
					if _, err := p.recv(); err != nil {
						return
					}
				}
			}()
			for i := 1; i < 1000; i++ {
				if p.send(chunkFrame(" x", uint32(i))) != nil {
					return
				}
			}
		})
		n := 0
		rc, err := Run(t.Context(), cc, testJob("m", 0), ch.payer(), func(Chunk) error {
			if n++; n == 3 {
				return errors.New("caller gone")
			}
			return nil
		}, RunOptions{})
		cc.Close()
		<-done
		if !errors.Is(err, ErrIgnoredStop) || rc.Violation != ViolationIgnoredStop {
			t.Fatalf("Run = %v, violation %v; want ErrIgnoredStop", err, rc.Violation)
		}
		if rc.CompletionTokens != 3 {
			t.Fatalf("delivered %d tokens; want 3 (none after cancel)", rc.CompletionTokens)
		}
		if max3, _ := Cost(Price{Completion: price.Completion}, 0, 3); rc.Paid > max3 {
			t.Fatalf("paid %d; at most %d for 3 delivered tokens", rc.Paid, max3)
		}
	})
	t.Run("never sends done", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			ch := newMemChannel()
			cc, done := scriptedWorker(t, price, 100, func(p *rawPeer) {
				for i := 1; i <= 3; i++ {
					p.send(chunkFrame(" x", uint32(i)))
				}
				for { // reads Cancel, answers nothing
					if _, err := p.recv(); err != nil {
						return
					}
				}
			})
			ctx, cancel := context.WithCancel(t.Context())
			n := 0
			start := time.Now()
			rc, err := Run(ctx, cc, testJob("m", 0), ch.payer(), func(Chunk) error {
				if n++; n == 3 {
					cancel()
				}
				return nil
			}, RunOptions{})
			cc.Close()
			<-done
			if !errors.Is(err, ErrIgnoredStop) || !errors.Is(err, context.Canceled) || rc.Violation != ViolationIgnoredStop {
				t.Fatalf("Run = %v, violation %v; want context.Canceled and ErrIgnoredStop", err, rc.Violation)
			}
			if d := time.Since(start); d != 5*time.Second {
				t.Fatalf("gave up after %v; want the Done deadline 5s", d)
			}
		})
	})
	t.Run("honest worker", func(t *testing.T) {
		ch := newMemChannel()
		b := &textBackend{model: "m", textLen: 400}
		w := &Worker{Backend: b, Payee: ch.payee(), Prices: map[string]Price{"m": price}, CreditTokens: 4}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		job := testJob("m", 0)
		n := 0
		res := runPipe(ctx, w, job, ch.payer(), RunOptions{}, func(Chunk) error {
			if n++; n == 6 {
				cancel()
			}
			return nil
		})
		if !errors.Is(res.err, context.Canceled) || res.rc.Violation != ViolationNone {
			t.Fatalf("Run = %v, violation %v; want context.Canceled only", res.err, res.rc.Violation)
		}
		if res.workerErr != nil {
			t.Fatalf("Serve = %v; want nil on a client cancel", res.workerErr)
		}
		if res.rc.FinishReason != FinishCancelled || res.rc.CompletionTokens != 6 {
			t.Fatalf("finish %q after %d tokens; want cancelled after 6", res.rc.FinishReason, res.rc.CompletionTokens)
		}
		want := wantCost(price, res.rc.PromptTokens, 6)
		if res.rc.PromptTokens == 0 || res.rc.Paid != want || ch.accepted(job.ID) != want {
			t.Fatalf("paid %d, payee %d, prompt %d; want %d for 6 tokens and the prompt", res.rc.Paid, ch.accepted(job.ID), res.rc.PromptTokens, want)
		}
		if int(res.rc.ReportedCompletion) < 6 {
			t.Fatalf("worker reported %d tokens after delivering 6", res.rc.ReportedCompletion)
		}
	})
}

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t testing.TB) (client, worker net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	worker = <-acc
	if worker == nil {
		t.Fatal("accept failed")
	}
	return client, worker
}

// The same job over a real (buffered) loopback TCP stream.
func TestJobOverTCP(t *testing.T) {
	price := Price{Prompt: 1_234_567, Completion: 7_654_321}
	b := &textBackend{model: "m", textLen: 300}
	ch := newMemChannel()
	w := &Worker{Backend: b, Payee: ch.payee(), Prices: map[string]Price{"m": price}, CreditTokens: 16}
	cc, wc := tcpPair(t)
	defer cc.Close()
	served := make(chan error, 1)
	go func() { served <- w.Serve(t.Context(), wc); wc.Close() }()
	job := testJob("m", 0)
	var text strings.Builder
	rc, err := Run(t.Context(), cc, job, ch.payer(), func(c Chunk) error { text.WriteString(c.Text); return nil }, RunOptions{})
	if err != nil {
		t.Fatalf("Run = %v", err)
	}
	if werr := <-served; werr != nil {
		t.Fatalf("Serve = %v", werr)
	}
	if text.String() != b.answer(job.Request, 0) {
		t.Fatal("text differs from the backend's")
	}
	want := wantCost(price, rc.PromptTokens, 300)
	if rc.Paid != want || ch.accepted(job.ID) != want {
		t.Fatalf("paid %d, payee %d; want %d", rc.Paid, ch.accepted(job.ID), want)
	}
}

// slowDurable holds back every job's durability until release is closed: a
// worker whose disk is slow to commit the last voucher.
type slowDurable struct {
	Payee
	release chan struct{}
}

func (p slowDurable) Open(ctx context.Context, job JobID, channel string) (Account, error) {
	a, err := p.Payee.Open(ctx, job, channel)
	if err != nil {
		return nil, err
	}
	return &slowAccount{Account: a, release: p.release}, nil
}

type slowAccount struct {
	Account
	release chan struct{}
}

func (a *slowAccount) Durable() (uint64, <-chan struct{}) {
	select {
	case <-a.release:
		return a.Account.Durable()
	default:
		return 0, a.release
	}
}

// A job that is only waiting for its last voucher to reach the worker's disk
// holds no slot: the client, whose answer did not wait for that, finds the
// worker free for its next job (before, a worker of one slot answered the
// next job BUSY).
func TestPaymentTailHoldsNoSlot(t *testing.T) {
	ch := newMemChannel()
	release := make(chan struct{})
	w := &Worker{Backend: &textBackend{model: "m", textLen: 5}, Payee: slowDurable{ch.payee(), release},
		Prices: map[string]Price{"m": {Prompt: 1_000, Completion: 2_000_000}}, MaxJobs: 1}
	serve := func(conn net.Conn, done chan<- error) {
		done <- w.Serve(t.Context(), conn)
		conn.Close()
	}
	var served [2]chan error
	for i := range served {
		served[i] = make(chan error, 1)
		cc, wc := net.Pipe()
		defer cc.Close()
		go serve(wc, served[i])
		rc, err := Run(t.Context(), cc, testJob("m", 0), ch.payer(), func(Chunk) error { return nil }, RunOptions{})
		if err != nil || rc.CompletionTokens == 0 {
			t.Fatalf("job %d: %v (receipt %+v); want it served while job 1 waits for its disk", i+1, err, rc)
		}
		select {
		case err := <-served[i]:
			t.Fatalf("job %d: the worker ended (%v) before its payment was durable", i+1, err)
		default:
		}
	}
	close(release)
	for i, s := range served {
		if err := <-s; err != nil {
			t.Fatalf("job %d: Serve = %v", i+1, err)
		}
	}
}
