package market

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/cocoon-network/cocoon/enclave/tee"
)

// failoverNet runs one Worker per candidate behind a Dial function.
type failoverNet struct {
	t       *testing.T
	workers map[peer.ID]*Worker
	chans   map[peer.ID]*memChannel
	conns   map[peer.ID]net.Conn // the worker end of the latest stream
	mu      sync.Mutex
	wg      sync.WaitGroup
	errs    map[peer.ID]error
}

func newFailoverNet(t *testing.T) *failoverNet {
	return &failoverNet{t: t, workers: map[peer.ID]*Worker{}, chans: map[peer.ID]*memChannel{}, conns: map[peer.ID]net.Conn{}, errs: map[peer.ID]error{}}
}

func (n *failoverNet) add(id peer.ID, b *textBackend, price Price, credit int) Candidate {
	ch := newMemChannel()
	n.chans[id] = ch
	n.workers[id] = &Worker{Backend: b, Payee: ch.payee(), Prices: map[string]Price{b.model: price}, CreditTokens: credit}
	return Candidate{Peer: id, Offer: ModelOffer{ID: b.model, Price: price}}
}

func (n *failoverNet) failover() *Failover {
	return &Failover{
		Dial: func(ctx context.Context, c Candidate) (io.ReadWriteCloser, error) {
			w, ok := n.workers[c.Peer]
			if !ok {
				return nil, errors.New("no route to peer")
			}
			cc, wc := net.Pipe()
			n.mu.Lock()
			n.conns[c.Peer] = wc
			n.mu.Unlock()
			n.wg.Go(func() {
				err := w.Serve(context.Background(), wc)
				wc.Close()
				n.mu.Lock()
				n.errs[c.Peer] = err
				n.mu.Unlock()
			})
			return cc, nil
		},
		Payer: func(c Candidate) (Payer, error) { return n.chans[c.Peer].payer(), nil },
	}
}

func (n *failoverNet) kill(id peer.ID) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.conns[id].Close()
}

// checkMoney asserts that each worker that finished holds exactly what the client
// says it paid it, one that failed holds no more (a voucher may have been on the
// wire when it died), and that no worker was paid beyond what it delivered.
func checkMoney(t *testing.T, n *failoverNet, attempts []Attempt) {
	t.Helper()
	for _, a := range attempts {
		ch := n.chans[a.Candidate.Peer]
		ch.checkMonotonic(t)
		if got := ch.accepted(a.Receipt.Job); got > a.Receipt.Paid || (a.Err == nil && got != a.Receipt.Paid) {
			t.Errorf("worker %s holds %d nanoTON for job %s; the client paid %d", a.Candidate.Peer, got, a.Receipt.Job, a.Receipt.Paid)
		}
		owed := wantCost(a.Receipt.Price, a.Receipt.PromptTokens, a.Receipt.CompletionTokens)
		if a.Receipt.Paid > owed {
			t.Errorf("worker %s paid %d for %d+%d tokens; at most %d", a.Candidate.Peer, a.Receipt.Paid, a.Receipt.PromptTokens, a.Receipt.CompletionTokens, owed)
		}
	}
}

func TestFailoverWorkerDies(t *testing.T) {
	const k = 5 // chunks worker 1 delivers before it dies
	job := testJob("m", 0)
	jobID := job.ID
	price1, price2 := Price{Prompt: 1_000, Completion: 3_333_333}, Price{Prompt: 2_000, Completion: 1_234_567}
	n := newFailoverNet(t)
	got := make(chan int, 100)
	b1 := &textBackend{model: "m", textLen: 40}
	b1.onDelta = func(i int) {
		if i == k+1 {
			for range k { // wait until the caller has the k chunks, then die
				<-got
			}
			// and until the worker has booked the voucher already on the wire, so
			// that the books are exact (an unbooked voucher would be the dead
			// worker's own loss).
			want := wantCost(Price{Completion: price1.Completion}, 0, 4)
			for start := time.Now(); n.chans["w1"].accepted(jobID) != want && time.Since(start) < 5*time.Second; {
				time.Sleep(time.Millisecond)
			}
			n.kill("w1")
		}
	}
	b2 := &textBackend{model: "m", textLen: 40}
	cands := []Candidate{n.add("w1", b1, price1, 4), n.add("w2", b2, price2, 4)}
	fo := n.failover()
	fo.Selector = &Selector{}
	// Each worker's tier travels with its own chunks and attempt.
	fo.Verify = func(_ context.Context, c Candidate) (string, error) { return "tier of " + string(c.Peer), nil }
	var text strings.Builder
	var chunks []Chunk
	var by []Attempt
	attempts, err := fo.Run(t.Context(), cands, job, func(a Attempt, c Chunk) error {
		chunks = append(chunks, c)
		by = append(by, a)
		text.WriteString(c.Text)
		if len(chunks) <= k {
			got <- len(chunks)
		}
		return nil
	})
	n.wg.Wait()
	if err != nil {
		t.Fatalf("Failover.Run = %v", err)
	}
	if want := b2.answer(job.Request, 0); text.String() != want {
		t.Fatalf("joined text = %q; want %q", text.String(), want)
	}
	for i, c := range chunks {
		if c.TokensSoFar != i+1 {
			t.Fatalf("chunk %d says %d tokens so far; the caller's stream must count on", i, c.TokensSoFar)
		}
		w := peer.ID("w1")
		if i >= k {
			w = "w2"
		}
		if by[i].Candidate.Peer != w || by[i].Tier != "tier of "+string(w) {
			t.Fatalf("chunk %d came with attempt (%s, %q); want (%s, %q)", i, by[i].Candidate.Peer, by[i].Tier, w, "tier of "+string(w))
		}
	}
	if len(attempts) != 2 || attempts[0].Err == nil || attempts[1].Err != nil {
		t.Fatalf("attempts %+v; want worker 1 failed, worker 2 finished", attempts)
	}
	if attempts[0].Tier != "tier of w1" || attempts[1].Tier != "tier of w2" {
		t.Fatalf("attempt tiers %q, %q; want each worker's own", attempts[0].Tier, attempts[1].Tier)
	}
	r1, r2 := attempts[0].Receipt, attempts[1].Receipt
	if r1.CompletionTokens != k || r2.CompletionTokens != 40-k {
		t.Fatalf("worker 1 delivered %d, worker 2 %d; want %d and %d", r1.CompletionTokens, r2.CompletionTokens, k, 40-k)
	}
	// Worker 1 is paid for the windows the client settled before it died: every
	// 2 tokens (half its credit of 4), so for 4 of its 5 tokens.
	if want := wantCost(Price{Completion: price1.Completion}, 0, 4); r1.Paid != want {
		t.Fatalf("worker 1 paid %d; want %d for 4 tokens", r1.Paid, want)
	}
	// Worker 2 is paid in full for its own part: the prompt plus the continuation
	// as its prompt, and only the tokens it added.
	if r2.PromptTokens != 5+k {
		t.Fatalf("worker 2 prompt tokens %d; want %d (prompt and continuation)", r2.PromptTokens, 5+k)
	}
	if want := wantCost(price2, r2.PromptTokens, 40-k); r2.Paid != want || r2.Cost != want {
		t.Fatalf("worker 2 paid %d cost %d; want %d", r2.Paid, r2.Cost, want)
	}
	checkMoney(t, n, attempts)
	if fo.Selector.Reputation("w1") >= fo.Selector.Reputation("w2") {
		t.Fatalf("reputation w1 %v, w2 %v; the failed worker must rank lower", fo.Selector.Reputation("w1"), fo.Selector.Reputation("w2"))
	}
}

func TestFailoverWorkerStalls(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		price := Price{Prompt: 1_000, Completion: 2_000_000}
		n := newFailoverNet(t)
		cands := []Candidate{
			n.add("gone", &textBackend{model: "m"}, price, 4),
			n.add("w1", &textBackend{model: "m", textLen: 30, stallAfter: 7}, price, 4),
			n.add("w2", &textBackend{model: "m", textLen: 30}, price, 4),
		}
		delete(n.workers, "gone") // dial fails
		fo := n.failover()
		job := testJob("m", 20)
		var text strings.Builder
		attempts, err := fo.Run(t.Context(), cands, job, func(_ Attempt, c Chunk) error {
			text.WriteString(c.Text)
			return nil
		})
		n.wg.Wait()
		if err != nil {
			t.Fatalf("Failover.Run = %v", err)
		}
		b := &textBackend{model: "m", textLen: 30}
		if want := b.answer(job.Request, 20); text.String() != want {
			t.Fatalf("joined text = %q; want %q", text.String(), want)
		}
		var te *TimeoutError
		if len(attempts) != 3 || attempts[0].Err == nil || !errors.As(attempts[1].Err, &te) || te.Phase != "next chunk" {
			t.Fatalf("attempts %+v; want dial failure, stall, success", attempts)
		}
		if r := attempts[2].Receipt; r.CompletionTokens != 13 || r.FinishReason != FinishLength {
			t.Fatalf("worker 2 delivered %d tokens, finish %q; want 13, length", r.CompletionTokens, r.FinishReason)
		}
		checkMoney(t, n, attempts[1:])
	})
}

func TestFailoverStopsOnCallerError(t *testing.T) {
	n := newFailoverNet(t)
	price := Price{Completion: 10}
	cands := []Candidate{n.add("w1", &textBackend{model: "m", textLen: 30}, price, 4), n.add("w2", &textBackend{model: "m", textLen: 30}, price, 4)}
	fo := n.failover()
	sinkErr := errors.New("caller hung up")
	calls := 0
	attempts, err := fo.Run(t.Context(), cands, testJob("m", 0), func(Attempt, Chunk) error {
		calls++
		return sinkErr
	})
	n.wg.Wait()
	if !errors.Is(err, sinkErr) || len(attempts) != 1 || calls != 1 {
		t.Fatalf("Run = %v after %d attempts, %d chunks; want the caller's error after 1 attempt", err, len(attempts), calls)
	}
}

// TestFailoverMarksUnreachable: a worker whose dial fails is marked down in
// the selector (the next job skips it), and the job goes on with the next.
func TestFailoverMarksUnreachable(t *testing.T) {
	n := newFailoverNet(t)
	price := Price{Completion: 10}
	cands := []Candidate{n.add("gone", &textBackend{model: "m"}, price, 4), n.add("w1", &textBackend{model: "m", textLen: 5}, price, 4)}
	delete(n.workers, "gone")
	fo := n.failover()
	fo.Selector = &Selector{}
	attempts, err := fo.Run(t.Context(), cands, testJob("m", 0), func(Attempt, Chunk) error { return nil })
	n.wg.Wait()
	if err != nil || len(attempts) != 2 || !errors.Is(attempts[0].Err, ErrUnreachable) {
		t.Fatalf("Run = %v, attempts %+v; want the dial failure as ErrUnreachable, then success", err, attempts)
	}
	if !fo.Selector.Down("gone") || fo.Selector.Down("w1") {
		t.Fatalf("Down(gone) %v, Down(w1) %v; want true, false", fo.Selector.Down("gone"), fo.Selector.Down("w1"))
	}
	// The caller's own cancel is no mark against a worker.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	fo.Selector = &Selector{}
	fo.Run(ctx, cands[1:], testJob("m", 0), func(Attempt, Chunk) error { return nil })
	n.wg.Wait()
	if fo.Selector.Down("w1") {
		t.Fatal("a worker marked down after the caller cancelled")
	}
}

// TestNoWorkerStatus: the HTTP status a gateway answers when no worker
// finished, by what the attempts met.
func TestNoWorkerStatus(t *testing.T) {
	busy := &RejectError{Code: RejectBusy}
	unreachable := fmt.Errorf("dial: %w: connection refused", ErrUnreachable)
	timeout := fmt.Errorf("wait for accept: %w", &TimeoutError{Phase: "accept"})
	broke := fmt.Errorf("read frame: %w", ErrStreamEnded)
	for _, tc := range []struct {
		name string
		errs []error
		want int
		code string
	}{
		{"none tried", nil, 503, "no_worker_available"},
		{"all busy", []error{busy, busy}, 503, "no_worker_available"},
		{"busy and unreachable", []error{unreachable, busy}, 503, "no_worker_available"},
		{"all timed out", []error{timeout, timeout}, 504, "timeout"},
		{"one broke", []error{timeout, broke}, 502, "no_worker_finished"},
		{"rejected for price", []error{&RejectError{Code: RejectPrice}}, 502, "no_worker_finished"},
	} {
		e := &NoWorkerError{Errs: tc.errs}
		if e.HTTPStatus() != tc.want || e.ErrorCode() != tc.code || !errors.Is(e, ErrNoWorker) {
			t.Errorf("%s: %d %q (Is ErrNoWorker %v); want %d %q", tc.name, e.HTTPStatus(), e.ErrorCode(), errors.Is(e, ErrNoWorker), tc.want, tc.code)
		}
	}
	if e := (&NoWorkerError{Errs: []error{timeout}}); !errors.Is(e, ErrTimeout) || !strings.Contains(e.Error(), "accept deadline") {
		t.Errorf("NoWorkerError hides its attempts: %v", e)
	}
}

// TestFailoverSybils: a book in which three peers undercut the only honest
// worker (price 0): one cannot be dialled, one fails its attestation, one
// rejects every job, and a fourth takes the stream and never answers. Each
// request is answered by the honest worker within MaxAttempts 3 (the quick
// failures do not use them up), the liars are marked down and stay down
// although they keep publishing, and once the honest worker has served,
// Select tries it first.
func TestFailoverSybils(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		book := NewBook(func() time.Time { return t0 })
		offer := func(n byte, seq uint64, price Price) peer.ID {
			a := testAd(t, n, seq)
			a.Models = a.Models[:1]
			a.Models[0].Price = price
			b, err := a.Encode()
			if err != nil {
				t.Fatal(err)
			}
			if _, r := book.Offer(a.Peer, b); r != Kept {
				t.Fatalf("offer ad %d seq %d: %v", n, seq, r)
			}
			return a.Peer
		}
		price := Price{Prompt: 1_000, Completion: 3_000}
		honest := offer(1, 1, price)
		gone, liar, rejects, mute := offer(2, 1, Price{}), offer(3, 1, Price{}), offer(4, 1, Price{}), offer(5, 1, Price{})
		n := newFailoverNet(t)
		n.add(honest, &textBackend{model: "stories260K", textLen: 5}, price, 4)
		n.add(liar, &textBackend{model: "stories260K", textLen: 5}, Price{}, 4)
		n.add(rejects, &textBackend{model: "another"}, Price{}, 4)
		n.add(mute, &textBackend{model: "stories260K"}, Price{}, 4)
		sel := &Selector{Book: book, Explore: -1}
		fo := n.failover()
		dial := fo.Dial
		var hung []net.Conn
		fo.Dial = func(ctx context.Context, c Candidate) (io.ReadWriteCloser, error) {
			if c.Peer == mute { // reads the Open, answers nothing
				cc, wc := net.Pipe()
				hung = append(hung, wc)
				go io.Copy(io.Discard, wc)
				return cc, nil
			}
			return dial(ctx, c)
		}
		fo.Verify = func(_ context.Context, c Candidate) (string, error) {
			if c.Peer == liar {
				return "", errors.New("evidence does not bind the peer")
			}
			return "sim", nil
		}
		fo.Selector, fo.MaxAttempts = sel, 3
		fo.Options.Timeouts.Accept = 2 * time.Second
		pol := Policy{Model: "stories260K", TEE: []tee.Kind{tee.TDX}}
		ask := func() []Attempt {
			t.Helper()
			cands := sel.Select(pol)
			start := time.Now()
			attempts, err := fo.Run(t.Context(), cands, testJob("stories260K", 0), func(Attempt, Chunk) error { return nil })
			n.wg.Wait()
			if err != nil || attempts[len(attempts)-1].Candidate.Peer != honest {
				t.Fatalf("Run over %v = %+v, %v; want the honest worker %s to answer", peers(cands), attempts, err, honest)
			}
			if d := time.Since(start); d > 2*fo.Options.Timeouts.Accept {
				t.Fatalf("answered after %v: more than one peer's accept deadline", d)
			}
			return attempts
		}
		// A cold selector: price puts the four liars first.
		if got := peers(sel.Select(pol)); got[len(got)-1] != honest {
			t.Fatalf("cold Select = %v; want the honest, dearest worker last", got)
		}
		if a := ask(); len(a) != 5 {
			t.Fatalf("first request: %d attempts; want the 4 liars then the honest worker", len(a))
		}
		for _, p := range []peer.ID{gone, liar, rejects, mute} {
			if !sel.Down(p) {
				t.Errorf("%s not marked down", p)
			}
		}
		// Their next ads (one a second) do not bring them back: they never served.
		for seq := uint64(2); seq < 5; seq++ {
			for _, p := range []byte{2, 3, 4, 5} {
				offer(p, seq, Price{})
			}
			time.Sleep(time.Second)
		}
		for i := range 5 {
			if a := ask(); len(a) != 1 {
				t.Fatalf("request %d: %d attempts; want the honest worker alone", i, len(a))
			}
		}
		// DownFor later they are back, behind the proven worker.
		time.Sleep(DefaultDownFor)
		got := peers(sel.Select(pol))
		if len(got) != 5 || got[0] != honest {
			t.Fatalf("Select after DownFor = %v; want the proven worker first, then the four", got)
		}
		if a := ask(); len(a) != 1 {
			t.Fatalf("after DownFor: %d attempts; want the proven worker first", len(a))
		}
		for _, c := range hung {
			c.Close()
		}
	})
}

func peers(cs []Candidate) []peer.ID {
	out := make([]peer.ID, len(cs))
	for i, c := range cs {
		out[i] = c.Peer
	}
	return out
}

// TestFailoverAllTokensThenDeath: a worker that delivers every token asked for
// and dies before its Done leaves a whole answer, cut at max_tokens: it ends
// with finish reason length (not ""), no other worker is asked for more, and
// the worker is paid for the windows settled before it died (a dead worker
// loses at most its last credit window).
func TestFailoverAllTokensThenDeath(t *testing.T) {
	const k = 5
	job := testJob("m", k)
	price := Price{Prompt: 1_000, Completion: 3_333_333}
	n := newFailoverNet(t)
	b1 := &textBackend{model: "m", textLen: 40, stallAfter: k} // all k tokens, then no Done
	b2 := &textBackend{model: "m", textLen: 40}
	cands := []Candidate{n.add("w1", b1, price, 4), n.add("w2", b2, price, 4)}
	fo := n.failover()
	attempts, err := fo.Run(t.Context(), cands, job, func(a Attempt, c Chunk) error {
		if c.TokensSoFar == k {
			go n.kill("w1") // the caller has every token: the worker dies before Done
		}
		return nil
	})
	n.wg.Wait()
	if err != nil {
		t.Fatalf("Failover.Run = %v; want the whole answer", err)
	}
	if len(attempts) != 1 || attempts[0].Candidate.Peer != "w1" {
		t.Fatalf("attempts %+v; want worker 1 alone", attempts)
	}
	r := attempts[0].Receipt
	if r.FinishReason != FinishLength {
		t.Errorf("finish reason %q; want %q", r.FinishReason, FinishLength)
	}
	if want := wantCost(Price{Completion: price.Completion}, 0, 4); r.Paid != want {
		t.Errorf("worker 1 paid %d; want %d for the 4 tokens of its settled windows", r.Paid, want)
	}
}
