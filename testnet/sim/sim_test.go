package sim

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"

	"github.com/cocoon-network/cocoon/market/service"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
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
	PeakRSS               uint64 // bytes: the process's peak resident set, from its start
	Wall                  time.Duration
	Window                time.Duration // the ads window the rates are over
	MeanModelsJoined      float64
	MeanPeers, MeanRTSize float64
	// CPU seconds the process spent building the network (New and Settle), and
	// per node per simulated second in the ads window.
	CPUBuild, CPUPerNodeSec float64
	ConnsPerNode            float64 // connections opened per node (either end), up to the end of the ads window

	Flood Flood // the flood window, after the ads window
}

// Flood is what the flood window measured: one peer publishing at 100 times
// the allowed rate on a model's topic, one message in ten malformed, while
// the workers go on publishing. Times are from the flood's start.
type Flood struct {
	Window               time.Duration
	Published, Malformed int64 // the spammer's valid ads and malformed messages
	Delivered            int   // the spammer's ads handed to other nodes' ad handlers
	Neighbours           int   // its peers on the topic when the flood started
	CutOff               int   // of those, the ones that blocked, disconnected or graylisted it
	Flooded              int   // of the others, those that got more from it than the rule allows (see allowed): want none
	PeersAtEnd           int   // its connected peers at the end
	Blockers             int   // nodes whose rate rule blocked it
	BlockedFrac          float64
	NeighboursBlocked    int // neighbours at the start that blocked it
	// FirstBlock is the first block; AllNeighbours when the last of the
	// neighbours that cut it off did.
	FirstBlock, AllNeighbours time.Duration
	Graylisted                int // nodes that scored it under the graylist threshold
	FirstGraylist             time.Duration
	MinScore                  float64
	Coverage                  float64 // honest ads published in the window, to joined nodes
	P50, P99                  time.Duration
}

// Scenario timings (simulated clock).
const (
	settleMax  = 2 * time.Minute
	minTable   = 5
	meshWarmup = 5 * time.Second // heartbeats graft the meshes
	adRounds   = 3               // ad intervals in the measured window
	floodRound = 2               // ad intervals in the flood window
	drain      = 5 * time.Second // after the last ad, before checking the newest ones
	lookups    = 20
	// The spammer: 100 × the allowed rate (1 ad/s), one message in ten
	// malformed.
	floodRate      = 100
	floodMalformed = 10
	graylist       = -400 // p2p's gossipsub graylist threshold
)

// p99Bound is the ad propagation bound TestSim asserts. A path of h gossip hops
// costs h × (L_i + L_j)/2 ≤ h × 150 ms plus queueing; gossipsub's mesh (D = 6,
// flood publish to every topic peer) reaches a topic of k nodes in about
// log_5(k) + 1 hops, 4–5 at these sizes: ≤ 750 ms of links. Another 2 s covers
// a node outside the mesh that learns an ad from IHAVE gossip on the next
// heartbeat (1 s) plus the IWANT round trip.
const p99Bound = 3 * time.Second

// runScenario builds cfg's network in the current synctest bubble, runs the ads
// and lookups, checks the outcome (through t) and returns the figures.
func runScenario(t testing.TB, cfg Config) Figures {
	ctx := context.Background()
	cpu0 := cpuSeconds()
	simPhase.Store(phaseBuild)
	defer simPhase.Store(phaseDone)
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
	n.log.Info("sim: all started", "cpu_s", cpuSeconds()-cpu0)
	f.Settle = n.Settle(settleMax, minTable)
	f.CPUBuild = cpuSeconds() - cpu0
	var conns int64
	for _, nd := range n.Nodes {
		conns += nd.Traffic.Conns.Load()
	}
	t.Logf("built %d nodes: %v simulated, %.0f CPU s, %.1f connections opened per node", len(n.Nodes), time.Since(n.Start)+f.Settle, f.CPUBuild, float64(conns)/float64(len(n.Nodes)))
	if err := n.Provide(ctx); err != nil {
		t.Logf("provide: %v", err) // lookups below say whether it mattered
	}
	time.Sleep(meshWarmup)

	n.log.Info("sim: ads start", "cpu_s", cpuSeconds()-cpu0)
	before := snapshot(n)
	start := time.Now()
	cpu1 := cpuSeconds()
	simPhase.Store(phaseWindow)
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
	f.CPUPerNodeSec = (cpuSeconds() - cpu1) / float64(len(n.Nodes)) / f.Window.Seconds()
	var opened int64
	for _, nd := range n.Nodes {
		opened += nd.Traffic.Conns.Load()
	}
	f.ConnsPerNode = float64(opened) / float64(len(n.Nodes))
	simPhase.Store(phaseDone)
	if path := os.Getenv("SIM_HEAPPROFILE"); path != "" { // the live heap of the formed network
		writeHeapProfile(t, path)
	}

	n.log.Info("sim: flood starts", "cpu_s", cpuSeconds()-cpu0)
	floodStart := time.Now()
	sp := flood(t, n, rng, &f.Flood)
	n.StopAds() // the last ads propagate during drain
	n.StopFlood()
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

	// Propagation: every ad published in each window, to every joined node.
	f.Deliveries, f.Coverage, f.P50, f.P99, f.MaxDelay = propagation(n, start, floodStart)
	_, f.Flood.Coverage, f.Flood.P50, f.Flood.P99, _ = propagation(n, floodStart, time.Now())
	f.Flood.Delivered = 0
	for _, nd := range n.Nodes {
		if nd != sp.Node {
			f.Flood.Delivered += nd.Spam()
		}
	}

	// The newest ad of every worker reached every node joined to its model;
	// no node got an ad of a model it has not joined.
	for _, nd := range n.Nodes {
		f.Foreign += nd.Foreign()
		if nd.Spammer() {
			continue
		}
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

// cpuSeconds is the CPU time the process has used, user and system (the
// bubble's clock is fake).
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// peakRSS is the process's peak resident set in bytes.
func peakRSS() uint64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return uint64(ru.Maxrss) << 10 // KiB on Linux
}

// propagation measures the ads published in [from, to) to every node joined
// to their model (the spammer aside): deliveries, the share of (node, ad)
// pairs delivered, and the delays.
func propagation(n *Net, from, to time.Time) (count int, coverage float64, p50, p99, maxDelay time.Duration) {
	in := func(w *Node, seq uint64) bool {
		at := n.PublishedAt(w, seq)
		return !at.Before(from) && at.Before(to)
	}
	var delays []time.Duration
	for _, d := range n.Deliveries() {
		w, nd := n.Nodes[d.Worker], n.Nodes[d.Node]
		if !nd.Joined(w.Sells) || nd.Spammer() || !in(w, d.Seq) {
			continue
		}
		delays = append(delays, d.Delay)
	}
	var want int
	for _, w := range n.Workers {
		joined := 0
		for _, nd := range n.Nodes {
			if nd != w && nd.Joined(w.Sells) && !nd.Spammer() {
				joined++
			}
		}
		for seq := uint64(1); seq <= n.Published(w); seq++ {
			if in(w, seq) {
				want += joined
			}
		}
	}
	if want > 0 {
		coverage = float64(len(delays)) / float64(want)
	}
	if len(delays) > 0 {
		maxDelay = slices.Max(delays)
	}
	return len(delays), coverage, pct(delays, 50), pct(delays, 99), maxDelay
}

// flood runs the flood window: a node joined to the first model, neither
// bootstrap nor worker, publishes at floodRate ads a second for floodRound ad
// intervals while the workers go on; f gets what the others did about it.
func flood(t testing.TB, n *Net, rng *rand.Rand, f *Flood) *Spammer {
	model := n.Models[0]
	var cands []*Node
	for _, nd := range n.Nodes[n.Cfg.Bootstrap:] {
		if nd.Sells == "" && nd.Joined(model) {
			cands = append(cands, nd)
		}
	}
	if len(cands) == 0 {
		t.Fatalf("no node to flood %s from", model)
	}
	nd := cands[rng.IntN(len(cands))]
	id := nd.P2P.Host.ID()
	neighbours := nd.P2P.AdPeers(model) // those it can flood
	f.Neighbours = len(neighbours)
	sp, err := n.Flood(nd, model, floodRate, floodMalformed)
	if err != nil {
		t.Fatal(err)
	}
	start := sp.Start
	graylisted := map[int]time.Duration{}
	cutOff := map[peer.ID]time.Duration{}
	f.MinScore = 0
	for time.Since(start) < time.Duration(floodRound)*n.Cfg.adInterval() {
		time.Sleep(250 * time.Millisecond)
		// Cut off: blocked by the rate rule, disconnected, or graylisted
		// (gossipsub then drops all it sends before validation, so the rate
		// rule may never see enough to block it, and prunes it from the mesh
		// for its negative score). A neighbour counts from the first time it
		// was seen so: the invalid-message penalty halves every second,
		// so a graylisted spammer comes back over the line, and under it
		// again with its next ads.
		for _, q := range neighbours {
			if _, done := cutOff[q]; done {
				continue
			}
			o := n.byPeer[q]
			s, _ := o.P2P.Score(id)
			if !o.BlockedAt(id).IsZero() || o.P2P.Host.Network().Connectedness(id) != network.Connected || s < graylist {
				cutOff[q] = time.Since(start)
			}
		}
		for _, o := range n.Nodes {
			if o == nd {
				continue
			}
			if s, ok := o.P2P.Score(id); ok {
				f.MinScore = min(f.MinScore, s)
				if _, seen := graylisted[o.Index]; !seen && s < graylist {
					graylisted[o.Index] = time.Since(start)
				}
			}
		}
	}
	f.Window = time.Since(start)
	for _, q := range neighbours {
		o := n.byPeer[q]
		if d, done := cutOff[q]; done {
			f.CutOff++
			f.AllNeighbours = max(f.AllNeighbours, d)
			continue
		}
		s, _ := o.P2P.Score(id)
		if o.Direct(id) > allowed(f.Window) {
			f.Flooded++
		}
		t.Logf("spammer's topic neighbour %d: not cut off, got %d of its messages from it, scores it %.0f, %v",
			o.Index, o.Direct(id), s, o.P2P.Host.Network().Connectedness(id))
	}
	f.Published, f.Malformed = sp.Published.Load(), sp.Malformed.Load()
	f.PeersAtEnd = len(nd.P2P.Peers())
	f.Graylisted = len(graylisted)
	for _, d := range graylisted {
		if f.FirstGraylist == 0 || d < f.FirstGraylist {
			f.FirstGraylist = d
		}
	}
	for _, o := range n.Nodes {
		at := o.BlockedAt(id)
		if at.IsZero() {
			continue
		}
		f.Blockers++
		if d := at.Sub(start); f.FirstBlock == 0 || d < f.FirstBlock {
			f.FirstBlock = d
		}
		if slices.Contains(neighbours, o.P2P.Host.ID()) {
			f.NeighboursBlocked++
		}
	}
	f.BlockedFrac = float64(f.Blockers) / float64(len(n.Nodes)-1)
	return sp
}

// allowed is how many messages the ad rate rule (market/service) lets one
// origin deliver on one topic in d before it blocks it. The spammer's uplink (10–50 Mbit/s) cannot carry 100 ads/s to each of its
// topic peers: gossipsub drops what overflows a peer's queue, and a neighbour
// that got no more than this was not flooded.
func allowed(d time.Duration) int {
	return service.AdBurst + service.FloodExcess + int(d/service.AdRateEvery) + int(d/service.FloodRefill)
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

func (f Flood) String() string {
	return fmt.Sprintf("flood %v: spammer sent %d ads + %d malformed, %d delivered to others | topic neighbours=%d (cut it off %d, the last after %v; blocked it %d; flooded and did not %d) peers at end=%d | "+
		"blocked by %d nodes (%.3f), first after %v | graylisted by %d, first after %v, min score %.0f | honest ads: coverage=%.4f p50=%v p99=%v",
		f.Window, f.Published, f.Malformed, f.Delivered, f.Neighbours, f.CutOff, f.AllNeighbours, f.NeighboursBlocked, f.Flooded, f.PeersAtEnd,
		f.Blockers, f.BlockedFrac, f.FirstBlock, f.Graylisted, f.FirstGraylist, f.MinScore, f.Coverage, f.P50, f.P99)
}

func (f Figures) String() string {
	return fmt.Sprintf("nodes=%d workers=%d settle=%v | ads: deliveries=%d coverage=%.4f p50=%v p99=%v max=%v stale=%d foreign=%d | "+
		"lookups=%d found=%.2f p50=%v p99=%v hops=%.1f (max %d) queried=%.1f dht-bytes/lookup=%.0f | "+
		"gossip=%.0f B/s/node (%.0f per joined model) dht=%.0f B/s/node | peers=%.1f rt=%.1f models/node=%.2f | heap/node=%d KiB peak RSS=%d MiB wall=%v cpu: build=%.0fs window=%.2fms/node/s conns opened/node=%.0f | %v",
		f.Nodes, f.Workers, f.Settle, f.Deliveries, f.Coverage, f.P50, f.P99, f.MaxDelay, f.Stale, f.Foreign,
		f.Lookups, f.LookupFound, f.LookupP50, f.LookupP99, f.HopsMean, f.HopsMax, f.QueriedMean, f.DHTBytesPerLookup,
		f.GossipBps, f.GossipBpsPerModel, f.DHTBps, f.MeanPeers, f.MeanRTSize, f.MeanModelsJoined, f.HeapPerNode>>10, f.PeakRSS>>20, f.Wall, f.CPUBuild, f.CPUPerNodeSec*1e3, f.ConnsPerNode, f.Flood)
}

// simulate runs the scenario at cfg in a synctest bubble. Under the race
// detector the bubble runs on one P: concurrent bubble timers corrupt the race
// detector's state (golang/go#78156, the workaround go-libp2p-pubsub uses).
func simulate(t *testing.T, cfg Config) Figures {
	if raceEnabled {
		prev := runtime.GOMAXPROCS(1)
		defer runtime.GOMAXPROCS(prev)
	}
	if os.Getenv("SIM_VERBOSE") != "" { // progress on stderr
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
		cfg.NodeLevel = slog.LevelWarn
	}
	// Collect at 1.5× the live heap (SIM_GOGC, default 50), within
	// SIM_MEMLIMIT GiB (default 21, of this machine's 24). The connections
	// that the nodes' start opens and the connection manager closes leave
	// the heap's spans 2–3× fuller than its live bytes, so headroom costs
	// more than it saves: at 100 nodes, 50 rather than 200 cut the peak
	// resident set from 2.4 to 1.6 GB for about the same CPU.
	limit := int64(21 << 30)
	if s := os.Getenv("SIM_MEMLIMIT"); s != "" {
		gib, err := strconv.Atoi(s)
		if err != nil || gib <= 0 {
			t.Fatalf("SIM_MEMLIMIT %q: want a number of GiB", s)
		}
		limit = int64(gib) << 30
	}
	gcPercent := 50
	if s := os.Getenv("SIM_GOGC"); s != "" { // for trying by hand
		var err error
		if gcPercent, err = strconv.Atoi(s); err != nil {
			t.Fatalf("SIM_GOGC %q: %v", s, err)
		}
	}
	defer debug.SetGCPercent(debug.SetGCPercent(gcPercent))
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(limit))
	if s := os.Getenv("SIM_START_EVERY"); s != "" { // for trying arrival rates by hand
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("SIM_START_EVERY: %v", err)
		}
		cfg.StartEvery = d
	}
	if s := os.Getenv("SIM_CONNS"); s != "" { // low,high,grace: for trying connection limits by hand
		var grace string
		_, err := fmt.Sscanf(strings.ReplaceAll(s, ",", " "), "%d %d %s", &cfg.ConnsLow, &cfg.ConnsHigh, &grace)
		if err == nil {
			cfg.ConnsGrace, err = time.ParseDuration(grace)
		}
		if err != nil {
			t.Fatalf("SIM_CONNS %q: want low,high,grace: %v", s, err)
		}
	}
	var f Figures
	if path := os.Getenv("SIM_CPUPROFILE"); path != "" {
		stop := profilePhases(t, path)
		defer stop()
	}
	wall := time.Now()
	synctest.Test(t, func(t *testing.T) { f = runScenario(t, cfg) })
	f.Wall = time.Since(wall)
	f.PeakRSS = peakRSS()
	return f
}

// writeHeapProfile writes the live heap to path.
func writeHeapProfile(t testing.TB, path string) {
	f, err := os.Create(path)
	if err != nil {
		t.Errorf("heap profile: %v", err)
		return
	}
	defer f.Close()
	runtime.GC()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		t.Errorf("heap profile: %v", err)
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	t.Logf("heap in use %d MiB (allocated %d MiB, %d objects), stacks %d MiB, goroutines %d, sys %d MiB",
		ms.HeapInuse>>20, ms.HeapAlloc>>20, ms.HeapObjects, ms.StackInuse>>20, runtime.NumGoroutine(), ms.Sys>>20)
	g, err := os.Create(path + ".goroutine")
	if err != nil {
		t.Errorf("goroutine profile: %v", err)
		return
	}
	defer g.Close()
	if err := pprof.Lookup("goroutine").WriteTo(g, 0); err != nil {
		t.Errorf("goroutine profile: %v", err)
	}
}

// The scenario's phases, for SIM_CPUPROFILE.
const (
	phaseNone = iota
	phaseBuild
	phaseWindow
	phaseDone
)

var simPhase atomic.Int32

// profilePhases writes a CPU profile of each phase of the scenario (the
// network's build and settling; the ads window) to path.build and
// path.window. It watches simPhase from outside the bubble: the profiler's
// goroutine would keep the bubble from ever idling.
func profilePhases(t testing.TB, path string) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		cur := int32(phaseNone)
		var f *os.File
		end := func() {
			if f != nil {
				pprof.StopCPUProfile()
				f.Close()
				f = nil
			}
		}
		defer end()
		for {
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
			p := simPhase.Load()
			if p == cur {
				continue
			}
			end()
			cur = p
			name := map[int32]string{phaseBuild: ".build", phaseWindow: ".window"}[p]
			if name == "" {
				continue
			}
			var err error
			if f, err = os.Create(path + name); err != nil {
				t.Errorf("cpu profile: %v", err)
				continue
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				t.Errorf("cpu profile: %v", err)
				f.Close()
				f = nil
			}
		}
	}()
	return func() { close(done); <-finished }
}

// TestSim runs the simulated internet at simNodes (100; 30 under the race
// detector) or SIM_NODES: ads reach every node joined to their model within
// p99Bound and no other node, provider lookups from random nodes find every
// worker, and a peer flooding a model's topic at 100 times the ad rate is cut
// off by its neighbours while the honest ads still get through.
func TestSim(t *testing.T) {
	if testing.Short() {
		t.Skip("the simulated internet takes minutes")
	}
	nodes := simNodes
	if s := os.Getenv("SIM_NODES"); s != "" { // for trying sizes by hand
		nodes, _ = strconv.Atoi(s)
	}
	f := simulate(t, Config{Nodes: nodes, Seed: 1, RateLimit: true})
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
	// The flood: honest ads get through as before, and the spammer is shut
	// out by the peers it floods.
	fl := f.Flood
	if fl.Coverage < 0.99 || fl.P99 > p99Bound {
		t.Errorf("during the flood, honest ads reached %.4f of (joined node, ad) pairs, p99 %v; want ≥ 0.99 within %v", fl.Coverage, fl.P99, p99Bound)
	}
	if fl.CutOff == 0 || fl.Flooded > 0 {
		t.Errorf("of the spammer's %d topic neighbours, %d cut it off (%d blocked it) and %d got more from it than the rule allows but did not", fl.Neighbours, fl.CutOff, fl.NeighboursBlocked, fl.Flooded)
	}
	if fl.MinScore >= graylist {
		t.Errorf("the spammer's lowest gossipsub score %.0f; want under the graylist threshold %d", fl.MinScore, graylist)
	}
}
