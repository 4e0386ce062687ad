package enclave

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/enclave/tee"
)

// replayAttester answers every request with the same captured evidence.
type replayAttester struct{ ev Evidence }

func (r replayAttester) Kind() tee.Kind { return r.ev.Kind }
func (r replayAttester) Attest(context.Context, [ReportDataSize]byte) (Evidence, error) {
	return r.ev, nil
}

// exchange runs the prover on one end of a pipe and the client on the other.
func exchange(t *testing.T, proverID []byte, a Attester, clientSeesID []byte, v *Verifier) (Verdict, error) {
	t.Helper()
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- ServeAttest(ctx, s, proverID, a) }()
	vd, err := AttestPeer(ctx, c, clientSeesID, v)
	if serr := <-done; serr != nil && err == nil {
		t.Fatalf("ServeAttest = %v", serr)
	}
	return vd, err
}

func TestProtocolSim(t *testing.T) {
	v := &Verifier{Policy: simPolicy}
	a := NewSimAttester(nil, [MeasurementSize]byte{}, nil)
	vd, err := exchange(t, []byte("prover"), a, []byte("prover"), v)
	if err != nil || vd.Tier != "sim (not confidential)" {
		t.Fatalf("exchange = %+v, %v", vd, err)
	}
	// The client authenticated a different peer than the one whose ID is in the
	// evidence: refused.
	if _, err := exchange(t, []byte("prover"), a, []byte("someone else"), v); !errors.Is(err, ErrReportDataMismatch) {
		t.Fatalf("exchange with another peer ID = %v; want ErrReportDataMismatch", err)
	}
	// No allow_sim: refused.
	if _, err := exchange(t, []byte("prover"), a, []byte("prover"), &Verifier{}); !errors.Is(err, ErrSimNotAllowed) {
		t.Fatalf("exchange without allow_sim = %v; want ErrSimNotAllowed", err)
	}
}

func TestProtocolStaleNonceRefused(t *testing.T) {
	a := NewSimAttester(nil, [MeasurementSize]byte{}, nil)
	old, _ := a.Attest(context.Background(), ReportData([]byte("prover"), [NonceSize]byte{1}))
	v := &Verifier{Policy: simPolicy}
	if _, err := exchange(t, []byte("prover"), replayAttester{old}, []byte("prover"), v); !errors.Is(err, ErrReportDataMismatch) {
		t.Fatalf("replayed evidence for an old nonce = %v; want ErrReportDataMismatch", err)
	}
}

func TestProtocolRefusalsAndDeadline(t *testing.T) {
	// Prover says it is rate limited.
	c, s := net.Pipe()
	go func() {
		_, _ = ReadFrame(s, maxRequestSize)
		_ = WriteRefusal(s, StatusRateLimited)
		s.Close()
	}()
	var refused *RefusedError
	if _, err := AttestPeer(context.Background(), c, []byte("p"), &Verifier{Policy: simPolicy}); !errors.As(err, &refused) || refused.Status != StatusRateLimited {
		t.Fatalf("AttestPeer against a rate-limited prover = %v; want RefusedError(rate limited)", err)
	}
	c.Close()

	// Prover never answers: the client's deadline ends the exchange.
	c2, s2 := net.Pipe()
	defer s2.Close()
	go func() { _, _ = ReadFrame(s2, maxRequestSize) }() // read the request, then stay silent
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := AttestPeer(ctx, c2, []byte("p"), &Verifier{Policy: simPolicy}); err == nil {
		t.Fatal("AttestPeer against a silent prover returned no error")
	}
	c2.Close()

	// Client sends garbage: the prover answers bad request and reports the error.
	c3, s3 := net.Pipe()
	defer c3.Close()
	done := make(chan error, 1)
	go func() {
		done <- ServeAttest(context.Background(), s3, []byte("p"), NewSimAttester(nil, [MeasurementSize]byte{}, nil))
	}()
	_ = WriteFrame(c3, []byte{9, 9})
	resp, err := ReadFrame(c3, maxResponseSize)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeResponse(resp); !errors.As(err, &refused) || refused.Status != StatusBadRequest {
		t.Fatalf("response to garbage = %v; want bad request", err)
	}
	if err := <-done; !errors.Is(err, ErrMalformed) {
		t.Fatalf("ServeAttest(garbage) = %v; want ErrMalformed", err)
	}
}
