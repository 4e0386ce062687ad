package market

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

const benchTokens = 256

// BenchmarkJobOverhead runs the same generation twice per iteration: straight
// from the backend, and as a whole job over net.Pipe or loopback TCP (Open, Accept, Prompt,
// chunks, vouchers every half credit window, Done, final voucher). The
// difference per token is what the protocol adds on top of the backend. The
// backend is the deterministic text fake, whose own cost is a string format and
// a hash per token, so the overhead dominates.
func BenchmarkJobOverhead(b *testing.B) {
	b.Run("pipe", func(b *testing.B) { benchJobOverhead(b, func() (net.Conn, net.Conn) { return net.Pipe() }) })
	b.Run("tcp", func(b *testing.B) { benchJobOverhead(b, func() (net.Conn, net.Conn) { return tcpPair(b) }) })
}

func benchJobOverhead(b *testing.B, conns func() (net.Conn, net.Conn)) {
	backend := &textBackend{model: "m", textLen: benchTokens}
	price := Price{Prompt: 1_000, Completion: 2_000_000}
	var direct, piped time.Duration
	var vouchers int
	b.ReportAllocs()
	for b.Loop() {
		job := testJob("m", 0)
		start := time.Now()
		st, err := backend.Generate(context.Background(), job.Request)
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		for {
			d, err := st.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			n += d.Tokens
		}
		st.Close()
		direct += time.Since(start)

		ch := newMemChannel()
		w := &Worker{Backend: backend, Payee: ch.payee(), Prices: map[string]Price{"m": price}, CreditTokens: 64}
		start = time.Now()
		cc, wc := conns()
		res := runConns(context.Background(), cc, wc, w, job, ch.payer(), RunOptions{}, nil)
		piped += time.Since(start)
		if res.err != nil || res.workerErr != nil || res.rc.CompletionTokens != benchTokens || n != benchTokens {
			b.Fatalf("job: %v, %v, %d tokens", res.err, res.workerErr, res.rc.CompletionTokens)
		}
		vouchers += len(ch.acceptLog)
	}
	tokens := float64(b.N * benchTokens)
	b.ReportMetric(float64(direct.Nanoseconds())/tokens, "direct-ns/token")
	b.ReportMetric(float64(piped.Nanoseconds())/tokens, "stream-ns/token")
	b.ReportMetric(float64((piped-direct).Nanoseconds())/tokens, "overhead-ns/token")
	b.ReportMetric(float64(vouchers)/float64(b.N), "vouchers/job")
}

// BenchmarkJobSetup is a one-token job over net.Pipe: the fixed cost of a job
// (all the messages but the stream).
func BenchmarkJobSetup(b *testing.B) {
	backend := &textBackend{model: "m", textLen: 1}
	b.ReportAllocs()
	for b.Loop() {
		ch := newMemChannel()
		w := &Worker{Backend: backend, Payee: ch.payee(), Prices: map[string]Price{"m": {Completion: 2_000_000}}}
		if res := runPipe(context.Background(), w, testJob("m", 0), ch.payer(), RunOptions{}, nil); res.err != nil {
			b.Fatal(res.err)
		}
	}
}

func BenchmarkAdEncode(b *testing.B) {
	a := testAd(b, 1, 1)
	b.ReportAllocs()
	var size int
	for b.Loop() {
		enc, err := a.Encode()
		if err != nil {
			b.Fatal(err)
		}
		size = len(enc)
	}
	b.ReportMetric(float64(size), "bytes/ad")
}

// BenchmarkAdValidate is the gossipsub validator's cost per ad: decode, schema,
// sender, time and seq checks, and the book insert.
func BenchmarkAdValidate(b *testing.B) {
	const n = 1024
	ads := make([][]byte, n)
	for i := range ads {
		a := testAd(b, 1, uint64(i+1))
		enc, err := a.Encode()
		if err != nil {
			b.Fatal(err)
		}
		ads[i] = enc
	}
	from := testPeer(b, 1)
	book := NewBook(func() time.Time { return t0 })
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		if i == n {
			b.StopTimer()
			book, i = NewBook(func() time.Time { return t0 }), 0
			b.StartTimer()
		}
		if _, r := book.Offer(from, ads[i]); r != Kept {
			b.Fatalf("dropped: %v", r)
		}
		i++
	}
}

func BenchmarkSelect(b *testing.B) {
	book := NewBook(func() time.Time { return t0 })
	for i := range 100 {
		a := testAd(b, byte(i), 1)
		a.Models[0].Price.Completion = uint64(1000 + i*10)
		enc, _ := a.Encode()
		book.Offer(a.Peer, enc)
	}
	sel := &Selector{Book: book}
	b.ReportAllocs()
	for b.Loop() {
		if len(sel.Select(Policy{Model: "stories260K"})) != 100 {
			b.Fatal("candidates missing")
		}
	}
}
