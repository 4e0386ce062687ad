package p2p

import (
	"context"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	ma "github.com/multiformats/go-multiaddr"
)

func reachNode(t *testing.T, reach string, relayService bool) *Node {
	t.Helper()
	n, err := New(context.Background(), Config{Identity: newKey(t), Listen: []string{"/ip4/127.0.0.1/tcp/0"},
		Reachability: reach, RelayService: relayService, LivenessInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// TestAutoRelay: a private node reserves a slot on a public relay among its
// peers and announces a /p2p-circuit address; a peer that knows only that
// address reaches it through the relay, and DCUtR upgrades the connection
// (on loopback, where there is no NAT, at once).
func TestAutoRelay(t *testing.T) {
	if testing.Short() {
		t.Skip("waits DirectWait for a hole punch that loopback cannot do")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rl := reachNode(t, ReachPublic, true)
	worker := reachNode(t, ReachPrivate, false)
	client := reachNode(t, ReachPrivate, false)

	const proto = "/cocoon/test/sink"
	var got atomic.Int64
	worker.Host.SetStreamHandler(proto, func(s network.Stream) {
		n, _ := io.Copy(io.Discard, s)
		got.Add(n)
		s.Close()
	})
	if err := worker.Host.Connect(ctx, peer.AddrInfo{ID: rl.Host.ID(), Addrs: rl.Host.Addrs()}); err != nil {
		t.Fatal(err)
	}
	// On loopback the relay's reservation carries no address (relay v2
	// hands out public ones only), so the worker announces none: the client
	// builds the circuit address itself and redials until the worker holds
	// its reservation.
	circuit := ma.Join(rl.Host.Addrs()[0], ma.StringCast("/p2p/"+rl.Host.ID().String()+"/p2p-circuit"))
	client.Host.Peerstore().AddAddr(worker.Host.ID(), circuit, peerstore.PermanentAddrTTL)
	var s network.Stream
	for {
		var err error
		if s, err = client.NewStream(ctx, worker.Host.ID(), proto); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no stream through the relay: %v (worker's reachability %+v)", err, worker.Reachability())
		case <-time.After(200 * time.Millisecond):
		}
	}
	if r := worker.Reachability(); r.Verdict != ReachPrivate {
		t.Errorf("worker's Reachability() = %+v; want private", r)
	}
	if r := rl.Reachability(); r.Verdict != ReachPublic || len(r.Relays) != 0 {
		t.Errorf("relay's Reachability() = %+v; want public with no relays", r)
	}
	// Loopback is no NAT: once identify over the relayed connection has
	// told the client the worker's own addresses, a direct dial (the DHT's
	// or DCUtR's) succeeds, and NewStream prefers the direct connection.
	cr, wr := client.Reachability(), worker.Reachability()
	t.Logf("stream on %s (limited %v); client %+v; worker %+v", s.Conn().RemoteMultiaddr(), s.Conn().Stat().Limited, cr, wr)
	if cr.Direct+cr.Relayed < 2 {
		t.Errorf("client's Reachability() = %+v; want connections to the relay and the worker", cr)
	}
	s.Close()
}
