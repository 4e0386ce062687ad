package enclave

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"time"
)

// The attest protocol, one exchange per stream (market mounts it on
// /cocoon/attest/1.0.0). Each message is a frame: uvarint length ‖ payload.
//
//	client → prover   Request  version:u8=1 ‖ nonce[32]                  (≤ 64 bytes)
//	prover → client   Response version:u8=1 ‖ status:u8 ‖ evidence?      (≤ 64 KiB + 2)
//
// The prover's evidence carries ReportData(prover peer ID, nonce); the client
// recomputes it from the connection's remote peer ID and its own nonce.

// deadliner is implemented by net.Conn and libp2p streams.
type deadliner interface{ SetDeadline(time.Time) error }

// bindContext makes ctx's deadline and cancellation interrupt I/O on rw when rw
// supports deadlines. The returned stop must be called when the exchange ends.
func bindContext(ctx context.Context, rw any) (stop func()) {
	d, ok := rw.(deadliner)
	if !ok {
		return func() {}
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = d.SetDeadline(dl)
	}
	cancel := context.AfterFunc(ctx, func() { _ = d.SetDeadline(time.Unix(1, 0)) })
	return func() { cancel() }
}

// ServeAttest answers one evidence request read from rw: it makes evidence for
// ReportData(self, nonce) with a and writes it back. self is the prover's own peer
// ID bytes. Peers get a status code, never an error string; the returned error
// says what went wrong locally.
func ServeAttest(ctx context.Context, rw io.ReadWriter, self []byte, a Attester) error {
	defer bindContext(ctx, rw)()
	req, err := ReadFrame(rw, maxRequestSize)
	if err != nil {
		_ = WriteRefusal(rw, StatusBadRequest)
		return fmt.Errorf("serve attest: %w", err)
	}
	nonce, err := DecodeRequest(req)
	if err != nil {
		_ = WriteRefusal(rw, StatusBadRequest)
		return fmt.Errorf("serve attest: %w", err)
	}
	ev, err := a.Attest(ctx, ReportData(self, nonce))
	if err != nil {
		_ = WriteRefusal(rw, StatusUnavailable)
		return fmt.Errorf("serve attest: make %s evidence: %w", a.Kind(), err)
	}
	resp, err := EncodeResponse(StatusOK, &ev)
	if err != nil {
		_ = WriteRefusal(rw, StatusUnavailable)
		return fmt.Errorf("serve attest: %w", err)
	}
	if err := WriteFrame(rw, resp); err != nil {
		return fmt.Errorf("serve attest: write evidence: %w", err)
	}
	return nil
}

// WriteRefusal answers an evidence request with a non-OK status (for instance
// StatusRateLimited) without making evidence.
func WriteRefusal(w io.Writer, status byte) error {
	resp, _ := EncodeResponse(status, nil)
	return WriteFrame(w, resp)
}

// RequestEvidence sends nonce on rw and reads the prover's evidence. A refusal comes
// back as a *RefusedError.
func RequestEvidence(ctx context.Context, rw io.ReadWriter, nonce [NonceSize]byte) (Evidence, error) {
	defer bindContext(ctx, rw)()
	if err := WriteFrame(rw, EncodeRequest(nonce)); err != nil {
		return Evidence{}, fmt.Errorf("request evidence: write: %w", err)
	}
	resp, err := ReadFrame(rw, maxResponseSize)
	if err != nil {
		return Evidence{}, fmt.Errorf("request evidence: %w", err)
	}
	ev, err := DecodeResponse(resp)
	if err != nil {
		return Evidence{}, fmt.Errorf("request evidence: %w", err)
	}
	return ev, nil
}

// NewNonce returns a fresh random nonce.
func NewNonce() [NonceSize]byte {
	var n [NonceSize]byte
	_, _ = rand.Read(n[:]) // crypto/rand.Read never fails (Go ≥ 1.24)
	return n
}

// AttestPeer runs the client side of one exchange on rw: it sends a fresh nonce and
// verifies the evidence against v's policy, bound to remote, the prover's peer ID
// bytes as the connection authenticated them.
func AttestPeer(ctx context.Context, rw io.ReadWriter, remote []byte, v *Verifier) (Verdict, error) {
	nonce := NewNonce()
	ev, err := RequestEvidence(ctx, rw, nonce)
	if err != nil {
		return Verdict{}, err
	}
	return v.Verify(ctx, ev, ReportData(remote, nonce))
}
