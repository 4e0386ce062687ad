package netlab

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/client/local"
	"github.com/cocoon-network/cocoon/internal/testmodel"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

func build(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "cocoon")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/cocoon-network/cocoon/cmd/cocoon").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v: %s", err, out)
	}
	return bin
}

// job is one streamed chat completion's figures.
type job struct {
	ttft   time.Duration
	tokens int
	total  time.Duration
}

func (j job) tps() float64 {
	if j.total <= j.ttft || j.tokens < 2 {
		return 0
	}
	return float64(j.tokens-1) / (j.total - j.ttft).Seconds()
}

// chat streams a completion of w's model from api and checks w answered.
func chat(t *testing.T, api *local.Client, w *Proc) job {
	t.Helper()
	model := w.Model
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n, greedy := 48, 0.0
	start := time.Now()
	s, err := api.StreamChatCompletion(ctx, openaiapi.ChatCompletionRequest{Model: model, Stream: true,
		Messages: []openaiapi.ChatMessage{{Role: "user", Content: "Tell me a story"}}, MaxTokens: &n, Temperature: &greedy})
	if err != nil {
		t.Fatalf("stream chat: %v", err)
	}
	defer s.Close()
	if s.Worker != w.PeerID {
		t.Fatalf("stream chat %s: served by %q; want %s (%s)", model, s.Worker, w.PeerID, w.Name)
	}
	var j job
	for {
		c, err := s.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("stream chat: after %d chunks: %v", j.tokens, err)
		}
		if len(c.Choices) > 0 && c.Choices[0].Delta.Content != nil && *c.Choices[0].Delta.Content != "" {
			if j.tokens == 0 {
				j.ttft = time.Since(start)
			}
			j.tokens++
		}
	}
	j.total = time.Since(start)
	if j.tokens == 0 {
		t.Fatal("stream chat: no tokens")
	}
	return j
}

// paid is what the channel store in dir says was paid (client) or can be
// claimed (worker).
func paid(t *testing.T, bin, dir, role string) uint64 {
	out, err := exec.Command(bin, "channel", "list", "--datadir", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("channel list: %v: %s", err, out)
	}
	var sum uint64
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) >= 6 && f[0] == role {
			v, err := strconv.ParseUint(f[5], 10, 64)
			if err != nil {
				t.Fatalf("channel list row %q: %v", line, err)
			}
			sum += v
		}
	}
	return sum
}

// TestNATs: a client behind an EIM NAT buys streamed chat completions from
// two workers, one behind an EIM NAT and one behind a symmetric one, each in
// a home of its own, reached through the public relay node; on clean links,
// then on links with 40 ms delay and 1% loss each way. The log says whether
// DCUtR upgraded each connection, the links' measured round trip, time to
// first token and tokens/s; the books must balance.
func TestNATs(t *testing.T) {
	// It runs by default (about 2.5 minutes); New skips it, loudly, without
	// root, ip or nft.
	if os.Getenv("COCOON_NETLAB") == "0" {
		t.Skip("NETLAB SKIPPED: COCOON_NETLAB=0")
	}
	bin := build(t)
	lab := New(t, Config{Bin: bin, Model: testmodel.ModelPath(t), LibDir: testmodel.LibDir(),
		ClientNAT: EIM, WorkerNATs: []string{EIM, Symmetric}})
	ctx := context.Background()
	defer func() {
		if t.Failed() {
			t.Log(lab.Logs())
		}
	}()
	kind := func(p *Proc) string { return strings.TrimPrefix(ModelID("x", p.NAT), "x-") }

	// Each worker learns it is private and reserves a slot on the relay.
	for _, w := range lab.Workers {
		waitFor(t, 3*time.Minute, "reservation of "+w.Name+" on the relay", func() bool {
			st, err := w.API.Status(ctx)
			return err == nil && st.Reachability.Verdict == "private" && slices.Contains(st.Reachability.Relays, lab.Relay.PeerID)
		})
	}
	for _, p := range lab.Public {
		st, _ := p.API.Status(ctx)
		t.Logf("%s (%s): reachability %+v", p.Name, p.IP, st.Reachability)
	}
	for _, w := range lab.Workers {
		waitFor(t, 2*time.Minute, w.Name+"'s ad at the client", func() bool {
			ms, err := lab.Client.API.Models(ctx)
			if err != nil {
				return false
			}
			i := slices.IndexFunc(ms, func(m openaiapi.Model) bool { return m.ID == w.Model })
			return i >= 0 && local.Workers(ms[i]) == 1
		})
	}

	// via is how the client is connected to w now: "direct" when any of its
	// connections is (hole punching, or a direct dial, upgraded it).
	via := func(w *Proc) (string, []string) {
		peers, _ := lab.Client.API.Peers(ctx)
		for _, p := range peers {
			if p.ID == w.PeerID {
				for _, a := range p.Addrs {
					if !strings.Contains(a, "/p2p-circuit") {
						return "direct", p.Addrs
					}
				}
				return "relayed", p.Addrs
			}
		}
		return "not connected", nil
	}
	clean := map[*Proc]job{}
	for _, w := range lab.Workers {
		chat(t, lab.Client.API, w) // the first job dials through the relay; DCUtR starts then
		how, addrs := "", []string(nil)
		deadline := time.Now().Add(20 * time.Second)
		for how != "direct" && time.Now().Before(deadline) {
			time.Sleep(time.Second)
			how, addrs = via(w)
		}
		ws, _ := w.API.Status(ctx)
		t.Logf("client (%s NAT) → %s (%s NAT): %s %v; worker: %+v", kind(lab.Client), w.Name, kind(w), how, addrs, ws.Reachability)
		clean[w] = chat(t, lab.Client.API, w)
	}

	relay := lab.Relay.IP + ":4001"
	rttClean, err := lab.HandshakeRTT(lab.Homes[0].NS, relay, 9)
	if err != nil {
		t.Fatal(err)
	}
	lab.Shape(40*time.Millisecond, 0.01)
	rttShaped, err := lab.HandshakeRTT(lab.Homes[0].NS, relay, 9)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("TCP handshake client home → relay (one WAN link each way), median of 9: clean %v, 40 ms 1%% loss %v (all: %v)",
		rttClean[4].Round(10*time.Microsecond), rttShaped[4].Round(10*time.Microsecond), rttShaped)
	if rttShaped[4] < 80*time.Millisecond {
		t.Errorf("a round trip over a link shaped to 40 ms each way took %v; want ≥ 80ms", rttShaped[4])
	}
	for _, w := range lab.Workers {
		shaped := chat(t, lab.Client.API, w)
		how, _ := via(w)
		c := clean[w]
		t.Logf("%s (%s NAT, %s): clean links:          TTFT %v, %d tokens, %.1f tokens/s", w.Name, kind(w), how, c.ttft.Round(time.Millisecond), c.tokens, c.tps())
		t.Logf("%s (%s NAT, %s): 40 ms, 1%% loss links: TTFT %v, %d tokens, %.1f tokens/s", w.Name, kind(w), how, shaped.ttft.Round(time.Millisecond), shaped.tokens, shaped.tps())
	}

	// The last answers' final vouchers may still be on the shaped links: a
	// worker's job ends when its last voucher is on disk, so wait until no
	// worker holds one, then stop and read the books.
	settled := time.Now().Add(20 * time.Second)
	for _, w := range lab.Workers {
		for {
			ov, err := w.API.Overview(context.Background())
			busy := err != nil
			for _, p := range ov.Peers {
				busy = busy || p.InFlight > 0
			}
			if !busy {
				break
			}
			if time.Now().After(settled) {
				t.Fatalf("%s still holds a job 20 s after the last answer (%v)", w.Name, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	lab.StopAll()
	var claims uint64
	for _, w := range lab.Workers {
		c := paid(t, bin, w.Datadir, "worker")
		if c == 0 {
			t.Errorf("%s can claim nothing", w.Name)
		}
		claims += c
	}
	if p := paid(t, bin, lab.Client.Datadir, "client"); p != claims {
		t.Fatalf("client paid %d nanoTON, workers can claim %d", p, claims)
	}
	t.Logf("books: client paid %d nanoTON = what the workers can claim", claims)
}
