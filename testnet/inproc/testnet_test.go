package inproc

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/market"
)

// inbox records, per node, the ads each node has received.
type inbox struct {
	mu  sync.Mutex
	got map[int]map[string]bool
}

func listen(tn *Testnet) *inbox {
	in := &inbox{got: map[int]map[string]bool{}}
	for _, m := range tn.Nodes {
		in.attach(m)
	}
	return in
}

func (in *inbox) attach(m *Member) {
	if err := m.P2P.JoinModel(Model); err != nil {
		panic(err)
	}
	m.P2P.SetAdHandler(func(_ string, _ peer.ID, data []byte) {
		in.mu.Lock()
		if in.got[m.Index] == nil {
			in.got[m.Index] = map[string]bool{}
		}
		in.got[m.Index][string(data)] = true
		in.mu.Unlock()
	})
}

func (in *inbox) count(msg string, except int) int {
	in.mu.Lock()
	defer in.mu.Unlock()
	n := 0
	for i, msgs := range in.got {
		if i != except && msgs[msg] {
			n++
		}
	}
	return n
}

// testAd is a valid capacity ad of m, new at each call.
func testAd(t testing.TB, m *Member) []byte {
	t.Helper()
	ad := &market.Ad{
		Peer: m.ID, Seq: uint64(time.Now().UnixMicro()), IssuedAt: time.Now(), TTL: time.Minute,
		Models:     []market.ModelOffer{{ID: Model, ContextLength: 128, Price: market.Price{Prompt: 1, Completion: 1}}},
		Capacity:   market.Capacity{SlotsTotal: 1, SlotsFree: 1},
		TEE:        market.TEE{Kind: tee.None},
		Settlement: market.Settlement{WalletAddress: fmt.Sprintf("wallet-of-node-%d", m.Index), ChannelKey: []byte{byte(m.Index)}},
	}
	b, err := ad.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestFiftyNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("50 nodes: not in -short")
	}
	tn := New(t, Nodes(50), Latency(10*time.Millisecond))
	in := listen(tn)

	// One node provides a model; every other node finds it through the DHT.
	provider := tn.Nodes[17]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second) // under -race on a loaded 2-core box
	defer cancel()
	if err := provider.P2P.Provide(ctx, "stories260K"); err != nil {
		t.Fatal(err)
	}
	var found atomic.Int32
	var wg sync.WaitGroup
	for _, m := range tn.Nodes {
		if m == provider {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ais, err := m.P2P.FindProviders(ctx, "stories260K", 1)
			if err != nil || len(ais) != 1 || ais[0].ID != provider.ID {
				t.Errorf("node %d: FindProviders = %v, %v; want [%s]", m.Index, ais, err, provider.ID)
				return
			}
			found.Add(1)
		}()
	}
	wg.Wait()
	if found.Load() != 49 {
		t.Fatalf("%d of 49 nodes found the provider", found.Load())
	}

	// A gossip message from one node reaches all 49 others.
	// (Every node runs the market client, whose topic validator passes only
	// well-formed ads signed by the peer they describe.)
	ad5 := testAd(t, tn.Nodes[5])
	if err := tn.Nodes[5].P2P.PublishAd(ctx, Model, ad5); err != nil {
		t.Fatal(err)
	}
	tn.WaitFor(15*time.Second, "ad from node 5 at all 49 others", func() bool {
		return in.count(string(ad5), 5) == 49
	})

	// A node that has just started publishes at once, before its gossip mesh has
	// formed: the message still reaches all 49 others.
	fresh := tn.Nodes[33]
	tn.Kill(fresh)
	tn.Restart(fresh)
	in.attach(fresh)
	tn.WaitFor(5*time.Second, "the restarted node to see a subscriber", func() bool {
		return len(fresh.P2P.AdPeers(Model)) > 0
	})
	msg := string(testAd(t, fresh))
	if err := fresh.P2P.PublishAd(ctx, Model, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	tn.WaitFor(15*time.Second, "the restarted node's first ad at all 49 others", func() bool {
		return in.count(msg, fresh.Index) == 49
	})
}

func TestPartitionAndHeal(t *testing.T) {
	tn := New(t, Nodes(4), Degree(3))
	a, b := tn.Nodes[:2], tn.Nodes[2:]
	tn.Partition(a, b)
	for _, x := range a {
		for _, y := range b {
			if len(x.P2P.Host.Network().ConnsToPeer(y.ID)) != 0 {
				t.Fatalf("node %d still connected to node %d across the partition", x.Index, y.Index)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			err := x.P2P.Host.Connect(ctx, y.AddrInfo())
			cancel()
			if err == nil {
				t.Fatalf("node %d dialled node %d across the partition", x.Index, y.Index)
			}
		}
	}
	tn.Heal(a, b)
	tn.Connect(a[0], b[0])
}

func TestLoopbackKill(t *testing.T) {
	tn := New(t, Nodes(3), Over(Loopback))
	victim := tn.Nodes[2]
	tn.WaitFor(10*time.Second, "node 0 connected to node 2", func() bool {
		return len(tn.Nodes[0].P2P.Host.Network().ConnsToPeer(victim.ID)) > 0
	})
	tn.Kill(victim)
	tn.WaitFor(10*time.Second, "node 0 to drop node 2", func() bool {
		return len(tn.Nodes[0].P2P.Host.Network().ConnsToPeer(victim.ID)) == 0
	})
	tn.Restart(victim)
	if victim.ID != victim.P2P.Host.ID() {
		t.Fatalf("restarted node has peer ID %s; want %s", victim.P2P.Host.ID(), victim.ID)
	}
}
