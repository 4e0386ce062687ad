package sim

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"testing/synctest"
	"time"
)

// Figures are what one run of the scenario measured. Durations are on the
// simulated clock; Wall is the real time the run took.
type Figures struct {
	Nodes, Workers int
	Settle         time.Duration // until every routing table held MinTable peers

	Deliveries int           // ads handed to joined nodes
	Coverage   float64       // of (joined node, ad published in the measured window) pairs, the share delivered
	P50, P99   time.Duration // ad propagation to joined nodes
	MaxDelay   time.Duration
	Stale      int // joined nodes missing a worker's newest ad at the end
	Foreign    int // ads delivered to nodes not joined to their model

	Lookups               int
	LookupFound           float64       // share of lookups that found every worker of the model
	LookupP50, LookupP99  time.Duration // provider lookup time
	HopsMean              float64
	HopsMax               int
	QueriedMean           float64 // peers answering per lookup
	DHTBytesPerLookup     float64 // bytes sent + received by the looking node
	GossipBps, DHTBps     float64 // bytes sent + received per node per second, over the ads window
	GossipBpsPerModel     float64 // GossipBps of nodes joined to ≥ 1 model, per model joined
	HeapPerNode           uint64
	Wall                  time.Duration
	Window                time.Duration // the ads window the rates are over
	MeanModelsJoined      float64
	MeanPeers, MeanRTSize float64
}

// Scenario timings (simulated clock).
const (
	settleMax  = 2 * time.Minute
	minTable   = 5
	meshWarmup = 5 * time.Second // heartbeats graft the meshes
	adRounds   = 4               // ad intervals in the measured window
	drain      = 5 * time.Second // after the last ad, before checking the newest ones
	lookups    = 20
)

// p99Bound is the ad propagation bound TestSim asserts. A path of h gossip hops
// costs h × (L_i + L_j)/2 ≤ h × 150 ms plus queueing; gossipsub's mesh (D = 6,
// flood publish to every topic peer) reaches a topic of k nodes in about
// log_5(k) + 1 hops, 4–5 at these sizes: ≤ 750 ms of links. Another 2 s covers
// a node outside the mesh that learns an ad from IHAVE gossip on the next
// heartbeat (1 s) plus the IWANT round trip.
const p99Bound = 3 * time.Second

// The simulated nodes keep fewer connections than p2p's defaults (100–400): a
// quic-go connection costs about 100 KiB of heap on each side, so 1,000 nodes at
// 100 connections would need ~10 GiB, and each connection's timers cost CPU in
// the bubble. Gossipsub's mesh degree (D = 6) and Kademlia's k (20) fit well
// within these.
const (
	simConnsLow  = 32
	simConnsHigh = 64
)

// runScenario builds cfg's network in the current synctest bubble, runs the ads
// and lookups, checks the outcome (through t) and returns the figures.
func runScenario(t testing.TB, cfg Config) Figures {
	wall := time.Now() // the bubble's clock: Wall is filled in by the caller
	_ = wall
	ctx := context.Background()
	n, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := n.Close(); err != nil {
			t.Logf("close: %v", err)
		}
	}()
	f := Figures{Nodes: len(n.Nodes), Workers: len(n.Workers)}
	f.Settle = n.Settle(settleMax, minTable)
	if err := n.Provide(ctx); err != nil {
		t.Logf("provide: %v", err) // lookups below say whether it mattered
	}
	time.Sleep(meshWarmup)

	before := snapshot(n)
	start := time.Now()
	n.StartAds()

	// Provider lookups from random nodes, one after another, in the window.
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x100c))
	var times []time.Duration
	var found, hops, queried, dhtBytes int
	for range lookups {
		nd := n.Nodes[rng.IntN(len(n.Nodes))]
		if nd.Sells != "" {
			continue
		}
		model := n.Models[rng.IntN(len(n.Models))]
		b0 := nd.Traffic.DHTSent.Load() + nd.Traffic.DHTRecv.Load()
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		l := n.FindProviders(lctx, nd, model)
		cancel()
		dhtBytes += int(nd.Traffic.DHTSent.Load() + nd.Traffic.DHTRecv.Load() - b0)
		f.Lookups++
		times = append(times, l.Time)
		if l.Found == l.Want {
			found++
		} else {
			t.Errorf("lookup of %s from node %d found %d of %d workers (%v)", model, nd.Index, l.Found, l.Want, l.Err)
		}
		hops += l.Hops
		f.HopsMax = max(f.HopsMax, l.Hops)
		queried += l.Queried
	}
	if f.Lookups > 0 {
		f.LookupFound = float64(found) / float64(f.Lookups)
		f.LookupP50, f.LookupP99 = pct(times, 50), pct(times, 99)
		f.HopsMean = float64(hops) / float64(f.Lookups)
		f.QueriedMean = float64(queried) / float64(f.Lookups)
		f.DHTBytesPerLookup = float64(dhtBytes) / float64(f.Lookups)
	}

	if rest := time.Duration(adRounds)*cfg.adInterval() - time.Since(start); rest > 0 {
		time.Sleep(rest)
	}
	f.Window = time.Since(start)
	after := snapshot(n)
	n.StopAds() // the last ads propagate during drain
	time.Sleep(drain)

	// Rates over the window.
	secs := f.Window.Seconds()
	var perModel float64
	var joinedNodes, models int
	for i, nd := range n.Nodes {
		g := float64(after[i].gossip - before[i].gossip)
		f.GossipBps += g
		f.DHTBps += float64(after[i].dht - before[i].dht)
		if len(nd.Models) > 0 && nd.Sells == "" {
			perModel += g / float64(len(nd.Models))
			joinedNodes++
		}
		models += len(nd.Models)
		f.MeanPeers += float64(len(nd.P2P.Peers()))
		f.MeanRTSize += float64(nd.P2P.DHT.WAN.RoutingTable().Size())
	}
	N := float64(len(n.Nodes))
	f.GossipBps /= N * secs
	f.DHTBps /= N * secs
	f.GossipBpsPerModel = perModel / float64(max(joinedNodes, 1)) / secs
	f.MeanModelsJoined = float64(models) / N
	f.MeanPeers /= N
	f.MeanRTSize /= N

	// Propagation: every ad published in the window, to every joined node.
	var delays []time.Duration
	for _, d := range n.Deliveries() {
		w := n.Nodes[d.Worker]
		if !n.Nodes[d.Node].Joined(w.Sells) {
			continue
		}
		delays = append(delays, d.Delay)
	}
	f.Deliveries = len(delays)
	f.P50, f.P99 = pct(delays, 50), pct(delays, 99)
	if len(delays) > 0 {
		f.MaxDelay = slices.Max(delays)
	}
	var want int
	for _, w := range n.Workers {
		joined := 0
		for _, nd := range n.Nodes {
			if nd != w && nd.Joined(w.Sells) {
				joined++
			}
		}
		want += joined * int(n.Published(w))
	}
	if want > 0 {
		f.Coverage = float64(f.Deliveries) / float64(want)
	}

	// The newest ad of every worker reached every node joined to its model;
	// no node got an ad of a model it has not joined.
	for _, nd := range n.Nodes {
		f.Foreign += nd.Foreign()
		for _, w := range n.Workers {
			if w == nd || !nd.Joined(w.Sells) {
				continue
			}
			if got, want := nd.Newest(w.P2P.Host.ID()), n.Published(w); got != want {
				f.Stale++
				if f.Stale <= 5 {
					t.Errorf("node %d (joined %v, %d peers) has ad %d of worker %d (%s); want %d", nd.Index, nd.Models, len(nd.P2P.Peers()), got, w.Index, w.Sells, want)
				}
			}
		}
	}
	f.HeapPerNode = n.HeapPerNode()
	return f
}

func (c Config) adInterval() time.Duration {
	if c.AdInterval == 0 {
		return 10 * time.Second
	}
	return c.AdInterval
}

type counts struct{ gossip, dht int64 }

func snapshot(n *Net) []counts {
	out := make([]counts, len(n.Nodes))
	for i, nd := range n.Nodes {
		tr := nd.Traffic
		out[i] = counts{tr.GossipSent.Load() + tr.GossipRecv.Load(), tr.DHTSent.Load() + tr.DHTRecv.Load()}
	}
	return out
}

func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(0, min(len(s)-1, i-1))]
}

func (f Figures) String() string {
	return fmt.Sprintf("nodes=%d workers=%d settle=%v | ads: deliveries=%d coverage=%.4f p50=%v p99=%v max=%v stale=%d foreign=%d | "+
		"lookups=%d found=%.2f p50=%v p99=%v hops=%.1f (max %d) queried=%.1f dht-bytes/lookup=%.0f | "+
		"gossip=%.0f B/s/node (%.0f per joined model) dht=%.0f B/s/node | peers=%.1f rt=%.1f models/node=%.2f | heap/node=%d KiB wall=%v",
		f.Nodes, f.Workers, f.Settle, f.Deliveries, f.Coverage, f.P50, f.P99, f.MaxDelay, f.Stale, f.Foreign,
		f.Lookups, f.LookupFound, f.LookupP50, f.LookupP99, f.HopsMean, f.HopsMax, f.QueriedMean, f.DHTBytesPerLookup,
		f.GossipBps, f.GossipBpsPerModel, f.DHTBps, f.MeanPeers, f.MeanRTSize, f.MeanModelsJoined, f.HeapPerNode>>10, f.Wall)
}

// simulate runs the scenario at cfg in a synctest bubble. Under the race
// detector the bubble runs on one P: concurrent bubble timers corrupt the race
// detector's state (golang/go#78156, the workaround go-libp2p-pubsub uses).
func simulate(t *testing.T, cfg Config) Figures {
	if raceEnabled {
		prev := runtime.GOMAXPROCS(1)
		defer runtime.GOMAXPROCS(prev)
	}
	var f Figures
	wall := time.Now()
	synctest.Test(t, func(t *testing.T) { f = runScenario(t, cfg) })
	f.Wall = time.Since(wall)
	return f
}

// TestSim runs the simulated internet at simNodes (1,000; 200 under the race
// detector): ads reach every node joined to their model within p99Bound and no
// other node, and provider lookups from random nodes find every worker.
func TestSim(t *testing.T) {
	if testing.Short() {
		t.Skip("the simulated internet takes minutes")
	}
	nodes := simNodes
	if s := os.Getenv("SIM_NODES"); s != "" { // for trying sizes by hand
		nodes, _ = strconv.Atoi(s)
	}
	f := simulate(t, Config{Nodes: nodes, Seed: 1, ConnsLow: simConnsLow, ConnsHigh: simConnsHigh})
	t.Log(f)
	if f.P99 > p99Bound {
		t.Errorf("ad propagation p99 %v; want ≤ %v", f.P99, p99Bound)
	}
	if f.Foreign > 0 {
		t.Errorf("%d ads delivered to nodes not joined to their model", f.Foreign)
	}
	if f.Coverage < 0.99 {
		t.Errorf("coverage %.4f of (joined node, ad) pairs; want ≥ 0.99", f.Coverage)
	}
}
