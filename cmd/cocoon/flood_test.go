package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/cocoon-network/cocoon/client/local"
	"github.com/cocoon-network/cocoon/market/service"
	"github.com/cocoon-network/cocoon/p2p"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
	"github.com/cocoon-network/cocoon/testnet"
)

// TestFloodedPeerIsCutOff: on a testnet of real processes with the default
// configuration (node0 the bootstrap and node1 clients, node2 an honest
// worker), a peer in the test process that speaks the protocol but serves
// nothing connects to every node and publishes correctly signed, otherwise
// valid ads at 100 a second, 100 times the allowed rate (service.AdRateEvery),
// for 10 s: for a made-up model on that model's ads topic (which every node
// joined, as a request for the model makes it), and for the served model on
// its topic. Every node must block it: its connection to each node closes, a
// fresh dial to any of them does not hold, no node lists it as a peer, and
// once a node has cut it off the made-up model is in that node's /v1/models at
// no look (they run every few milliseconds from the first ad to the end).
// Meanwhile the honest worker's ads keep arriving and both clients buy
// completions from it; the books balance (issue 14, must-show 4, flood part).
// The time from the first ad to each node's cut is logged, not asserted: it
// was over a second while the flood line sat past gossipsub's graylist
// (market/service/adrate.go), about 0.1 s since.
func TestFloodedPeerIsCutOff(t *testing.T) {
	const (
		model = "stories260K"
		fake  = "flood/made-up"
		rate  = 100 // ads a second on each topic: 100 × the allowed 1 per AdRateEvery
		spell = 10 * time.Second
	)
	if every := time.Second / rate; service.AdRateEvery/every != 100 {
		t.Fatalf("the flood is %d× the allowed rate; the issue asks for 100×", service.AdRateEvery/every)
	}
	c := startTestnet(t, 3, 1)
	nodes := c.Nodes
	var clients []*testnet.Proc
	var worker *testnet.Proc
	for _, p := range nodes {
		if p.Role == "client" {
			clients = append(clients, p)
		} else {
			worker = p
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })

	// The flooder: a sybil that speaks no job protocol, on the served model's
	// ads topic and the made-up model's.
	f := newSybil(t, ctx, sybilNoJobs, p2p.AdTopic(model))
	fakeTop, err := f.ps.Join(p2p.AdTopic(fake))
	if err != nil {
		t.Fatal(err)
	}
	// When each node's last connection to the flooder closed.
	var (
		mu  sync.Mutex
		cut = map[peer.ID]time.Time{}
	)
	f.h.Network().Notify(&network.NotifyBundle{DisconnectedF: func(n network.Network, conn network.Conn) {
		p := conn.RemotePeer()
		if n.Connectedness(p) == network.Connected {
			return
		}
		mu.Lock()
		if _, ok := cut[p]; !ok {
			cut[p] = time.Now()
		}
		mu.Unlock()
	}})
	addrs := map[*testnet.Proc]peer.AddrInfo{}
	for _, p := range nodes {
		ai, err := peer.AddrInfoFromString(procTCPAddr(t, ctx, p))
		if err != nil {
			t.Fatal(err)
		}
		addrs[p] = *ai
		if err := f.h.Connect(ctx, *ai); err != nil {
			t.Fatalf("flooder: connect to %s: %v", p.Name, err)
		}
	}

	// Every node joins the made-up model's ads topic, as a request for the
	// model makes it: the ask is the first thing a request does, so the
	// request (which no one can answer) need not finish.
	for _, p := range nodes {
		rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
		n := 1
		_, _, err := p.API().ChatCompletion(rctx, openaiapi.ChatCompletionRequest{Model: fake, MaxTokens: &n,
			Messages: []openaiapi.ChatMessage{{Role: "user", Content: openaiapi.Content("hello")}}})
		rcancel()
		if err == nil {
			t.Fatalf("%s answered a request for %s, which nobody serves", p.Name, fake)
		}
	}
	// The flood must reach every node on both topics, or it proves nothing.
	ids := make([]peer.ID, len(nodes))
	for i, p := range nodes {
		ids[i] = addrs[p].ID
	}
	waitFor(t, 30*time.Second, "every node in the flooder's view of both ads topics", func() bool {
		for _, id := range ids {
			if !slices.Contains(fakeTop.ListPeers(), id) || !slices.Contains(f.top.ListPeers(), id) {
				return false
			}
		}
		return true
	})
	honest := f.honestAd(t, ctx, []string{worker.PeerID})
	seq0 := map[string]uint64{}
	for _, p := range clients {
		seq0[p.Name] = adSeq(t, ctx, p, worker.PeerID)
	}

	// Every look at each node's /v1/models, from just before the first ad
	// until the end: when it began and whether it listed the made-up model.
	type look struct {
		at     time.Time
		listed bool
	}
	var (
		lmu   sync.Mutex
		looks = map[*testnet.Proc][]look{}
	)
	start := time.Now()
	wg.Go(func() {
		for ctx.Err() == nil {
			for _, p := range nodes {
				at := time.Now()
				ms, err := p.API().Models(ctx)
				if err != nil {
					continue // ctx ended
				}
				l := look{at, slices.ContainsFunc(ms, func(m openaiapi.Model) bool { return m.ID == fake })}
				lmu.Lock()
				looks[p] = append(looks[p], l)
				lmu.Unlock()
			}
			time.Sleep(10 * time.Millisecond)
		}
	})

	// The flood.
	mk := func(id string, seq uint64, now time.Time) []byte {
		ad := *honest
		ad.Peer, ad.Seq, ad.IssuedAt = f.h.ID(), seq, now
		ad.Models = slices.Clone(honest.Models)
		for i := range ad.Models {
			ad.Models[i].ID = id
		}
		b, err := ad.Encode()
		if err != nil {
			t.Errorf("encode ad: %v", err)
		}
		return b
	}
	var sent atomic.Int64
	flooding := make(chan struct{})
	wg.Go(func() {
		defer close(flooding)
		tick := time.NewTicker(time.Second / rate)
		defer tick.Stop()
		seq := uint64(start.UnixMicro())
		for time.Since(start) < spell && ctx.Err() == nil {
			now := time.Now()
			// A new ad on each topic: a repeated seq would be the same ad.
			seq = max(seq+1, uint64(now.UnixMicro()))
			if err := fakeTop.Publish(ctx, mk(fake, seq, now)); err == nil {
				sent.Add(1)
			}
			seq++
			if err := f.top.Publish(ctx, mk(model, seq, now)); err == nil {
				sent.Add(1)
			}
			select {
			case <-ctx.Done():
			case <-tick.C:
			}
		}
	})

	// While the flood goes on, a client buys from the honest worker.
	var cost uint64
	cost += buyHonest(t, ctx, clients[1], worker.PeerID)

	// Every node cuts the flooder off.
	waitFor(t, 20*time.Second, "every node to disconnect the flooder", func() bool {
		for _, id := range ids {
			if f.h.Network().Connectedness(id) == network.Connected {
				return false
			}
		}
		return true
	})
	<-flooding
	floodFor := time.Since(start)
	mu.Lock()
	cutAt := maps.Clone(cut)
	mu.Unlock()
	var lines []string
	for _, p := range nodes {
		at, ok := cutAt[addrs[p].ID]
		if !ok {
			t.Errorf("%s: no disconnect recorded", p.Name)
			continue
		}
		lines = append(lines, fmt.Sprintf("%s %s", p.Name, at.Sub(start).Round(time.Millisecond)))
	}
	t.Logf("the flooder sent %d ads in %s (%d a second on each of 2 topics, %d× the allowed rate); cut off after its first ad by %s",
		sent.Load(), floodFor.Round(time.Millisecond), rate, service.AdRateEvery/(time.Second/rate), strings.Join(lines, ", "))

	// It cannot come back: a fresh dial is refused or cut at once, and no
	// node lists it.
	for _, p := range nodes {
		dctx, dcancel := context.WithTimeout(network.WithForceDirectDial(ctx, "flood test"), 10*time.Second)
		err := f.h.Connect(dctx, addrs[p])
		dcancel()
		waitFor(t, 10*time.Second, p.Name+" to refuse the flooder's fresh dial", func() bool {
			return f.h.Network().Connectedness(addrs[p].ID) != network.Connected
		})
		t.Logf("%s: the flooder's fresh dial: %v", p.Name, errOrHeld(err))
	}
	for _, p := range nodes {
		peers, err := p.API().Peers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range peers {
			if q.ID == f.h.ID().String() {
				t.Errorf("%s still lists the flooder as a peer", p.Name)
			}
		}
	}

	// The honest worker's ads still come, and both clients buy from it.
	for _, p := range clients {
		waitFor(t, 30*time.Second, p.Name+" to get a new ad of the honest worker", func() bool {
			return adSeq(t, ctx, p, worker.PeerID) > seq0[p.Name]
		})
		cost += buyHonest(t, ctx, p, worker.PeerID)
	}
	for _, p := range nodes {
		ms, err := p.API().Models(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(ms, func(m openaiapi.Model) bool { return m.ID == model && local.Workers(m) == 1 }) {
			t.Errorf("%s's /v1/models after the flood: %+v; want %s with the honest worker only", p.Name, ms, model)
		}
	}
	cancel()
	wg.Wait()
	// A new peer's first ads are in the book, as an honest worker's would be,
	// until the flood line (the FloodExcess-th ad beyond its burst): a look may
	// catch the made-up model in that window. None may once the node has cut
	// the flooder off (with a second's grace for the flooder to hear of it
	// before the node has emptied its book), nor any at the end.
	for _, p := range nodes {
		off := cutAt[addrs[p].ID]
		var seen int
		var first, last time.Duration
		for _, l := range looks[p] {
			if !l.listed {
				continue
			}
			if seen == 0 {
				first = l.at.Sub(start)
			}
			seen++
			last = l.at.Sub(start)
			if l.at.After(off.Add(time.Second)) {
				t.Errorf("%s listed %s in a look begun %s after the first ad, %s after it cut the flooder off",
					p.Name, fake, last.Round(time.Millisecond), l.at.Sub(off).Round(time.Millisecond))
			}
		}
		n := len(looks[p])
		if n == 0 || !looks[p][n-1].at.After(off.Add(time.Second)) {
			t.Errorf("%s: no look at /v1/models after it cut the flooder off", p.Name)
		}
		if n > 0 && looks[p][n-1].listed {
			t.Errorf("%s lists %s at its last look", p.Name, fake)
		}
		if seen > 0 {
			t.Logf("%s: %d looks at /v1/models; %d listed %s, begun %s to %s after the first ad, before the flood line",
				p.Name, n, seen, fake, first.Round(time.Millisecond), last.Round(time.Millisecond))
		} else {
			t.Logf("%s: %d looks at /v1/models; none listed %s", p.Name, n, fake)
		}
	}
	checkBooks(t, c, cost)
}

// adSeq is the sequence number of worker's ad in p's book (0: none).
func adSeq(t *testing.T, ctx context.Context, p *testnet.Proc, worker string) uint64 {
	t.Helper()
	ov, err := p.API().Overview(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range ov.Ads {
		if row.Worker == worker {
			return row.Seq
		}
	}
	return 0
}

// buyHonest buys a chat completion through p's gateway, which the honest
// worker must answer within a generous deadline, and returns its cost.
func buyHonest(t *testing.T, ctx context.Context, p *testnet.Proc, worker string) uint64 {
	t.Helper()
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	greedy, n := 0.0, 12
	cc, by, err := p.API().ChatCompletion(rctx, openaiapi.ChatCompletionRequest{Model: "stories260K", MaxTokens: &n, Temperature: &greedy,
		Messages: []openaiapi.ChatMessage{{Role: "user", Content: openaiapi.Content("Tell me a story")}}})
	if err != nil {
		t.Fatalf("%s: request failed: %v", p.Name, err)
	}
	if by.Worker != worker {
		t.Fatalf("%s: answered by %q; want the honest worker %s", p.Name, by.Worker, worker)
	}
	if len(cc.Choices) == 0 || cc.Choices[0].Message.Content == "" || cc.Usage == nil || cc.Usage.CostNanoTON == nil || *cc.Usage.CostNanoTON == 0 {
		t.Fatalf("%s: no text or cost: %+v", p.Name, cc)
	}
	return *cc.Usage.CostNanoTON
}

// errOrHeld describes a dial's outcome.
func errOrHeld(err error) string {
	if err != nil {
		return "refused: " + err.Error()
	}
	return "connected, then cut"
}
