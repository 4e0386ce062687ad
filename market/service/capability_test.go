package service_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/market/service"
	"github.com/cocoon-network/cocoon/runtime"
)

// capBackend is a worker's backend that declares what model says, records
// every request it is given, and answers each generation with script and
// each embeddings request with vectors derived from the inputs.
type capBackend struct {
	model runtime.Model
	// script and finish answer every generation (nil: two plain words);
	// set under mu once the worker runs.
	script []runtime.Delta
	finish string
	// stall, when armed (shared by the workers of one test), holds the first
	// Embed until its context ends and says so on stalled: a worker that
	// dies mid-job.
	stall   *atomic.Bool
	stalled chan *capBackend

	mu     sync.Mutex
	reqs   []runtime.Request
	embeds []runtime.EmbedRequest
}

// capModel is netModel with the given capabilities.
func capModel(c func(*runtime.Model)) runtime.Model {
	m := runtime.Model{ID: netModel, ContextLength: 2048}
	if c != nil {
		c(&m)
	}
	return m
}

func (b *capBackend) Models() []runtime.Model { return []runtime.Model{b.model} }
func (b *capBackend) Close() error            { return nil }

func (b *capBackend) Generate(ctx context.Context, req runtime.Request) (runtime.Stream, error) {
	b.mu.Lock()
	b.reqs = append(b.reqs, req)
	script, finish := b.script, b.finish
	b.mu.Unlock()
	if err := b.model.Serves(req); err != nil { // as every backend does
		return nil, err
	}
	if script == nil {
		script, finish = []runtime.Delta{{Text: " plain", Tokens: 1}, {Text: " words", Tokens: 1}}, runtime.FinishStop
	}
	return &scriptStream{script: script, finish: finish, prompt: 17}, nil
}

// Embed gives input i the vector of its length and index; the tokens are
// the inputs' words.
func (b *capBackend) Embed(ctx context.Context, req runtime.EmbedRequest) (runtime.Embeddings, error) {
	b.mu.Lock()
	b.embeds = append(b.embeds, req)
	b.mu.Unlock()
	if err := b.model.ServesEmbeddings(); err != nil {
		return runtime.Embeddings{}, err
	}
	if b.stall != nil && b.stall.CompareAndSwap(true, false) {
		b.stalled <- b
		<-ctx.Done()
		return runtime.Embeddings{}, ctx.Err()
	}
	return fakeEmbeddings(req.Inputs, b.model.EmbeddingDims), nil
}

func fakeEmbeddings(inputs []string, dims int) runtime.Embeddings {
	var e runtime.Embeddings
	for i, in := range inputs {
		v := make([]float32, dims)
		for j := range v {
			v[j] = float32(len(in)) + float32(i)/8 - float32(j)*0.25
		}
		e.Vectors = append(e.Vectors, v)
		e.PromptTokens += len(strings.Fields(in))
	}
	return e
}

func (b *capBackend) requests() ([]runtime.Request, []runtime.EmbedRequest) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]runtime.Request(nil), b.reqs...), append([]runtime.EmbedRequest(nil), b.embeds...)
}

type scriptStream struct {
	script []runtime.Delta
	finish string
	prompt int
	next   int
	tokens int
}

func (s *scriptStream) Recv() (runtime.Delta, error) {
	if s.next == len(s.script) {
		return runtime.Delta{}, io.EOF
	}
	d := s.script[s.next]
	s.next++
	s.tokens += d.Tokens
	return d, nil
}
func (s *scriptStream) Usage() runtime.Usage {
	return runtime.Usage{PromptTokens: s.prompt, CompletionTokens: s.tokens}
}
func (s *scriptStream) FinishReason() string { return s.finish }
func (s *scriptStream) Close() error         { return nil }

// folded is what a stream of deltas adds up to: the calls concatenated per
// index, as a caller assembles them.
type folded struct {
	Text, Refusal string
	Tokens        int
	Calls         map[int]runtime.ToolCall
	Logprobs      []runtime.TokenLogprob
}

func fold(ds []runtime.Delta) folded {
	f := folded{Calls: map[int]runtime.ToolCall{}}
	for _, d := range ds {
		f.Text += d.Text
		f.Refusal += d.Refusal
		f.Tokens += d.Tokens
		for _, c := range d.ToolCalls {
			call := f.Calls[c.Index]
			call.ID += c.ID
			call.Name += c.Name
			call.Arguments += c.Arguments
			f.Calls[c.Index] = call
		}
		f.Logprobs = append(f.Logprobs, d.Logprobs...)
	}
	return f
}

func recvAll(s runtime.Stream) ([]runtime.Delta, error) {
	var ds []runtime.Delta
	for {
		d, err := s.Recv()
		if err == io.EOF {
			return ds, nil
		}
		if err != nil {
			return ds, err
		}
		ds = append(ds, d)
	}
}

// capScript is an answer with every kind of piece: text with 70 logprobs
// (more than one chunk holds), a call whose arguments come in two pieces,
// the second over 16 KiB (more than one chunk holds), a second call in one
// piece, and a refusal.
func capScript() []runtime.Delta {
	lps := make([]runtime.TokenLogprob, 70)
	for i := range lps {
		tok := fmt.Sprintf(" t%d", i)
		lps[i] = runtime.TokenLogprob{Token: tok, Logprob: -float64(i) / 7, Bytes: []byte(tok),
			Top: []runtime.TopLogprob{{Token: tok, Logprob: -float64(i) / 7, Bytes: []byte(tok)}, {Token: " x", Logprob: -9.5}}}
	}
	big := `{"q":"` + strings.Repeat("é0123456789abcdef", 1300) + `"}` // 23 KiB, two-byte runes across the cuts
	return []runtime.Delta{
		{Text: "Let me look that up.", Tokens: 5, Logprobs: lps},
		{ToolCalls: []runtime.ToolCallDelta{{Index: 0, ID: "call_a1", Name: "lookup"}}, Tokens: 1},
		{ToolCalls: []runtime.ToolCallDelta{{Index: 0, Arguments: big[:6]}}, Tokens: 1},
		{ToolCalls: []runtime.ToolCallDelta{{Index: 0, Arguments: big[6:]}}, Tokens: 9},
		{ToolCalls: []runtime.ToolCallDelta{{Index: 1, ID: "call_b2", Name: "weather", Arguments: `{"city":"Zürich"}`}}, Tokens: 4},
		{Refusal: "I will not say more.", Tokens: 3},
	}
}

const capSchema = `{"type":"object","properties":{"q":{"type":"string"}},"required":["q"],"additionalProperties":false}`

// capRequest uses every capability of the job protocol at once.
func capRequest() runtime.Request {
	seed := uint64(99)
	return runtime.Request{
		Model: netModel, MaxTokens: 100, Temperature: 0.5, TopP: 0.9, Seed: &seed, Stop: []string{"\n\n"},
		Messages: []runtime.Message{
			{Role: "system", Content: "use the tools"},
			{Role: "user", Content: "what is on this picture? and then", Images: []runtime.Image{
				{URL: "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==", Detail: "low", At: 24},
			}},
			{Role: "assistant", ToolCalls: []runtime.ToolCall{{ID: "call_0", Name: "lookup", Arguments: `{"q":"picture"}`}}},
			{Role: "tool", ToolCallID: "call_0", Content: `{"answer":"a cat"}`},
		},
		Tools: []runtime.Tool{
			{Name: "lookup", Description: "looks a thing up", Parameters: json.RawMessage(capSchema), Strict: true},
			{Name: "weather", Parameters: json.RawMessage(`{"type":"object","properties":{"city":{"type":"string"}}}`)},
		},
		ToolChoice:       runtime.ToolChoice{Mode: runtime.ToolChoiceFunction, Name: "lookup"},
		SingleToolCall:   true,
		Logprobs:         true,
		TopLogprobs:      2,
		PresencePenalty:  0.5,
		FrequencyPenalty: -1.25,
		LogitBias:        map[int32]float64{5: 10, 17: -100, 300: 0.5},
	}
}

// capUses are requests that each use one capability, with the field a
// worker without it is refused by.
func capUses() []struct {
	field string
	req   runtime.Request
} {
	base := func() runtime.Request {
		return runtime.Request{Model: netModel, MaxTokens: 10, Messages: []runtime.Message{{Role: "user", Content: "hello there"}}}
	}
	tools, logprobs, bias, image, format := base(), base(), base(), base(), base()
	tools.Tools = []runtime.Tool{{Name: "lookup", Parameters: json.RawMessage(capSchema)}}
	logprobs.Logprobs, logprobs.TopLogprobs = true, 3
	bias.LogitBias = map[int32]float64{1: -5}
	image.Messages[0].Images = []runtime.Image{{URL: "data:image/gif;base64,R0lGODlhAQABAAAAACw=", At: 5}}
	format.Format = &runtime.ResponseFormat{Type: runtime.FormatJSONObject}
	return []struct {
		field string
		req   runtime.Request
	}{
		{"tools", tools}, {"logprobs", logprobs}, {"logit_bias", bias}, {"messages[0].content", image}, {"response_format", format},
	}
}

// capFixture starts one worker per model, each on a capBackend.
func capFixture(t *testing.T, models ...runtime.Model) (*netFixture, []*capBackend) {
	t.Helper()
	bs := make([]*capBackend, len(models))
	f := newNetFixture(t, len(models), market.RunOptions{}, func(i int, _ runtime.Backend) runtime.Backend {
		bs[i-1] = &capBackend{model: models[i-1]}
		return bs[i-1]
	})
	return f, bs
}

// TestCapabilitiesOverTheNetwork: of two workers one declares tools,
// logprobs, logit_bias, images and structured output, one none of them. A
// request using all of them reaches the capable worker's backend exactly as
// the client sent it, and its answer (text with 70 logprobs, tool call
// arguments of 23 KiB, a refusal) comes back to the client whole, though
// the worker splits it into chunks. A request using any one capability goes
// to the capable worker alone; the plain worker is given nothing. The
// workers' balances are what the client paid.
func TestCapabilitiesOverTheNetwork(t *testing.T) {
	all := capModel(func(m *runtime.Model) {
		m.Tools, m.Logprobs, m.LogitBias, m.Images, m.StructuredOutput = true, true, true, true, true
	})
	f, bs := capFixture(t, all, capModel(nil))
	capable, plain := bs[0], bs[1]
	capable.script, capable.finish = capScript(), runtime.FinishToolCalls
	capID := f.workers[0].node.Host.ID()
	perWorker := map[peer.ID][]market.Receipt{}

	req := capRequest()
	if err := req.Check(); err != nil {
		t.Fatalf("the test's request: %v", err)
	}
	s, err := f.cs.Generate(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := recvAll(s)
	s.Close()
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	reqs, _ := capable.requests()
	if len(reqs) != 1 || !reflect.DeepEqual(reqs[0], req) {
		t.Errorf("the worker's backend received\n%+v\nthe client sent\n%+v", reqs, req)
	}
	got, want := fold(ds), fold(capable.script)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("the client's deltas add up to\n%.300v\nthe worker's backend streamed\n%.300v", got, want)
	}
	if len(ds) <= len(capable.script) {
		t.Errorf("%d deltas for %d scripted: the worker split nothing", len(ds), len(capable.script))
	}
	if u, fr := s.Usage(), s.FinishReason(); u.CompletionTokens != want.Tokens || u.PromptTokens != 17 || fr != runtime.FinishToolCalls {
		t.Errorf("usage %+v, finish %q; want %d completion and 17 prompt tokens, %q", u, fr, want.Tokens, runtime.FinishToolCalls)
	}
	as := s.(*service.NetStream).Attempts()
	if len(as) != 1 || as[0].Err != nil || as[0].Candidate.Peer != capID {
		t.Fatalf("attempts %+v; want one on the capable worker", as)
	}
	perWorker[capID] = append(perWorker[capID], as[0].Receipt)
	capable.mu.Lock()
	capable.script, capable.finish = nil, "" // plain answers from here on
	capable.mu.Unlock()
	t.Logf("%d scripted deltas came as %d; %d logprobs, call 0 of %d bytes", len(capScript()), len(ds), len(got.Logprobs), len(got.Calls[0].Arguments))

	for _, u := range capUses() {
		s, err := f.cs.Generate(context.Background(), u.req)
		if err != nil {
			t.Fatalf("%s: %v", u.field, err)
		}
		if _, err := recvAll(s); err != nil {
			t.Fatalf("%s: %v", u.field, err)
		}
		s.Close()
		as := s.(*service.NetStream).Attempts()
		if len(as) != 1 || as[0].Err != nil || as[0].Candidate.Peer != capID {
			t.Fatalf("%s: attempts %+v; want one on the capable worker", u.field, as)
		}
		perWorker[capID] = append(perWorker[capID], as[0].Receipt)
	}
	if reqs, _ := capable.requests(); len(reqs) != 1+len(capUses()) {
		t.Errorf("the capable worker was given %d requests; want %d", len(reqs), 1+len(capUses()))
	}
	if reqs, embeds := plain.requests(); len(reqs)+len(embeds) != 0 {
		t.Errorf("the plain worker was given %+v, %+v", reqs, embeds)
	}
	checkBalances(t, f, perWorker)
}

// TestCapabilityNoWorkerOffersIt: where the model's only worker declares no
// capability, a request using one is the caller's FieldError naming the
// field, and so is an embeddings request ("model"); the worker's backend is
// given nothing, and nothing is paid.
func TestCapabilityNoWorkerOffersIt(t *testing.T) {
	f, bs := capFixture(t, capModel(nil))
	for _, u := range capUses() {
		_, err := f.cs.Generate(context.Background(), u.req)
		if fe := (*runtime.FieldError)(nil); !errors.As(err, &fe) || fe.Field != u.field {
			t.Errorf("Generate using %s: %v; want a FieldError naming %s", u.field, err, u.field)
		}
	}
	_, err := f.cs.Embed(context.Background(), runtime.EmbedRequest{Model: netModel, Inputs: []string{"a", "b"}})
	if fe := (*runtime.FieldError)(nil); !errors.As(err, &fe) || fe.Field != "model" {
		t.Errorf("Embed: %v; want a FieldError naming model", err)
	}
	if reqs, embeds := bs[0].requests(); len(reqs)+len(embeds) != 0 {
		t.Errorf("the worker was given %+v, %+v", reqs, embeds)
	}
	checkBalances(t, f, nil)
}

// TestEmbeddingsOverTheNetwork: two workers declare embeddings of 8
// dimensions, a third does not (though its backend could). Client.Embed of
// five inputs returns the vectors in order, the tokens the worker counted,
// and their cost at the worker's prompt price; the third worker is never
// given a job. The worker holding the first job dies before answering: the
// job fails over to the other, and the dead one is owed nothing. Each
// worker's balance is what the client paid it.
func TestEmbeddingsOverTheNetwork(t *testing.T) {
	emb := capModel(func(m *runtime.Model) { m.Embeddings, m.EmbeddingDims = true, 8 })
	f, bs := capFixture(t, emb, emb, capModel(nil))
	stall := &atomic.Bool{}
	stalled := make(chan *capBackend, 1)
	for _, b := range bs[:2] {
		b.stall, b.stalled = stall, stalled
	}
	inputs := []string{"the cat", "sat on the mat", "a", "once upon a time there was", "é ü"}
	want := fakeEmbeddings(inputs, 8)
	perWorker := map[peer.ID][]market.Receipt{}
	embed := func(name string) (runtime.Embeddings, uint64) {
		t.Helper()
		e, err := f.cs.Embed(context.Background(), runtime.EmbedRequest{Model: netModel, Inputs: inputs})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !reflect.DeepEqual(e.Vectors, want.Vectors) || e.PromptTokens != want.PromptTokens || e.CostNanoTON == nil {
			t.Fatalf("%s: %+v; want %+v", name, e, want)
		}
		return e, *e.CostNanoTON
	}
	// Which worker served a job: the one whose backend was given one more.
	served := func(before [2]int) *netWorker {
		t.Helper()
		var w *netWorker
		for i, b := range bs[:2] {
			if _, es := b.requests(); len(es) > before[i] {
				if w != nil {
					t.Fatalf("both embedding workers were given the job")
				}
				w = f.workers[i]
			}
		}
		return w
	}
	counts := func() [2]int {
		_, a := bs[0].requests()
		_, b := bs[1].requests()
		return [2]int{len(a), len(b)}
	}

	for i := range 3 {
		before := counts()
		e, paid := embed(fmt.Sprintf("job %d", i))
		w := served(before)
		cost, err := market.Cost(w.price, uint64(e.PromptTokens), 0)
		if err != nil || paid != cost {
			t.Fatalf("job %d: paid %d; want %d nanoTON for %d tokens at %+v (%v)", i, paid, cost, e.PromptTokens, w.price, err)
		}
		perWorker[w.node.Host.ID()] = append(perWorker[w.node.Host.ID()],
			market.Receipt{Price: w.price, PromptTokens: uint64(e.PromptTokens), Paid: paid})
	}

	// A worker that dies mid-job.
	stall.Store(true)
	before := counts()
	type result struct {
		e    runtime.Embeddings
		paid uint64
	}
	done := make(chan result, 1)
	go func() {
		e, err := f.cs.Embed(context.Background(), runtime.EmbedRequest{Model: netModel, Inputs: inputs})
		if err != nil || e.CostNanoTON == nil {
			t.Errorf("embed across a dying worker: %v", err)
			done <- result{}
			return
		}
		done <- result{e, *e.CostNanoTON}
	}()
	dying := <-stalled
	var dead, alive *netWorker
	for i, b := range bs[:2] {
		if b == dying {
			dead, alive = f.workers[i], f.workers[1-i]
		}
	}
	f.kill(dead)
	r := <-done
	if !reflect.DeepEqual(r.e.Vectors, want.Vectors) || r.e.PromptTokens != want.PromptTokens {
		t.Fatalf("after the failover: %+v; want %+v", r.e, want)
	}
	if after := counts(); after[0]+after[1] != before[0]+before[1]+2 {
		t.Errorf("embedding backends given %v jobs, %v before; want the dead one's and the failover's", after, before)
	}
	cost, err := market.Cost(alive.price, uint64(r.e.PromptTokens), 0)
	if err != nil || r.paid != cost {
		t.Fatalf("failover: paid %d; want %d to the surviving worker alone (%v)", r.paid, cost, err)
	}
	perWorker[alive.node.Host.ID()] = append(perWorker[alive.node.Host.ID()],
		market.Receipt{Price: alive.price, PromptTokens: uint64(r.e.PromptTokens), Paid: r.paid})

	if reqs, embeds := bs[2].requests(); len(reqs)+len(embeds) != 0 {
		t.Errorf("the worker without embeddings was given %+v, %+v", reqs, embeds)
	}
	checkBalances(t, f, perWorker)
}
