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

func chat(t *testing.T, api *local.Client, model string) job {
	t.Helper()
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

// TestNATs: a client behind one NAT buys streamed chat completions from a
// worker behind another through the public relay node, on clean links and
// then on links with 40 ms delay and 1% loss each way; the note reports
// whether DCUtR upgraded the connection, and the books balance.
func TestNATs(t *testing.T) {
	for _, tc := range []struct{ name, natA, natB string }{
		{"eim-to-symmetric", EIM, Symmetric},
	} {
		t.Run(tc.name, func(t *testing.T) { runNATs(t, tc.natA, tc.natB) })
	}
}

func runNATs(t *testing.T, natA, natB string) {
	if os.Getenv("COCOON_NETLAB") == "" {
		t.Skip("NETLAB SKIPPED: set COCOON_NETLAB=1 (as root) to run the NAT lab (about 4 minutes)")
	}
	bin := build(t)
	lab := New(t, Config{Bin: bin, Model: testmodel.ModelPath(t), LibDir: testmodel.LibDir(), NATA: natA, NATB: natB})
	model := strings.TrimSuffix(filepath.Base(testmodel.Path()), ".gguf")
	ctx := context.Background()
	defer func() {
		if t.Failed() {
			t.Log(lab.Logs())
		}
	}()

	// The worker learns it is private and reserves a slot on the relay.
	waitFor(t, 3*time.Minute, "reservation of the worker on the relay", func() bool {
		st, err := lab.Worker.API.Status(ctx)
		return err == nil && st.Reachability.Verdict == "private" && slices.Contains(st.Reachability.Relays, lab.Relay.PeerID)
	})
	for _, p := range lab.Public {
		st, _ := p.API.Status(ctx)
		t.Logf("%s: reachability %+v", p.Name, st.Reachability)
	}
	waitFor(t, 2*time.Minute, "the worker's ad at the client", func() bool {
		ms, err := lab.Client.API.Models(ctx)
		return err == nil && len(ms) > 0 && local.Workers(ms[0]) == 1
	})

	clean := chat(t, lab.Client.API, model)
	report := func(when string) {
		cs, _ := lab.Client.API.Status(ctx)
		ws, _ := lab.Worker.API.Status(ctx)
		peers, _ := lab.Client.API.Peers(ctx)
		var via []string
		for _, p := range peers {
			if p.ID == lab.Worker.PeerID {
				via = p.Addrs
			}
		}
		t.Logf("%s: client %+v; worker %+v; client→worker connection(s) %v", when, cs.Reachability, ws.Reachability, via)
	}
	report("after the clean job")
	lab.WANA.Shape(40*time.Millisecond, 0.01)
	lab.WANB.Shape(40*time.Millisecond, 0.01)
	shaped := chat(t, lab.Client.API, model)
	report("after the shaped job")
	t.Logf("clean links:          TTFT %v, %d tokens, %.1f tokens/s", clean.ttft.Round(time.Millisecond), clean.tokens, clean.tps())
	t.Logf("40 ms, 1%% loss links: TTFT %v, %d tokens, %.1f tokens/s", shaped.ttft.Round(time.Millisecond), shaped.tokens, shaped.tps())

	lab.StopAll()
	p, c := paid(t, bin, lab.Client.Datadir, "client"), paid(t, bin, lab.Worker.Datadir, "worker")
	if p == 0 || p != c {
		t.Fatalf("client paid %d nanoTON, worker can claim %d", p, c)
	}
	t.Logf("books: client paid %d nanoTON = worker can claim %d", p, c)
}
