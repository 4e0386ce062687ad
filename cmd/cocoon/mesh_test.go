package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/client/local"
	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/node"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
	"github.com/cocoon-network/cocoon/testnet"
)

// TestMeshDefaultConfig runs five real nodes on 127.0.0.1 with the default
// configuration (DHT mode auto, no mDNS, node0 the only --bootstrap the others
// are given): node0–node2 clients, node3 and node4 workers serving the test
// model. Every node must list every other as a connected peer within 30 s of
// the last start; after kill -9 of node0 the four others must stay connected
// to each other, node1 buys a streamed chat completion from a worker, a fresh
// node bootstrapped from a survivor sees both workers' ads, and the books
// balance. A bootstrap node is an entry point, not the centre of the network.
func TestMeshDefaultConfig(t *testing.T) {
	const nodes, workers = 5, 2
	ctx := context.Background()
	progress := &stamped{}
	c, err := testnet.Launch(ctx, testnet.LaunchConfig{Bin: bin, Dir: t.TempDir(), Nodes: nodes, Workers: workers,
		Model: testModel(t), Progress: progress})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })
	firstUp, lastUp := progress.upTimes()
	launched := time.Now()
	t.Logf("%d nodes started within %s; every client saw every worker's ad %s after the last start",
		nodes, lastUp.Sub(firstUp).Round(time.Millisecond), launched.Sub(lastUp).Round(time.Millisecond))

	boot, buyer := c.Nodes[0], c.Nodes[1]
	if boot.Role != "client" || buyer.Role != "client" {
		t.Fatalf("node0 is a %s and node1 a %s; the test kills node0 and buys from node1, both clients", boot.Role, buyer.Role)
	}

	// The full mesh: every node lists every other.
	waitMesh(t, ctx, c.Nodes, nil, lastUp.Add(30*time.Second), "every node to list every other as a peer")
	meshed := time.Since(lastUp)
	t.Logf("full mesh of %d nodes %s after the last node started (%s after the first)", nodes,
		meshed.Round(time.Millisecond), time.Since(firstUp).Round(time.Millisecond))

	// kill -9 the bootstrap node; the others must stay connected to each other
	// (sampled throughout) and drop it.
	if err := syscall.Kill(boot.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	waitFor(t, 5*time.Second, "the killed bootstrap node to be gone", func() bool { return !boot.Alive() })
	survivors := c.Nodes[1:]
	settled := waitMesh(t, ctx, survivors, []*testnet.Proc{boot}, killed.Add(25*time.Second),
		"the survivors to drop the killed bootstrap node and still list each other")
	t.Logf("survivors settled (bootstrap dropped everywhere, mesh of %d intact) %s after the kill",
		len(survivors), settled.Sub(killed).Round(time.Millisecond))
	// And still connected a moment later: nothing was held up by the dead node.
	time.Sleep(2 * time.Second)
	waitMesh(t, ctx, survivors, []*testnet.Proc{boot}, time.Now(), "the survivors to still list each other")

	// A client that never was the bootstrap node buys a streamed answer.
	price := market.Price{Prompt: uint64(testnet.LaunchPrice.Prompt), Completion: uint64(testnet.LaunchPrice.Completion)}
	text, usage, by := buyStreamed(t, ctx, buyer, 24)
	var workerIDs []string
	for _, p := range c.Nodes {
		if p.Role == "worker" {
			workerIDs = append(workerIDs, p.PeerID)
		}
	}
	if !slices.Contains(workerIDs, by.Worker) || !strings.Contains(by.TEE, "sim") {
		t.Fatalf("answered by %q (TEE %q); want one of the sim workers %v", by.Worker, by.TEE, workerIDs)
	}
	if strings.TrimSpace(text) == "" || usage == nil || usage.CompletionTokens != 24 || usage.CostNanoTON == nil {
		t.Fatalf("streamed answer %q, usage %+v; want text, 24 completion tokens and a cost", text, usage)
	}
	cost, err := market.Cost(price, uint64(usage.PromptTokens), uint64(usage.CompletionTokens))
	if err != nil || *usage.CostNanoTON != cost {
		t.Fatalf("cost_nanoton %d; the price times the tokens is %d (%v)", *usage.CostNanoTON, cost, err)
	}
	t.Logf("after the kill node1 bought %q from %s: %d+%d tokens, %d nanoTON", text, by.Worker,
		usage.PromptTokens, usage.CompletionTokens, cost)

	// Nodes started after the bootstrap died, given a survivor as their only
	// bootstrap peer, join the network: one that follows the model's ads
	// (market.models) sees both workers' ads; one that follows none learns
	// the model's name from its first peers (it joins the model's ads on its
	// first request for it).
	fresh := func(models []string) (*proc, *local.Client) {
		dir := initDir(t)
		cfg, err := node.Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Enclave.Policy.AllowSim = true // it buys, as the testnet's clients do, from sim workers
		cfg.Enclave.Policy.AllowedKinds = []tee.Kind{tee.Sim}
		cfg.Market.Models = models
		if err := node.Save(dir, cfg); err != nil {
			t.Fatal(err)
		}
		p := startNode(t, dir, "--bootstrap", procTCPAddr(t, ctx, buyer))
		api, err := local.FromDatadir(dir)
		if err != nil {
			t.Fatal(err)
		}
		return p, api
	}
	waitModels := func(what string, p *proc, api *local.Client, ok func(openaiapi.Model) bool) {
		start := time.Now()
		var seen []openaiapi.Model
		var err error
		for {
			seen, err = api.Models(ctx)
			if err == nil && slices.ContainsFunc(seen, ok) {
				break
			}
			if time.Since(start) > 30*time.Second {
				t.Fatalf("%s: /v1/models after 30 s: %+v (%v); peers %v; log %s", what, seen, err, p.peers(t), p.stderr)
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("%s %s after its start; it has %d peers", what, time.Since(start).Round(time.Millisecond), len(p.peers(t)))
	}
	p, api := fresh([]string{"stories260K"})
	waitModels("a fresh node following stories260K listed both workers", p, api, func(m openaiapi.Model) bool {
		return m.ID == "stories260K" && local.Workers(m) == workers
	})
	p, api = fresh(nil)
	waitModels("a fresh node following no model named stories260K", p, api, func(m openaiapi.Model) bool {
		return m.ID == "stories260K" && m.Extra["joined"] == false
	})

	checkBooks(t, c, cost)
}

// waitMesh waits until every node of ps lists every other node of ps as a
// connected peer and none of gone, failing at deadline. The pairs of ps that
// were connected at the first look must stay connected at every later look:
// a link between them that drops fails the test. It returns when it was met.
func waitMesh(t *testing.T, ctx context.Context, ps, gone []*testnet.Proc, deadline time.Time, what string) time.Time {
	t.Helper()
	held := map[[2]string]bool{} // links seen, which must not drop
	for {
		missing, stale := 0, 0
		var lines []string
		for _, p := range ps {
			peers, err := p.API().Peers(ctx)
			if err != nil {
				t.Fatalf("%s's peers: %v", p.Name, err)
			}
			have := map[string]bool{}
			for _, q := range peers {
				have[q.ID] = true
			}
			var lacks []string
			for _, q := range ps {
				if q == p {
					continue
				}
				link := [2]string{p.Name, q.Name}
				switch {
				case have[q.PeerID]:
					held[link] = true
				case held[link]:
					t.Errorf("%s dropped %s, which it had listed, while waiting for %s", p.Name, q.Name, what)
					delete(held, link)
					missing++
					lacks = append(lacks, q.Name)
				default:
					missing++
					lacks = append(lacks, q.Name)
				}
			}
			for _, q := range gone {
				if have[q.PeerID] {
					stale++
					lacks = append(lacks, "still "+q.Name)
				}
			}
			lines = append(lines, fmt.Sprintf("%s: %d peers, lacking %v", p.Name, len(peers), lacks))
		}
		if missing == 0 && stale == 0 {
			return time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s:\n%s\n(logs: %s/node*.log)", what, strings.Join(lines, "\n"), filepath.Dir(ps[0].Log))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// buyStreamed buys a streamed chat completion of n tokens through p's gateway
// and returns its text, its usage and who answered.
func buyStreamed(t *testing.T, ctx context.Context, p *testnet.Proc, n int) (string, *openaiapi.Usage, local.Served) {
	t.Helper()
	greedy := 0.0
	s, err := p.API().StreamChatCompletion(ctx, openaiapi.ChatCompletionRequest{Model: "stories260K",
		Messages: []openaiapi.ChatMessage{{Role: "user", Content: "Tell me a story"}}, MaxTokens: &n, Temperature: &greedy})
	if err != nil {
		t.Fatalf("%s: POST /v1/chat/completions (stream): %v", p.Name, err)
	}
	defer s.Close()
	var text strings.Builder
	var usage *openaiapi.Usage
	for {
		ch, err := s.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: streamed answer: %v (so far %q)", p.Name, err, text.String())
		}
		for _, c := range ch.Choices {
			if c.Delta.Content != nil {
				text.WriteString(*c.Delta.Content)
			}
		}
		if ch.Usage != nil {
			usage = ch.Usage
		}
	}
	return text.String(), usage, s.Served
}

// procTCPAddr is p's TCP multiaddr with /p2p/<id>, for --bootstrap.
func procTCPAddr(t *testing.T, ctx context.Context, p *testnet.Proc) string {
	t.Helper()
	st, err := p.API().Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range st.Addrs {
		if strings.Contains(a, "/tcp/") {
			return a
		}
	}
	t.Fatalf("%s lists no TCP address: %v", p.Name, st.Addrs)
	return ""
}

// stamped records when testnet.Launch reported each node up.
type stamped struct {
	mu sync.Mutex
	up []time.Time
}

func (s *stamped) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if strings.Contains(string(b), ") up: ") {
		s.up = append(s.up, time.Now())
	}
	return len(b), nil
}

func (s *stamped) upTimes() (first, last time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.up[0], s.up[len(s.up)-1]
}
