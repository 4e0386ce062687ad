package service_test

import (
	"errors"
	"io"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/cocoon-network/cocoon/enclave"
	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/market/service"
	"github.com/cocoon-network/cocoon/runtime"
)

// A worker that advertises TEE kind none serves no evidence, so the client's
// policy alone decides whether it is bought from. The selection (Policy.TEE)
// and the verifier's policy once disagreed there: the selection let such a
// worker through without asking the verifier. Now both must accept none, and a
// node sets both from [enclave.policy] allowed_kinds.
func TestWorkerWithoutTEE(t *testing.T) {
	noLeaks(t)
	worker := loopbackNode(t)
	startTextWorker(t, worker, deadWorkerPrice)
	req := runtime.Request{Model: netModel, Messages: []runtime.Message{{Role: "user", Content: "once upon a time"}}}

	client := func(t *testing.T, p enclave.Policy) *service.Client {
		v, err := enclave.NewVerifier(p, nil)
		if err != nil {
			t.Fatal(err)
		}
		nd := loopbackNode(t)
		cs, err := service.NewClient(service.ClientConfig{
			Models: []string{netModel},
			Node:   nd, Verifier: v, Policy: market.Policy{TEE: p.Kinds()}, Logger: quietLog(),
			FindTimeout: time.Second, // the DHT fallback of a book with no match
			Payer:       func(market.Candidate) (market.Payer, error) { return newTally(), nil },
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cs.Close() })
		if err := nd.Host.Connect(t.Context(), peer.AddrInfo{ID: worker.Host.ID(), Addrs: worker.Host.Addrs()}); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, 20*time.Second, "the worker's ad", func() bool { return len(cs.Book().ByModel(netModel)) == 1 })
		return cs
	}

	t.Run("policy lists none: bought", func(t *testing.T) {
		cs := client(t, enclave.Policy{AllowedKinds: []tee.Kind{tee.TDX, tee.SEVSNP, tee.None}})
		s, err := cs.Generate(t.Context(), req)
		if err != nil {
			t.Fatalf("Generate = %v; want the worker without a TEE", err)
		}
		defer s.Close()
		for {
			if _, err := s.Recv(); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatal(err)
			}
		}
		ns := s.(*service.NetStream)
		if got := ns.Header().Get("X-Cocoon-TEE"); got != tee.None.Tier() {
			t.Errorf("X-Cocoon-TEE %q; want %q", got, tee.None.Tier())
		}
		if as := ns.Attempts(); len(as) != 1 || as[0].Candidate.Peer != worker.Host.ID() || as[0].Err != nil {
			t.Errorf("attempts %+v; want one clean attempt on the worker", as)
		}
	})

	t.Run("policy does not list none: not selected", func(t *testing.T) {
		cs := client(t, enclave.Policy{}) // tdx and sev-snp
		s, err := cs.Generate(t.Context(), req)
		if err == nil {
			s.Close()
			t.Fatal("Generate bought from a worker without a TEE that the policy does not list")
		}
		if !errors.Is(err, runtime.ErrUnknownModel) {
			t.Errorf("Generate = %v; want ErrUnknownModel (no worker offers the model under the policy)", err)
		}
	})

	t.Run("selection says none, the verifier's policy does not: refused", func(t *testing.T) {
		cs := client(t, enclave.Policy{})
		s, err := cs.GeneratePolicy(t.Context(), req, market.Policy{TEE: []tee.Kind{tee.None}})
		if err == nil {
			s.Close()
			t.Fatal("GeneratePolicy bought from a worker without a TEE that the verifier's policy refuses")
		}
		if !errors.Is(err, market.ErrAttestation) {
			t.Errorf("GeneratePolicy = %v; want ErrAttestation", err)
		}
	})
}
