package service_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/cocoon-network/cocoon/enclave"
	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/market/service"
)

// attestHost starts a real libp2p host on 127.0.0.1 (TCP), closed with the test.
func attestHost(t testing.TB) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func attestConnect(t testing.TB, a, b host.Host) {
	t.Helper()
	if err := a.Connect(context.Background(), peer.AddrInfo{ID: b.ID(), Addrs: b.Addrs()}); err != nil {
		t.Fatal(err)
	}
}

var attestQuiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// attestCounting counts evidence made, and can be switched to replay one captured
// piece of evidence whatever it is asked for.
type attestCounting struct {
	inner  enclave.Attester
	n      atomic.Int64
	replay atomic.Pointer[enclave.Evidence]
	block  chan struct{} // when non-nil, Attest waits for it or ctx
}

func (c *attestCounting) Kind() tee.Kind { return c.inner.Kind() }
func (c *attestCounting) Attest(ctx context.Context, rd [enclave.ReportDataSize]byte) (enclave.Evidence, error) {
	c.n.Add(1)
	if c.block != nil {
		select {
		case <-c.block:
		case <-ctx.Done():
			return enclave.Evidence{}, ctx.Err()
		}
	}
	if ev := c.replay.Load(); ev != nil {
		return *ev, nil
	}
	return c.inner.Attest(ctx, rd)
}

func attestSimWorker(t testing.TB, cfg service.AttestConfig) (host.Host, *attestCounting, *service.Attestations) {
	h := attestHost(t)
	att := &attestCounting{inner: enclave.NewSimAttester(nil, [enclave.MeasurementSize]byte{}, nil)}
	cfg.Attester = att
	cfg.Logger = attestQuiet
	s := service.NewAttestations(h, cfg)
	t.Cleanup(func() { s.Close() })
	return h, att, s
}

func attestClient(t testing.TB, p enclave.Policy) (host.Host, *service.Attestations) {
	h := attestHost(t)
	v, err := enclave.NewVerifier(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := service.NewAttestations(h, service.AttestConfig{Verifier: v, Logger: attestQuiet, Timeout: 5 * time.Second})
	t.Cleanup(func() { s.Close() })
	return h, s
}

// attestCapture requests raw evidence from p with the given nonce, as any client could.
func attestCapture(t testing.TB, from host.Host, p peer.ID, nonce [enclave.NonceSize]byte) enclave.Evidence {
	t.Helper()
	s, err := from.NewStream(context.Background(), p, service.AttestProtocol)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ev, err := enclave.RequestEvidence(context.Background(), s, nonce)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

var simOn = enclave.Policy{AllowSim: true, AllowedKinds: []tee.Kind{tee.Sim}}

func TestAttestSimOverLibp2p(t *testing.T) {
	noLeaks(t)
	worker, att, _ := attestSimWorker(t, service.AttestConfig{})
	client, svc := attestClient(t, simOn)
	attestConnect(t, client, worker)

	vd, err := svc.Verify(context.Background(), worker.ID())
	if err != nil {
		t.Fatalf("Verify(worker) = %v", err)
	}
	if vd.Kind != tee.Sim || vd.Tier != "sim (not confidential)" {
		t.Fatalf("verdict = %s %q; want sim (not confidential)", vd.Kind, vd.Tier)
	}
	// The second call on the same connection is served from the cache.
	if _, err := svc.Verify(context.Background(), worker.ID()); err != nil || att.n.Load() != 1 {
		t.Fatalf("second Verify = %v with %d evidence requests; want cached (1)", err, att.n.Load())
	}
}

func TestAttestRelayAndReplayRefused(t *testing.T) {
	noLeaks(t)
	worker, _, _ := attestSimWorker(t, service.AttestConfig{})
	client, svc := attestClient(t, simOn)

	// A third node relays each request's nonce to the genuine worker and returns the
	// worker's evidence: fresh nonce, but bound to the worker's peer ID, not its own.
	relay := attestHost(t)
	attestConnect(t, relay, worker)
	relay.SetStreamHandler(service.AttestProtocol, func(s network.Stream) {
		defer s.Close()
		req, err := enclave.ReadFrame(s, 64)
		if err != nil {
			return
		}
		nonce, err := enclave.DecodeRequest(req)
		if err != nil {
			return
		}
		up, err := relay.NewStream(context.Background(), worker.ID(), service.AttestProtocol)
		if err != nil {
			return
		}
		defer up.Close()
		ev, err := enclave.RequestEvidence(context.Background(), up, nonce)
		if err != nil {
			return
		}
		resp, _ := enclave.EncodeResponse(enclave.StatusOK, &ev)
		_ = enclave.WriteFrame(s, resp)
	})
	attestConnect(t, client, relay)
	if _, err := svc.Verify(context.Background(), relay.ID()); !errors.Is(err, enclave.ErrReportDataMismatch) {
		t.Fatalf("Verify(relay of the worker's evidence) = %v; want ErrReportDataMismatch", err)
	}

	// A third node replaying evidence it captured from the worker under its own ID.
	captured := attestCapture(t, relay, worker.ID(), enclave.NewNonce())
	replayer, ratt, _ := attestSimWorker(t, service.AttestConfig{})
	ratt.replay.Store(&captured)
	attestConnect(t, client, replayer)
	if _, err := svc.Verify(context.Background(), replayer.ID()); !errors.Is(err, enclave.ErrReportDataMismatch) {
		t.Fatalf("Verify(replayed evidence) = %v; want ErrReportDataMismatch", err)
	}
	if _, ok := svc.Cached(replayer.ID()); ok {
		t.Fatal("a refused verdict was cached")
	}
	// The genuine worker still verifies through the same client.
	attestConnect(t, client, worker)
	if _, err := svc.Verify(context.Background(), worker.ID()); err != nil {
		t.Fatalf("Verify(worker) = %v", err)
	}
}

func TestAttestStaleNonceRefused(t *testing.T) {
	noLeaks(t)
	worker, att, _ := attestSimWorker(t, service.AttestConfig{})
	client, svc := attestClient(t, simOn)
	attestConnect(t, client, worker)
	// Evidence the worker itself made earlier, for an old nonce, replayed under the
	// worker's own (correct) peer ID: only the nonce is wrong.
	old := attestCapture(t, client, worker.ID(), enclave.NewNonce())
	att.replay.Store(&old)
	if _, err := svc.Verify(context.Background(), worker.ID()); !errors.Is(err, enclave.ErrReportDataMismatch) {
		t.Fatalf("Verify(evidence for an old nonce) = %v; want ErrReportDataMismatch", err)
	}
	att.replay.Store(nil)
	if _, err := svc.Verify(context.Background(), worker.ID()); err != nil {
		t.Fatalf("Verify(fresh) = %v", err)
	}
}

func TestAttestSimRefusedWithoutAllowSim(t *testing.T) {
	noLeaks(t)
	worker, _, _ := attestSimWorker(t, service.AttestConfig{})
	client, svc := attestClient(t, enclave.Policy{})
	attestConnect(t, client, worker)
	vd, err := svc.Verify(context.Background(), worker.ID())
	if !errors.Is(err, enclave.ErrSimNotAllowed) {
		t.Fatalf("Verify(sim worker, allow_sim off) = %+v, %v; want ErrSimNotAllowed", vd, err)
	}
}

func TestAttestCacheDroppedOnDisconnect(t *testing.T) {
	noLeaks(t)
	worker, att, _ := attestSimWorker(t, service.AttestConfig{})
	client, svc := attestClient(t, simOn)
	attestConnect(t, client, worker)
	if _, err := svc.Verify(context.Background(), worker.ID()); err != nil {
		t.Fatal(err)
	}
	if _, ok := svc.Cached(worker.ID()); !ok {
		t.Fatal("verdict not cached after Verify")
	}
	if err := client.Network().ClosePeer(worker.ID()); err != nil {
		t.Fatal(err)
	}
	// Disconnected notifications are asynchronous; the lookup also ignores verdicts
	// of connections that are gone.
	deadline := time.Now().Add(5 * time.Second)
	for _, ok := svc.Cached(worker.ID()); ok; _, ok = svc.Cached(worker.ID()) {
		if time.Now().After(deadline) {
			t.Fatal("verdict still cached 5 s after disconnect")
		}
		time.Sleep(5 * time.Millisecond)
	}
	attestConnect(t, client, worker)
	if _, ok := svc.Cached(worker.ID()); ok {
		t.Fatal("a new connection inherited the old connection's verdict")
	}
	if _, err := svc.Verify(context.Background(), worker.ID()); err != nil || att.n.Load() != 2 {
		t.Fatalf("Verify after reconnect = %v with %d evidence requests; want a fresh exchange (2)", err, att.n.Load())
	}
}

func TestAttestRateLimitPerPeer(t *testing.T) {
	noLeaks(t)
	worker, att, _ := attestSimWorker(t, service.AttestConfig{Burst: 2, Interval: time.Hour})
	c1 := attestHost(t)
	c2 := attestHost(t)
	attestConnect(t, c1, worker)
	attestConnect(t, c2, worker)
	attestCapture(t, c1, worker.ID(), enclave.NewNonce())
	attestCapture(t, c1, worker.ID(), enclave.NewNonce())
	s, err := c1.NewStream(context.Background(), worker.ID(), service.AttestProtocol)
	if err != nil {
		t.Fatal(err)
	}
	_, err = enclave.RequestEvidence(context.Background(), s, enclave.NewNonce())
	s.Close()
	var refused *enclave.RefusedError
	if !errors.As(err, &refused) || refused.Status != enclave.StatusRateLimited {
		t.Fatalf("third request within the interval = %v; want rate limited", err)
	}
	if att.n.Load() != 2 {
		t.Fatalf("attester ran %d times; want 2 (the refused request made no evidence)", att.n.Load())
	}
	// Another peer has its own budget.
	attestCapture(t, c2, worker.ID(), enclave.NewNonce())
}

func TestAttestDeadline(t *testing.T) {
	noLeaks(t)
	worker, att, _ := attestSimWorker(t, service.AttestConfig{Timeout: 200 * time.Millisecond})
	att.block = make(chan struct{}) // a quote that never comes
	h := attestHost(t)
	v, _ := enclave.NewVerifier(simOn, nil)
	svc := service.NewAttestations(h, service.AttestConfig{Verifier: v, Logger: attestQuiet, Timeout: 300 * time.Millisecond})
	defer svc.Close()
	attestConnect(t, h, worker)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := svc.Verify(ctx, worker.ID()); err == nil {
		t.Fatal("Verify against a prover whose quote never comes returned no error")
	}
	if ctx.Err() != nil {
		t.Fatal("the exchange ran past the client's 10 s context: its own deadline did not apply")
	}
}

// BenchmarkAttestRoundTrip measures one uncached attest exchange (fresh nonce, sim
// evidence, verification) between two real hosts over loopback TCP.
func BenchmarkAttestRoundTrip(b *testing.B) {
	worker, _, _ := attestSimWorker(b, service.AttestConfig{Burst: 1 << 30, Interval: time.Nanosecond})
	client, svc := attestClient(b, simOn)
	attestConnect(b, client, worker)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		svc.Forget(worker.ID())
		if _, err := svc.Verify(ctx, worker.ID()); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAttestCached measures Verify when the connection's verdict is cached.
func BenchmarkAttestCached(b *testing.B) {
	worker, _, _ := attestSimWorker(b, service.AttestConfig{})
	client, svc := attestClient(b, simOn)
	attestConnect(b, client, worker)
	ctx := context.Background()
	if _, err := svc.Verify(ctx, worker.ID()); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := svc.Verify(ctx, worker.ID()); err != nil {
			b.Fatal(err)
		}
	}
}

// TestAttestCloseStopsServing closes a prover while it is making evidence (a
// quote that never comes): Close abandons the exchange and returns once its
// goroutine has ended, instead of leaving it to run out its 30 s timeout, and
// the requester sees the stream end.
func TestAttestCloseStopsServing(t *testing.T) {
	noLeaks(t)
	worker, att, svc := attestSimWorker(t, service.AttestConfig{})
	att.block = make(chan struct{})
	client := attestHost(t)
	attestConnect(t, client, worker)
	s, err := client.NewStream(context.Background(), worker.ID(), service.AttestProtocol)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got := make(chan error, 1)
	go func() {
		_, err := enclave.RequestEvidence(context.Background(), s, enclave.NewNonce())
		got <- err
	}()
	for att.n.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	start := time.Now()
	if err := svc.Close(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Close took %v with evidence being made", took)
	}
	select {
	case err := <-got:
		if err == nil {
			t.Error("evidence arrived from a closed prover")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the requester still waits 10 s after the prover closed")
	}
}
