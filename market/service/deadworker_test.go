package service_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/cocoon-network/cocoon/enclave"
	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/market/service"
	"github.com/cocoon-network/cocoon/p2p"
	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

// The worker process of TestFailoverDeadWorker: a real libp2p host on
// 127.0.0.1 (TCP and QUIC) selling the text backend, which prints its
// addresses and then serves until it is killed.
const deadWorkerEnv = "COCOON_TEST_DEAD_WORKER"

// deadWorkerPrice is the child's price: cheaper than the live worker, so the
// client's selector puts it first.
var (
	deadWorkerPrice = market.Price{Prompt: 1_000, Completion: 1_000_000}
	liveWorkerPrice = market.Price{Prompt: 2_000, Completion: 2_000_000}
)

// deadWorkerBackend is what both workers sell: twelve words, a millisecond apart.
var deadWorkerBackend = wordBackend{words: strings.Fields("once there was a worker that died and the client went on without it"), wait: time.Millisecond}

func TestDeadWorkerChild(t *testing.T) {
	if os.Getenv(deadWorkerEnv) != "1" {
		t.Skip("the worker process of TestFailoverDeadWorker")
	}
	nd := loopbackNode(t)
	startTextWorker(t, nd, deadWorkerPrice)
	for _, a := range nd.Host.Addrs() {
		fmt.Printf("ADDR %s/p2p/%s\n", a, nd.Host.ID())
	}
	fmt.Println("READY")
	time.Sleep(2 * time.Minute) // killed long before; an orphan ends on its own
}

func loopbackNode(t *testing.T) *p2p.Node {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	// No liveness pings: the client must find the dead worker by itself.
	nd, err := p2p.New(context.Background(), p2p.Config{
		Identity: key, Listen: []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"},
		DHTMode: p2p.DHTServer, LivenessInterval: -1, Logger: quietLog(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nd.Close() })
	return nd
}

func quietLog() *slog.Logger {
	if os.Getenv("COCOON_TEST_LOG") == "1" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// startTextWorker sells deadWorkerBackend on nd with TEE kind none, paid on a
// tally (unsigned vouchers: money is not what this test checks).
func startTextWorker(t *testing.T, nd *p2p.Node, price market.Price) {
	t.Helper()
	svc, err := service.NewWorker(service.WorkerConfig{
		Node: nd, Backend: deadWorkerBackend, Payee: newTally(), Prices: map[string]market.Price{netModel: price},
		Settlement: market.Settlement{WalletAddress: "EQDtFpEwcFAEcRe5mLVh2N6C0x-_hJEM7W61_JLnSF74p4q2",
			ChannelKey: bytes.Repeat([]byte{7}, 32), MinDeposit: 1},
		TEE: market.TEE{Kind: tee.None}, Logger: quietLog(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
}

// startDeadWorker runs TestDeadWorkerChild in a child process and returns its
// address and the command, to kill.
func startDeadWorker(t *testing.T) (peer.AddrInfo, *exec.Cmd) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestDeadWorkerChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), deadWorkerEnv+"=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var addrs []ma.Multiaddr
	sc := bufio.NewScanner(out)
	for sc.Scan() && sc.Text() != "READY" {
		if a, ok := strings.CutPrefix(sc.Text(), "ADDR "); ok {
			m, err := ma.NewMultiaddr(a)
			if err != nil {
				t.Fatal(err)
			}
			addrs = append(addrs, m)
		}
	}
	go io.Copy(io.Discard, out)
	ais, err := peer.AddrInfosFromP2pAddrs(addrs...)
	if err != nil || len(ais) != 1 {
		t.Fatalf("worker process addresses %v: %v", addrs, err)
	}
	return ais[0], cmd
}

// TestFailoverDeadWorker kills (SIGKILL) the process of the worker a client
// prefers.
//
// Over QUIC the connection then looks alive to the client: no FIN, no reset,
// and quic-go ignores the ICMP port-unreachable answers. Before, the next job
// waited out the Accept deadline (10 s) there, and once the connection was
// dropped every new dial took the swarm's local dial timeout (5 s) until the
// ad expired. Now the silent job stream is probed, the dead connection closed
// and the worker marked down: that job fails over to the live worker within
// the probe's time, and the next skips the dead worker.
//
// Over TCP the kernel closes the connection: the worker is marked down when
// it drops, and the first job after the kill goes straight to the live one.
func TestFailoverDeadWorker(t *testing.T) {
	noLeaks(t)
	t.Run("quic", func(t *testing.T) { testFailoverDeadWorker(t, "/quic-v1") })
	t.Run("tcp", func(t *testing.T) { testFailoverDeadWorker(t, "/tcp/") })
}

func testFailoverDeadWorker(t *testing.T, transport string) {
	deadAI, cmd := startDeadWorker(t)
	var only []ma.Multiaddr
	for _, a := range deadAI.Addrs {
		if strings.Contains(a.String(), transport) {
			only = append(only, a)
		}
	}
	deadAI.Addrs = only
	live := loopbackNode(t)
	startTextWorker(t, live, liveWorkerPrice)
	client := loopbackNode(t)
	chans := map[peer.ID]*tally{}
	var mu sync.Mutex
	const probeAfter, probeTimeout = 100 * time.Millisecond, 300 * time.Millisecond
	// The workers run outside any TEE: the client's policy accepts none.
	verifier, err := enclave.NewVerifier(enclave.Policy{AllowedKinds: []tee.Kind{tee.None}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := service.NewClient(service.ClientConfig{
		Models: []string{netModel},
		Node:   client, Verifier: verifier,
		Payer: func(c market.Candidate) (market.Payer, error) {
			mu.Lock()
			defer mu.Unlock()
			if chans[c.Peer] == nil {
				chans[c.Peer] = newTally()
			}
			return chans[c.Peer], nil
		},
		Policy:     market.Policy{TEE: []tee.Kind{tee.None}},
		ProbeAfter: probeAfter, ProbeTimeout: probeTimeout,
		Rand: rand.New(rand.NewPCG(1, 2)), Logger: quietLog(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	ctx := t.Context()
	for _, ai := range []peer.AddrInfo{deadAI, {ID: live.Host.ID(), Addrs: live.Host.Addrs()}} {
		if err := client.Host.Connect(ctx, ai); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, 20*time.Second, "both workers' ads", func() bool { return len(cs.Book().ByModel(netModel)) == 2 })
	conns := client.Host.Network().ConnsToPeer(deadAI.ID)
	if len(conns) == 0 {
		t.Fatal("no connection to the worker process")
	}
	t.Logf("connection to the worker process: %s", conns[0].RemoteMultiaddr())

	req := runtime.Request{Model: netModel, Messages: []runtime.Message{{Role: "user", Content: "once upon a time"}}}
	want := deadWorkerBackend.answer()
	ask := func(what string) ([]market.Attempt, time.Duration) {
		t.Helper()
		start := time.Now()
		s, err := cs.GeneratePolicy(ctx, req, market.Policy{TEE: []tee.Kind{tee.None}})
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		var text strings.Builder
		for {
			d, err := s.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			text.WriteString(d.Text)
		}
		took := time.Since(start)
		s.Close()
		if text.String() != want {
			t.Fatalf("%s: answer %q; want %q", what, text.String(), want)
		}
		return s.Attempts(), took
	}
	as, warm := ask("before the kill")
	if len(as) != 1 || as[0].Candidate.Peer != deadAI.ID {
		t.Fatalf("before the kill: attempts %+v; want one, on the cheaper worker process", as)
	}
	// The job counts as in flight until the worker closes its side; a worker
	// with one of the client's jobs in flight comes after an idle one.
	waitUntil(t, 5*time.Second, "the worker to close the job stream", func() bool { return cs.InFlight(deadAI.ID) == 0 })

	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if transport == "/tcp/" {
		// The disconnect notification that marks the worker down runs
		// after the connection is gone from the swarm: wait for both.
		waitUntil(t, 5*time.Second, "the TCP connection to drop and the worker to be marked down", func() bool {
			return len(client.Host.Network().ConnsToPeer(deadAI.ID)) == 0 && cs.Selector().Down(deadAI.ID)
		})
		as, first := ask("first job after the kill")
		if len(as) != 1 || as[0].Candidate.Peer != live.Host.ID() {
			t.Fatalf("first job after the kill: attempts %+v; want only the live worker", as)
		}
		t.Logf("TCP: job before the kill %v; first job after the connection dropped %v (dead worker skipped)",
			warm.Round(time.Millisecond), first.Round(time.Millisecond))
		return
	}
	as, first := ask("first job after the kill")
	onDead := as[0].Receipt.Elapsed
	switch {
	case len(as) == 1 && as[0].Candidate.Peer == live.Host.ID() && as[0].Err == nil:
		// The connection's death was noticed (and the worker marked down)
		// before the job started: on a loaded machine the kill can take
		// that long to act. Skipping it at once is the better outcome.
		t.Logf("the dead worker was marked down before the first job after the kill")
		onDead = 0
	case len(as) != 2 || as[0].Candidate.Peer != deadAI.ID || as[0].Err == nil || as[1].Candidate.Peer != live.Host.ID() || as[1].Err != nil:
		t.Fatalf("first job after the kill: attempts %+v; want the dead worker's failed one, then the live one's", as)
	}
	if !cs.Selector().Down(deadAI.ID) {
		t.Fatal("the dead worker is not marked down")
	}
	// Well under the 10 s Accept deadline it waited before; the probe takes
	// probeAfter + probeTimeout.
	if first > 5*time.Second {
		t.Errorf("first job after the kill took %v; the probe should fail it over within about %v", first, probeAfter+probeTimeout)
	}
	as, next := ask("second job after the kill")
	if len(as) != 1 || as[0].Candidate.Peer != live.Host.ID() {
		t.Fatalf("second job after the kill: attempts %+v; want only the live worker", as)
	}
	if n := len(client.Host.Network().ConnsToPeer(deadAI.ID)); n != 0 {
		t.Errorf("%d connections to the dead worker left open", n)
	}
	// When only the dead worker meets the policy, none is available: 503 at
	// once (OpenAI clients retry it), not 404 and not a dial timeout.
	start := time.Now()
	_, err = cs.GeneratePolicy(ctx, req, market.Policy{TEE: []tee.Kind{tee.None}, MaxPrice: deadWorkerPrice})
	if e := openaiapi.ErrorFor(err); e.Status != http.StatusServiceUnavailable || e.Code != "no_worker_available" {
		t.Errorf("only the dead worker under the policy: %v → %d %q; want 503 no_worker_available", err, e.Status, e.Code)
	}
	unavailable := time.Since(start)
	t.Logf("QUIC: probe after %v silence, timeout %v: job before the kill %v; first job after it %v (%v on the dead worker, then failed over); next job %v (dead worker skipped); 503 with only the dead worker in %v",
		probeAfter, probeTimeout, warm.Round(time.Millisecond), first.Round(time.Millisecond), onDead.Round(time.Millisecond), next.Round(time.Millisecond), unavailable.Round(time.Microsecond))
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
