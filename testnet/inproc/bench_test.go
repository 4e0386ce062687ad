package inproc

import (
	"context"
	"fmt"
	"math/rand/v2"
	goruntime "runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// heapMB is the live heap after a full collection.
func heapMB() float64 {
	goruntime.GC()
	var ms goruntime.MemStats
	goruntime.ReadMemStats(&ms)
	return float64(ms.HeapAlloc) / (1 << 20)
}

// BenchmarkGossip measures how long one ad takes to reach 99% of the other nodes
// over mocknet links of 20 ms, and the memory each in-process node holds.
func BenchmarkGossip(b *testing.B) {
	for _, n := range []int{100, 200} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			before := heapMB()
			tn := New(b, Nodes(n), Latency(20*time.Millisecond))
			perNode := (heapMB() - before) / float64(n)
			// Let a few gossipsub heartbeats (1 s) graft the meshes: the figure is
			// the steady state, not the first second of a new network.
			time.Sleep(3 * time.Second)
			var mu sync.Mutex
			arrivals := map[string][]time.Time{}
			for _, m := range tn.Nodes {
				if err := m.P2P.JoinModel(Model); err != nil {
					b.Fatal(err)
				}
				m.P2P.SetAdHandler(func(_ string, _ peer.ID, data []byte) {
					mu.Lock()
					arrivals[string(data)] = append(arrivals[string(data)], time.Now())
					mu.Unlock()
				})
			}
			want := (n - 1) * 99 / 100
			rng := rand.New(rand.NewPCG(7, 7))
			var total time.Duration
			i := 0
			b.ResetTimer()
			for b.Loop() {
				i++
				src := tn.Nodes[rng.IntN(n)]
				ad := testAd(b, src) // a real ad: every node's market client validates them
				msg := string(ad)
				start := time.Now()
				if err := src.P2P.PublishAd(context.Background(), Model, ad); err != nil {
					b.Fatal(err)
				}
				tn.WaitFor(30*time.Second, fmt.Sprintf("ad %d at 99%% of nodes", i), func() bool {
					mu.Lock()
					defer mu.Unlock()
					return len(arrivals[msg]) >= want+1 // +1: the publisher's own copy
				})
				mu.Lock()
				ts := slices.Clone(arrivals[msg])
				mu.Unlock()
				slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
				total += ts[want].Sub(start)
			}
			b.ReportMetric(float64(total.Microseconds())/1000/float64(i), "ms-to-99%")
			b.ReportMetric(perNode, "MB/node") // after the loop: ResetTimer drops earlier metrics
		})
	}
}

// BenchmarkFindProviders measures one DHT provider lookup at 200 mocknet nodes
// with 20 ms links, each lookup from a different node.
func BenchmarkFindProviders(b *testing.B) {
	const n = 200
	tn := New(b, Nodes(n), Latency(20*time.Millisecond))
	ctx := context.Background()
	provider := tn.Nodes[0]
	if err := provider.P2P.Provide(ctx, "stories260K"); err != nil {
		b.Fatal(err)
	}
	var total time.Duration
	i := 0
	b.ResetTimer()
	for b.Loop() {
		i++
		m := tn.Nodes[1+i%(n-1)]
		start := time.Now()
		ais, err := m.P2P.FindProviders(ctx, "stories260K", 1)
		if err != nil || len(ais) != 1 {
			b.Fatalf("node %d: FindProviders = %v, %v", m.Index, ais, err)
		}
		total += time.Since(start)
	}
	b.ReportMetric(float64(total.Microseconds())/1000/float64(i), "ms/lookup")
}
