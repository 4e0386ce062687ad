package chaos

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/internal/testmodel"
	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/testnet"
)

// bin is the cocoon binary: $COCOON_BIN, or built once for this package.
var bin string

func TestMain(m *testing.M) {
	bin = os.Getenv("COCOON_BIN")
	var dir string
	if bin == "" {
		var err error
		if dir, err = os.MkdirTemp("", "cocoon-chaos"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		bin = filepath.Join(dir, "cocoon")
		if out, err := exec.Command("go", "build", "-o", bin, "github.com/cocoon-network/cocoon/cmd/cocoon").CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build cocoon: %v\n%s", err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	if dir != "" {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

var price = market.Price{Prompt: uint64(testnet.LaunchPrice.Prompt), Completion: uint64(testnet.LaunchPrice.Completion)}

// TestPlanReplays: the same seed draws the same schedule and requests, another
// seed another, and the faults land inside the run in order.
func TestPlanReplays(t *testing.T) {
	cfg := Config{Seed: 42, Workers: 4, Requests: 1000, WorkerKills: 2, ClientKills: 1, WorkerPauses: 2, LedgerKills: 1}
	a, b := NewPlan(cfg), NewPlan(cfg)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("NewPlan(seed 42) twice: plans differ")
	}
	cfg.Seed = 43
	if c := NewPlan(cfg); reflect.DeepEqual(a.Faults, c.Faults) && reflect.DeepEqual(a.Requests, c.Requests) {
		t.Fatal("seeds 42 and 43 drew the same plan")
	}
	if len(a.Faults) != 6 {
		t.Fatalf("%d faults; want 6", len(a.Faults))
	}
	killed := map[string]bool{}
	last := 0
	for _, f := range a.Faults {
		if f.At < last || f.At < 100 || f.At >= 900 {
			t.Errorf("fault %s out of order or outside the run's middle", f)
		}
		last = f.At
		if f.Kind == KillWorker {
			killed[f.Target] = true
		}
	}
	if len(killed) != 2 {
		t.Errorf("worker kills hit %v; want 2 distinct workers", killed)
	}
}

// TestPanics finds a crash in a log and nothing in a clean one.
func TestPanics(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		log  string
		want int
	}{
		{"time=x level=INFO msg=\"job done\" note=\"no panic: here\"\n", 0},
		{"level=INFO msg=up\npanic: runtime error: index out of range\n\ngoroutine 7 [running]:\nmain.main()\n", 2},
		{"fatal error: concurrent map writes\n", 1},
	} {
		p := filepath.Join(dir, "log")
		os.WriteFile(p, []byte(tc.log), 0o644)
		if got := Panics(p); len(got) != tc.want {
			t.Errorf("Panics(%q) = %q; want %d lines", tc.log, got, tc.want)
		}
	}
}

// run runs cfg with the seed from CHAOS_SEED (or a fresh one), prints the
// seed first and the report last, and fails on any violation.
func run(t *testing.T, cfg Config, minCompletion float64) *Report {
	seed, err := SeedFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("chaos seed %d (replay: CHAOS_SEED=%d)", seed, seed)
	if os.Getenv("COCOON_LLAMA_LIB") == "" {
		t.Setenv("COCOON_LLAMA_LIB", testmodel.LibDir())
	}
	cfg.Seed, cfg.Bin, cfg.Model = seed, bin, testmodel.ModelPath(t)
	cfg.Dir = t.TempDir()
	if d := os.Getenv("CHAOS_DIR"); d != "" { // keep the logs and stores
		cfg.Dir = filepath.Join(d, fmt.Sprint(seed))
	}
	cfg.Logf = t.Logf
	h, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Cluster.Stop() })
	rep := Check(h, price, minCompletion)
	t.Logf("report:\n%s", rep)
	if !rep.OK() {
		t.Errorf("seed %d: %d violations (replay: CHAOS_SEED=%d; logs in %s)", seed, len(rep.Violations), seed, cfg.Dir)
	}
	return rep
}

// TestChaosShort is the run `make test` does: 100 requests through 2 clients
// to 2 workers while one worker is killed and restarted, one client is killed
// and restarted and a worker is paused.
func TestChaosShort(t *testing.T) {
	run(t, Config{Workers: 2, Clients: 2, Requests: 100, Concurrency: 4, MaxTokens: 16,
		WorkerKills: 1, ClientKills: 1, WorkerPauses: 1}, 0.99)
}

// TestChaosLong is must-show 3 (`make chaos`, CHAOS_LONG=1): 1,000 requests
// across 4 workers with 30% of the workers (rounded up: 2) killed and
// restarted, a client and the ledger killed and restarted, and two pauses;
// ≥ 99.9% of the requests not aborted by the client kill complete.
func TestChaosLong(t *testing.T) {
	if os.Getenv("CHAOS_LONG") == "" {
		t.Skip("the long chaos run: set CHAOS_LONG=1 (make chaos)")
	}
	start := time.Now()
	run(t, Config{Workers: 4, Clients: 2, Requests: 1000, Concurrency: 6, MaxTokens: 16,
		WorkerKills: 2, ClientKills: 1, WorkerPauses: 2, LedgerKills: 1}, 0.999)
	t.Logf("wall %s", time.Since(start).Round(time.Second))
}
