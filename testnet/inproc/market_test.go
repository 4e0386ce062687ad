package inproc

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

// httpAnswer is what the client node's gateway answered to one request.
type httpAnswer struct {
	text, finish, worker, tee string
	usage                     openaiapi.Usage
}

// chat sends body (a chat completion request) through the node's gateway,
// streamed or not, and reads the answer.
func chat(t testing.TB, m *Member, body []byte, stream bool) httpAnswer {
	t.Helper()
	var req openaiapi.ChatCompletionRequest
	if err := json.Unmarshal(body, &req); err != nil {
		t.Fatalf("request %s: %v", body, err)
	}
	ctx := context.Background()
	if !stream {
		cc, by, err := m.API().ChatCompletion(ctx, req)
		if err != nil {
			t.Fatalf("POST /v1/chat/completions: %v", err)
		}
		if len(cc.Choices) != 1 || cc.Usage == nil {
			t.Fatalf("answer %+v: want one choice and a usage", cc)
		}
		return httpAnswer{text: string(cc.Choices[0].Message.Content), finish: cc.Choices[0].FinishReason,
			usage: *cc.Usage, worker: by.Worker, tee: by.TEE}
	}
	s, err := m.API().StreamChatCompletion(ctx, req)
	if err != nil {
		t.Fatalf("POST /v1/chat/completions: %v", err)
	}
	defer s.Close()
	a := httpAnswer{worker: s.Worker, tee: s.TEE}
	sawUsage := false
	for {
		ch, err := s.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("read the stream: %v", err)
		}
		for _, c := range ch.Choices {
			if c.Delta.Content != nil {
				a.text += *c.Delta.Content
			}
			if c.FinishReason != nil {
				a.finish = *c.FinishReason
			}
		}
		if ch.Usage != nil {
			a.usage, sawUsage = *ch.Usage, true
		}
	}
	if !sawUsage {
		t.Fatal("streamed answer without a usage chunk")
	}
	return a
}

// TestMarketThroughGateway buys chat completions through a client node's HTTP
// gateway from three llama.cpp workers (mocknet, sim TEE, shared dev ledger):
// each answer equals the serving worker's own backend's answer, and each
// worker's provable channel balance equals the cost of the tokens it delivered,
// what the client was told it paid, and what the client's channel says it sent.
func TestMarketThroughGateway(t *testing.T) {
	tn := New(t, Nodes(4), Workers(3))
	client := tn.Clients()[0]
	if client.IsWorker || client.Backend != nil || client.Worker != nil {
		t.Fatalf("node %d should be a client only", client.Index)
	}
	byPeer := map[peer.ID]*Member{}
	for _, w := range tn.WorkerNodes() {
		byPeer[w.ID] = w
	}
	prompts := []string{"once upon a time", "the little dog", "Lily went to the park", "one day a cat",
		"Tom had a red ball", "the sun was hot", "a big bird", "mom said"}
	costs := map[peer.ID]uint64{} // from the receipts' usage and the worker's price
	told := map[peer.ID]uint64{}  // usage.cost_nanoton the client's gateway returned
	// 50 requests, half streamed, each prompt with several lengths and seeds.
	for i := range 50 {
		p := prompts[i%len(prompts)]
		stream := i%2 == 1
		body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":%q}],"max_tokens":%d,"temperature":0,"seed":%d,"stream":%t`,
			Model, p, 16+i%3*8, 1000+i, stream)
		if stream {
			body += `,"stream_options":{"include_usage":true}`
		}
		body += "}"
		got := chat(t, client, []byte(body), stream)
		wid, err := peer.Decode(got.worker)
		if err != nil || byPeer[wid] == nil {
			t.Fatalf("request %d: X-Cocoon-Worker %q is not a worker (%v)", i, got.worker, err)
		}
		w := byPeer[wid]
		if got.tee != tee.Sim.Tier() {
			t.Errorf("request %d: X-Cocoon-TEE %q; want %q", i, got.tee, tee.Sim.Tier())
		}
		// The reference: the same request, decoded as the gateway decodes it, on the
		// worker's own backend.
		_, rreq, err := openaiapi.DecodeChatRequest(bytes.NewReader([]byte(body)))
		if err != nil {
			t.Fatal(err)
		}
		ref := direct(t, w.Backend, rreq)
		if got.text != ref.text || got.finish != ref.finish ||
			got.usage.PromptTokens != ref.usage.PromptTokens || got.usage.CompletionTokens != ref.usage.CompletionTokens {
			t.Errorf("request %d (stream %t) on worker %d:\n got %q (%s, %+v)\nwant %q (%s, %+v)",
				i, stream, w.Index, got.text, got.finish, got.usage, ref.text, ref.finish, ref.usage)
		}
		if ref.usage.CompletionTokens == 0 {
			t.Errorf("request %d: empty reference answer", i)
		}
		c, err := market.Cost(w.Price, uint64(got.usage.PromptTokens), uint64(got.usage.CompletionTokens))
		if err != nil {
			t.Fatal(err)
		}
		if got.usage.CostNanoTON == nil || *got.usage.CostNanoTON != c {
			t.Errorf("request %d: usage.cost_nanoton %v; want %d", i, got.usage.CostNanoTON, c)
		} else {
			told[wid] += *got.usage.CostNanoTON
		}
		costs[wid] += c
	}
	// The last answers' final vouchers may still be on their way: the client
	// answers without waiting for the worker to take them.
	tn.WaitFor(10*time.Second, "every worker's balance to reach what its answers cost", func() bool {
		for _, w := range tn.WorkerNodes() {
			if bal, err := w.Payee.Balance(client.Channels[w.Index]); err != nil || bal != costs[w.ID] {
				return false
			}
		}
		return true
	})
	for _, w := range tn.WorkerNodes() {
		ch := client.Channels[w.Index]
		bal, err := w.Payee.Balance(ch)
		if err != nil {
			t.Fatal(err)
		}
		rec, err := client.Payer.Latest(ch)
		if err != nil {
			t.Fatal(err)
		}
		if bal != costs[w.ID] || told[w.ID] != costs[w.ID] || rec.Sent != costs[w.ID] {
			t.Errorf("worker %d: balance %d, cost of delivered tokens %d, client told %d, channel sent %d; want all equal",
				w.Index, bal, costs[w.ID], told[w.ID], rec.Sent)
		}
		t.Logf("worker %d: %d nanoTON = cost of the tokens it delivered", w.Index, bal)
	}
	if len(costs) < 2 {
		t.Errorf("all %d requests went to one worker; selection should spread them", len(prompts))
	}
}

type directAnswer struct {
	text, finish string
	usage        runtime.Usage
}

// direct runs req on b itself.
func direct(t *testing.T, b runtime.Backend, req runtime.Request) directAnswer {
	t.Helper()
	s, err := b.Generate(context.Background(), req)
	if err != nil {
		t.Fatalf("direct generate: %v", err)
	}
	defer s.Close()
	var a directAnswer
	for {
		d, err := s.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("direct generate: %v", err)
		}
		a.text += d.Text
	}
	a.usage, a.finish = s.Usage(), s.FinishReason()
	return a
}

// BenchmarkMarketGateway measures one non-streamed chat completion of 16 tokens
// bought through a client node's HTTP gateway from two llama.cpp workers over
// mocknet: selection, attestation (cached per connection), the job protocol,
// vouchers with fsync on both sides, and generation.
func BenchmarkMarketGateway(b *testing.B) {
	tn := New(b, Nodes(3), Workers(2))
	client := tn.Clients()[0]
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"once upon a time"}],"max_tokens":16,"temperature":0}`, Model)
	var paid uint64
	i := 0
	for b.Loop() {
		i++
		req, _ := http.NewRequest("POST", "http://"+client.APIAddr+"/v1/chat/completions", bytes.NewReader([]byte(body)))
		req.Header.Set("Authorization", "Bearer "+client.Token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		var cc openaiapi.ChatCompletion
		err = json.NewDecoder(resp.Body).Decode(&cc)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || cc.Usage == nil || cc.Usage.CostNanoTON == nil {
			b.Fatalf("answer %s: %+v, %v", resp.Status, cc, err)
		}
		paid += *cc.Usage.CostNanoTON
	}
	b.ReportMetric(float64(paid)/float64(i), "nanoTON/req")
}
