package sim

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkSim reports the simulated internet's figures at 50 nodes (under a
// minute here, for CI's single run) or at the sizes listed in SIM_BENCH_SIZES
// (e.g. "200,300,1000"). Each size runs in a child process (this test binary
// re-executed on TestSimFigures), so that its heap is its own and a size that
// runs out of memory fails alone; a size that has not finished within
// SIM_BENCH_BUDGET (a duration, default 20m) is killed and skipped, and the
// sizes after it still run.
func BenchmarkSim(b *testing.B) {
	sizes := []int{50}
	budget := 20 * time.Minute
	if s := os.Getenv("SIM_BENCH_BUDGET"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			b.Fatalf("SIM_BENCH_BUDGET: %v", err)
		}
		budget = d
	}
	if s := os.Getenv("SIM_BENCH_SIZES"); s != "" {
		sizes = nil
		for f := range strings.SplitSeq(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil {
				b.Fatalf("SIM_BENCH_SIZES: %v", err)
			}
			sizes = append(sizes, n)
		}
	}
	for _, n := range sizes {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			var f Figures
			for b.Loop() {
				f = figuresOf(b, n, budget)
			}
			b.ReportMetric(f.P50.Seconds()*1e3, "ad-p50-ms")
			b.ReportMetric(f.P99.Seconds()*1e3, "ad-p99-ms")
			b.ReportMetric(f.Coverage, "ad-coverage")
			b.ReportMetric(f.LookupP50.Seconds()*1e3, "lookup-p50-ms")
			b.ReportMetric(f.LookupP99.Seconds()*1e3, "lookup-p99-ms")
			b.ReportMetric(f.HopsMean, "lookup-hops")
			b.ReportMetric(f.QueriedMean, "lookup-peers")
			b.ReportMetric(f.DHTBytesPerLookup, "lookup-B")
			b.ReportMetric(f.GossipBps, "gossip-B/s/node")
			b.ReportMetric(f.GossipBpsPerModel, "gossip-B/s/node/model")
			b.ReportMetric(f.DHTBps, "dht-B/s/node")
			b.ReportMetric(float64(f.HeapPerNode)/1024, "heap-KiB/node")
			b.ReportMetric(float64(f.PeakRSS)/float64(n)/(1<<20), "peak-rss-MiB/node")
			b.ReportMetric(f.MeanPeers, "peers/node")
			b.ReportMetric(f.CPUPerNodeSec*1e3, "cpu-ms/node/s")
			b.ReportMetric(f.Flood.Coverage, "flood-ad-coverage")
			b.ReportMetric(f.Flood.P99.Seconds()*1e3, "flood-ad-p99-ms")
			b.ReportMetric(f.Flood.AllNeighbours.Seconds()*1e3, "flood-cut-off-ms")
			b.ReportMetric(f.Wall.Seconds(), "wall-s")
			b.Logf("%v", f)
		})
	}
}

// figuresOf runs the scenario at n nodes in a child process and returns its figures.
func figuresOf(b *testing.B, n int, budget time.Duration) Figures {
	out := filepath.Join(b.TempDir(), "figures.json")
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestSimFigures$", "-test.timeout=0", "-test.count=1")
	cmd.Env = append(os.Environ(), "SIM_FIGURES_NODES="+strconv.Itoa(n), "SIM_FIGURES_OUT="+out)
	start := time.Now()
	msg, runErr := cmd.CombinedOutput()
	if ctx.Err() != nil {
		b.Skipf("simulation of %d nodes did not finish within %v (SIM_BENCH_BUDGET)\n%s", n, budget, tail(msg, 2000))
	}
	data, err := os.ReadFile(out)
	if err != nil {
		b.Fatalf("simulation of %d nodes: %v after %v\n%s", n, runErr, time.Since(start), tail(msg, 4000))
	}
	if runErr != nil { // figures written, checks failed: report both
		b.Errorf("simulation of %d nodes: %v\n%s", n, runErr, tail(msg, 4000))
	}
	var f Figures
	if err := json.Unmarshal(data, &f); err != nil {
		b.Fatal(err)
	}
	return f
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// TestSimFigures is BenchmarkSim's child: it runs when SIM_FIGURES_NODES is set
// and writes the figures to SIM_FIGURES_OUT.
func TestSimFigures(t *testing.T) {
	s := os.Getenv("SIM_FIGURES_NODES")
	if s == "" {
		t.Skip("run by BenchmarkSim")
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	f := simulate(t, Config{Nodes: n, Seed: 1, RateLimit: true})
	t.Log(f)
	data, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(os.Getenv("SIM_FIGURES_OUT"), data, 0o644); err != nil {
		t.Fatal(err)
	}
}
