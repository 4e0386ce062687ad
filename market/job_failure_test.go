package market

import (
	"context"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/multiformats/go-varint"

	"github.com/cocoon-network/cocoon/market/pb"
	"github.com/cocoon-network/cocoon/runtime"
)

func TestRejectCodes(t *testing.T) {
	price := Price{Prompt: 100, Completion: 200}
	newWorker := func(admit RejectCode) *Worker {
		return &Worker{
			Backend: &textBackend{model: "m", textLen: 5},
			Payee:   newMemChannel().payee(),
			Prices:  map[string]Price{"m": price, "priced-but-not-served": price},
			Admit: func(context.Context, OpenRequest) RejectCode {
				return admit
			},
		}
	}
	cases := []struct {
		name  string
		w     *Worker
		model string
		max   Price
		want  RejectCode
	}{
		{"unknown model", newWorker(0), "nope", Price{}, RejectUnknownModel},
		{"priced but not served", newWorker(0), "priced-but-not-served", Price{}, RejectUnknownModel},
		{"price", newWorker(0), "m", Price{Completion: 199}, RejectPrice},
		{"no channel", newWorker(RejectNoChannel), "m", Price{}, RejectNoChannel},
		{"policy", newWorker(RejectPolicy), "m", Price{}, RejectPolicy},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			job := testJob(tc.model, 0)
			job.MaxPrice = tc.max
			res := runPipe(t.Context(), tc.w, job, newMemChannel().payer(), RunOptions{}, nil)
			var re *RejectError
			if !errors.As(res.err, &re) || re.Code != tc.want || !errors.Is(res.err, ErrRejected) {
				t.Fatalf("Run = %v; want reject %v", res.err, tc.want)
			}
			if !errors.Is(res.workerErr, ErrRejected) {
				t.Fatalf("Serve = %v; want ErrRejected", res.workerErr)
			}
		})
	}
	// A format the model does not offer, or a schema the worker's Check
	// refuses: the caller's fault, before Accept (the client never selects
	// such a worker; this is the worker's own guard).
	for name, f := range map[string]*runtime.ResponseFormat{
		"format not offered": {Type: runtime.FormatJSONObject},
		"schema refused":     {Type: runtime.FormatJSONSchema, Name: "n", Schema: []byte(`{"type":"string","pattern":"a"}`)},
	} {
		t.Run(name, func(t *testing.T) {
			job := testJob("m", 0)
			job.Request.Format = f
			res := runPipe(t.Context(), newWorker(0), job, newMemChannel().payer(), RunOptions{}, nil)
			var re *RejectError
			if !errors.As(res.err, &re) || re.Code != RejectBadRequest || !errors.Is(res.err, runtime.ErrInvalidRequest) {
				t.Fatalf("Run = %v; want reject bad request", res.err)
			}
		})
	}
	t.Run("busy", func(t *testing.T) {
		w := newWorker(0)
		w.MaxJobs = 1
		cc, wc := net.Pipe()
		served := make(chan error, 1)
		go func() { served <- w.Serve(t.Context(), wc); wc.Close() }()
		p := newRawPeer(t, cc)
		p.mustSend(openFrame(testJob("m", 0)))
		p.mustRecv() // Accept: the one slot is taken, the worker waits for the prompt
		res := runPipe(t.Context(), w, testJob("m", 0), newMemChannel().payer(), RunOptions{}, nil)
		var re *RejectError
		if !errors.As(res.err, &re) || re.Code != RejectBusy {
			t.Fatalf("Run = %v; want reject busy", res.err)
		}
		cc.Close()
		<-served
		// The slot is free again.
		if res := runPipe(t.Context(), w, testJob("m", 0), newMemChannel().payer(), RunOptions{}, nil); res.err != nil {
			t.Fatalf("Run after the slot freed = %v", res.err)
		}
	})
	t.Run("bad request", func(t *testing.T) {
		w := newWorker(0)
		cc, wc := net.Pipe()
		defer cc.Close()
		served := make(chan error, 1)
		go func() { served <- w.Serve(t.Context(), wc); wc.Close() }()
		p := newRawPeer(t, cc)
		p.mustSend(&pb.Frame{Msg: &pb.Frame_Open{Open: &pb.Open{JobId: []byte{1, 2, 3}, Model: "m"}}})
		f := p.mustRecv()
		if r, ok := f.Msg.(*pb.Frame_Reject); !ok || r.Reject.Code != pb.RejectCode_REJECT_BAD_REQUEST {
			t.Fatalf("got %v; want Reject BAD_REQUEST", f)
		}
		if err := <-served; !errors.Is(err, ErrRejected) {
			t.Fatalf("Serve = %v; want ErrRejected", err)
		}
	})
	t.Run("client refuses a price above its maximum", func(t *testing.T) {
		var after *pb.Frame
		cc, done := scriptedWorkerRaw(t, func(p *rawPeer) {
			p.recv()
			p.send(acceptFrame(Price{Completion: 500}, 10))
			after, _ = p.recv()
		})
		job := testJob("m", 0)
		job.MaxPrice = Price{Completion: 499}
		_, err := Run(t.Context(), cc, job, newMemChannel().payer(), func(Chunk) error { return nil }, RunOptions{})
		cc.Close()
		<-done
		if !errors.Is(err, ErrPrice) {
			t.Fatalf("Run = %v; want ErrPrice", err)
		}
		if c, ok := after.GetMsg().(*pb.Frame_Cancel); !ok || c.Cancel.Code != pb.CancelCode_CANCEL_PRICE {
			t.Fatalf("worker got %v after Accept; want Cancel PRICE and no prompt", after)
		}
	})
}

func scriptedWorkerRaw(t *testing.T, script func(p *rawPeer)) (net.Conn, chan struct{}) {
	cc, wc := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer wc.Close()
		script(newRawPeer(t, wc))
	}()
	return cc, done
}

// A worker whose attestation fails gets nothing of the job: no stream is
// opened to it (so it holds no slot while the client attests), the next
// candidate serves, and the failed attempt says ErrAttestation.
func TestAttestationBeforeTheJob(t *testing.T) {
	n := newFailoverNet(t)
	bad := &textBackend{model: "m", textLen: 10}
	good := &textBackend{model: "m", textLen: 10}
	cBad := n.add("bad", bad, Price{Completion: 1_000_000}, 64)
	cGood := n.add("good", good, Price{Completion: 1_000_000}, 64)
	fo := n.failover()
	dial := fo.Dial
	var dialled []peer.ID
	fo.Dial = func(ctx context.Context, c Candidate) (io.ReadWriteCloser, error) {
		dialled = append(dialled, c.Peer)
		return dial(ctx, c)
	}
	verifyErr := errors.New("measurement not in policy")
	fo.Verify = func(_ context.Context, c Candidate) (string, error) {
		if c.Peer == "bad" {
			return "", verifyErr
		}
		return "sim (not confidential)", nil
	}
	attempts, err := fo.Run(t.Context(), []Candidate{cBad, cGood}, testJob("m", 0), func(Attempt, Chunk) error { return nil })
	if err != nil {
		t.Fatalf("Run = %v", err)
	}
	if len(attempts) != 2 || !errors.Is(attempts[0].Err, ErrAttestation) || !errors.Is(attempts[0].Err, verifyErr) ||
		attempts[1].Err != nil || attempts[1].Tier != "sim (not confidential)" {
		t.Fatalf("attempts %+v; want the bad worker's ErrAttestation, then the good one's answer with its tier", attempts)
	}
	if !slices.Equal(dialled, []peer.ID{"good"}) || bad.generated != 0 || attempts[0].Receipt.Paid != 0 {
		t.Fatalf("dialled %v, the bad worker generated %d deltas and was paid %d; want only the good worker dialled", dialled, bad.generated, attempts[0].Receipt.Paid)
	}
}

func TestDeadlines(t *testing.T) {
	price := Price{Prompt: 10, Completion: 1_000_000}
	t.Run("client: accept", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			cc, done := scriptedWorkerRaw(t, func(p *rawPeer) {
				p.recv()
				p.recv() // blocks until the client gives up and closes
			})
			start := time.Now()
			_, err := Run(t.Context(), cc, testJob("m", 0), newMemChannel().payer(), func(Chunk) error { return nil },
				RunOptions{Timeouts: Timeouts{Accept: 3 * time.Second}})
			cc.Close()
			<-done
			var te *TimeoutError
			if !errors.As(err, &te) || te.Phase != "accept" || time.Since(start) != 3*time.Second {
				t.Fatalf("Run = %v after %v; want accept timeout after 3s", err, time.Since(start))
			}
		})
	})
	clientCase := func(name string, b *textBackend, phase string, after time.Duration) {
		t.Run("client: "+name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ch := newMemChannel()
				w := &Worker{Backend: b, Payee: ch.payee(), Prices: map[string]Price{"m": price}}
				var last time.Time
				res := runPipe(t.Context(), w, testJob("m", 0), ch.payer(), RunOptions{}, func(Chunk) error {
					last = time.Now()
					return nil
				})
				var te *TimeoutError
				if !errors.As(res.err, &te) || te.Phase != phase {
					t.Fatalf("Run = %v; want %s timeout", res.err, phase)
				}
				if last.IsZero() {
					last = time.Unix(946684800, 0) // the bubble's epoch: no chunk came
				}
				if d := time.Since(last); d != after {
					t.Fatalf("gave up %v after the last event; want %v", d, after)
				}
			})
		})
	}
	clientCase("first chunk", &textBackend{model: "m", textLen: 10, tokenWait: 2 * time.Minute}, "first chunk", 60*time.Second)
	clientCase("stall between chunks", &textBackend{model: "m", textLen: 10, stallAfter: 3}, "next chunk", 20*time.Second)

	workerCase := func(name string, script func(p *rawPeer), phase string, wantErr error, wantCancel pb.CancelCode) {
		t.Run("worker: "+name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ch := newMemChannel()
				w := &Worker{Backend: &textBackend{model: "m", textLen: 10}, Payee: ch.payee(), Prices: map[string]Price{"m": price}, CreditTokens: 100}
				cc, wc := net.Pipe()
				served := make(chan error, 1)
				go func() { served <- w.Serve(t.Context(), wc); wc.Close() }()
				p := newRawPeer(t, cc)
				var gotCancel pb.CancelCode
				var wg sync.WaitGroup
				wg.Go(func() {
					script(p)
					for {
						f, err := p.recv()
						if err != nil {
							return
						}
						if c, ok := f.Msg.(*pb.Frame_Cancel); ok {
							gotCancel = c.Cancel.Code
						}
					}
				})
				err := <-served
				cc.Close()
				wg.Wait()
				var te *TimeoutError
				if phase != "" && (!errors.As(err, &te) || te.Phase != phase) {
					t.Fatalf("Serve = %v; want %s timeout", err, phase)
				}
				if wantErr != nil && !errors.Is(err, wantErr) {
					t.Fatalf("Serve = %v; want %v", err, wantErr)
				}
				if gotCancel != wantCancel {
					t.Fatalf("client got cancel %v; want %v", gotCancel, wantCancel)
				}
			})
		})
	}
	job := testJob("m", 0)
	workerCase("open", func(p *rawPeer) {}, "open", nil, 0)
	workerCase("prompt", func(p *rawPeer) {
		p.mustSend(openFrame(job))
	}, "prompt", nil, pb.CancelCode_CANCEL_TIMEOUT)
	workerCase("final voucher", func(p *rawPeer) {
		p.mustSend(openFrame(job))
		p.mustSend(promptFrame("hi"))
	}, "final voucher", ErrUnderpaid, 0)
}

func TestOversizedFrameRefused(t *testing.T) {
	t.Run("to worker", func(t *testing.T) {
		w := &Worker{Backend: &textBackend{model: "m", textLen: 10}, Payee: newMemChannel().payee(), Prices: map[string]Price{"m": {}}}
		cc, wc := net.Pipe()
		defer cc.Close()
		served := make(chan error, 1)
		go func() { served <- w.Serve(t.Context(), wc); wc.Close() }()
		// A length prefix of 1 TiB and no body: refused from the prefix alone,
		// with no buffer allocated.
		if _, err := cc.Write(varint.ToUvarint(1 << 40)); err != nil {
			t.Fatal(err)
		}
		p := newRawPeer(t, cc)
		if f := p.mustRecv(); f.GetReject().GetCode() != pb.RejectCode_REJECT_BAD_REQUEST {
			t.Fatalf("got %v; want Reject BAD_REQUEST", f)
		}
		if err := <-served; !errors.Is(err, ErrRejected) {
			t.Fatalf("Serve = %v; want ErrRejected", err)
		}
	})
	t.Run("prompt over the worker's cap", func(t *testing.T) {
		w := &Worker{Backend: &textBackend{model: "m", textLen: 10}, Payee: newMemChannel().payee(), Prices: map[string]Price{"m": {}}, MaxPromptBytes: 1024}
		cc, wc := net.Pipe()
		defer cc.Close()
		served := make(chan error, 1)
		go func() { served <- w.Serve(t.Context(), wc); wc.Close() }()
		p := newRawPeer(t, cc)
		p.mustSend(openFrame(testJob("m", 0)))
		p.mustRecv()
		go p.send(promptFrame(strings.Repeat("a", 2000))) // blocks: the worker never reads the body
		if f := p.mustRecv(); f.GetCancel().GetCode() != pb.CancelCode_CANCEL_PROTOCOL {
			t.Fatalf("got %v; want Cancel PROTOCOL", f)
		}
		if err := <-served; !errors.Is(err, ErrProtocol) {
			t.Fatalf("Serve = %v; want ErrProtocol", err)
		}
	})
	t.Run("to client", func(t *testing.T) {
		cc, done := scriptedWorkerRaw(t, func(p *rawPeer) {
			p.recv()
			p.c.Write(varint.ToUvarint(MaxWorkerFrame + 1))
			io.Copy(io.Discard, p.c)
		})
		rc, err := Run(t.Context(), cc, testJob("m", 0), newMemChannel().payer(), func(Chunk) error { return nil }, RunOptions{})
		cc.Close()
		<-done
		if !errors.Is(err, ErrProtocol) || rc.Violation != ViolationProtocol {
			t.Fatalf("Run = %v, violation %v; want ErrProtocol", err, rc.Violation)
		}
	})
}

// A worker whose backend fails mid-stream cancels; the client pays exactly for
// the tokens it received, and the worker books that voucher.
func TestWorkerCancelsOnBackendFailure(t *testing.T) {
	price := Price{Prompt: 1_000, Completion: 3_333_333}
	ch := newMemChannel()
	w := &Worker{Backend: &textBackend{model: "m", textLen: 40, failAfter: 9}, Payee: ch.payee(), Prices: map[string]Price{"m": price}, CreditTokens: 4}
	job := testJob("m", 0)
	res := runPipe(t.Context(), w, job, ch.payer(), RunOptions{}, nil)
	var ce *CancelError
	if !errors.As(res.err, &ce) || ce.Code != CancelInternal {
		t.Fatalf("Run = %v; want the worker's CANCEL_INTERNAL", res.err)
	}
	if res.workerErr == nil || errors.Is(res.workerErr, ErrUnderpaid) {
		t.Fatalf("Serve = %v; want the backend failure, paid in full", res.workerErr)
	}
	want := wantCost(Price{Completion: price.Completion}, 0, 9)
	if res.rc.CompletionTokens != 9 || res.rc.Paid != want || ch.accepted(job.ID) != want {
		t.Fatalf("delivered %d, paid %d, payee %d; want 9 tokens paid %d", res.rc.CompletionTokens, res.rc.Paid, ch.accepted(job.ID), want)
	}
	if res.rc.Violation != ViolationNone {
		t.Fatalf("violation %v for an honest failure", res.rc.Violation)
	}
}

func TestWorkerRefusesBadVouchers(t *testing.T) {
	price := Price{Completion: 2_000_000}
	cases := []struct {
		name    string
		voucher func(ch *memChannel, job JobID) *pb.Voucher
		code    pb.CancelCode
	}{
		{"forged", func(ch *memChannel, job JobID) *pb.Voucher {
			return &pb.Voucher{Voucher: make([]byte, 48), Cumulative: 4, JobId: job[:]}
		}, pb.CancelCode_CANCEL_BAD_VOUCHER},
		{"claims more than it pays", func(ch *memChannel, job JobID) *pb.Voucher {
			v, _ := ch.payer().Pay(context.Background(), job, 2)
			return &pb.Voucher{Voucher: v, Cumulative: 4, JobId: job[:]}
		}, pb.CancelCode_CANCEL_BAD_VOUCHER},
		{"pays more than was delivered", func(ch *memChannel, job JobID) *pb.Voucher {
			v, _ := ch.payer().Pay(context.Background(), job, 1_000)
			return &pb.Voucher{Voucher: v, Cumulative: 1_000, JobId: job[:]}
		}, pb.CancelCode_CANCEL_BAD_VOUCHER},
		{"names another job", func(ch *memChannel, job JobID) *pb.Voucher {
			other := NewJobID()
			v, _ := ch.payer().Pay(context.Background(), other, 4)
			return &pb.Voucher{Voucher: v, Cumulative: 4, JobId: other[:]}
		}, pb.CancelCode_CANCEL_PROTOCOL},
		{"names no job", func(ch *memChannel, job JobID) *pb.Voucher {
			v, _ := ch.payer().Pay(context.Background(), job, 4)
			return &pb.Voucher{Voucher: v, Cumulative: 4}
		}, pb.CancelCode_CANCEL_PROTOCOL},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ch := newMemChannel()
			w := &Worker{Backend: &textBackend{model: "m", textLen: 40}, Payee: ch.payee(), Prices: map[string]Price{"m": price}, CreditTokens: 2}
			cc, wc := net.Pipe()
			defer cc.Close()
			served := make(chan error, 1)
			go func() { served <- w.Serve(t.Context(), wc); wc.Close() }()
			p := newRawPeer(t, cc)
			job := testJob("m", 0)
			p.mustSend(openFrame(job))
			p.mustRecv()
			p.mustSend(promptFrame("hi"))
			p.mustRecv()
			p.mustSend(&pb.Frame{Msg: &pb.Frame_Voucher{Voucher: tc.voucher(ch, job.ID)}})
			for {
				f := p.mustRecv()
				if _, ok := f.Msg.(*pb.Frame_Chunk); ok {
					continue
				}
				if f.GetCancel().GetCode() != tc.code {
					t.Fatalf("got %v; want Cancel %v", f, tc.code)
				}
				break
			}
			if err := <-served; err == nil {
				t.Fatal("Serve = nil after a bad voucher")
			}
			if got := ch.accepted(job.ID); got > 2 {
				t.Fatalf("payee booked %d", got)
			}
		})
	}
}
