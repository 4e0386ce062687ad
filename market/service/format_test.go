package service_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/market/service"
	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

const netSchema = `{"type":"object","properties":{"ok":{"type":"boolean"},"color":{"enum":["red","green","blue"]}},"required":["ok","color"],"additionalProperties":false}`

// checkNetSchema reports what in text is not JSON valid for netSchema.
func checkNetSchema(text string) error {
	dec := json.NewDecoder(strings.NewReader(text))
	dec.DisallowUnknownFields()
	var v struct {
		OK    *bool   `json:"ok"`
		Color *string `json:"color"`
	}
	if err := dec.Decode(&v); err != nil {
		return err
	}
	if dec.More() || v.OK == nil || v.Color == nil || !slices.Contains([]string{"red", "green", "blue"}, *v.Color) {
		return errors.New("not valid for the schema")
	}
	return nil
}

// plainOnly is a worker's backend that offers no structured output, and
// counts the generations it is asked for with a format.
type plainOnly struct {
	runtime.Backend
	formats atomic.Int32
}

func (p *plainOnly) Models() []runtime.Model {
	ms := p.Backend.Models()
	for i := range ms {
		ms[i].StructuredOutput = false
	}
	return ms
}

func (p *plainOnly) Generate(ctx context.Context, req runtime.Request) (runtime.Stream, error) {
	if req.Format != nil {
		p.formats.Add(1)
	}
	return p.Backend.Generate(ctx, req)
}

// TestResponseFormatOverTheNetwork: of two llama.cpp workers one offers
// structured output in its ad (the embedded engine) and one does not. The
// client's /v1/models says the model has it; json_schema requests, through
// the gateway's handler and through Generate, all go to the worker that
// offers it, never to the other, and come back as JSON valid for the schema,
// the same answer as the worker's engine gives directly, paid to the token.
func TestResponseFormatOverTheNetwork(t *testing.T) {
	var plain *plainOnly
	f := newNetFixture(t, 2, market.RunOptions{}, func(i int, b runtime.Backend) runtime.Backend {
		if i == 1 {
			plain = &plainOnly{Backend: b}
			return plain
		}
		return b
	})
	without, with := f.workers[0], f.workers[1]
	for _, a := range f.cs.Book().ByModel(netModel) {
		o, _ := a.Offer(netModel)
		if o.StructuredOutput != (a.Peer == with.node.Host.ID()) {
			t.Fatalf("ad of %s offers structured output %v", a.Peer, o.StructuredOutput)
		}
	}
	ms, err := f.cs.ListModels(context.Background())
	if err != nil || len(ms) != 1 || ms[0].Extra["structured_output"] != true {
		t.Fatalf("ListModels = %+v, %v; want %s with structured_output", ms, err, netModel)
	}

	format := &runtime.ResponseFormat{Type: runtime.FormatJSONSchema, Name: "pick", Schema: json.RawMessage(netSchema), Strict: true}
	perWorker := map[peer.ID][]market.Receipt{}
	for i := range 4 {
		req := netRequest(i)
		req.MaxTokens = 200
		req.Format = format
		s, err := f.cs.Generate(context.Background(), req)
		if err != nil {
			t.Fatalf("job %d: %v", i, err)
		}
		ans, err := drain(s)
		s.Close()
		if err != nil {
			t.Fatalf("job %d: %v", i, err)
		}
		as := s.(*service.NetStream).Attempts()
		if len(as) != 1 || as[0].Err != nil || as[0].Candidate.Peer != with.node.Host.ID() {
			t.Fatalf("job %d: attempts %+v; want one on the worker that offers structured output", i, as)
		}
		if err := checkNetSchema(ans.text); err != nil || ans.finish != runtime.FinishStop {
			t.Errorf("job %d: %q (%s): %v", i, ans.text, ans.finish, err)
		}
		if ref := direct(t, with.raw, req); ans.text != ref.text || ans.usage != ref.usage {
			t.Errorf("job %d: %q; the engine gives %q directly", i, ans.text, ref.text)
		}
		perWorker[as[0].Candidate.Peer] = append(perWorker[as[0].Candidate.Peer], as[0].Receipt)
	}
	checkBalances(t, f, perWorker)

	// The same through the gateway's handler, from the JSON a caller sends.
	srv := httptest.NewServer(openaiapi.NewHandler(f.cs))
	defer srv.Close()
	body := `{"model":"` + netModel + `","messages":[{"role":"user","content":"a color"}],"max_tokens":200,"temperature":0,` +
		`"response_format":{"type":"json_schema","json_schema":{"name":"pick","schema":` + netSchema + `,"strict":true}}}`
	resp, err := http.Post(srv.URL+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var cc openaiapi.ChatCompletion
	if resp.StatusCode != 200 || json.Unmarshal(b, &cc) != nil || len(cc.Choices) != 1 {
		t.Fatalf("POST with response_format: %d %s", resp.StatusCode, b)
	}
	if err := checkNetSchema(string(cc.Choices[0].Message.Content)); err != nil {
		t.Errorf("gateway answer %s: %v", b, err)
	}
	if w := resp.Header.Get("X-Cocoon-Worker"); w != with.node.Host.ID().String() {
		t.Errorf("gateway answer from %s; want %s", w, with.node.Host.ID())
	}
	if n := plain.formats.Load(); n != 0 {
		t.Errorf("the worker without structured output was given %d jobs with a format", n)
	}
	if ev := without.obs.snapshot(); len(ev.started)+len(ev.ended) != 0 {
		t.Errorf("the worker without structured output saw %d jobs start, %d end", len(ev.started), len(ev.ended))
	}
}

// TestResponseFormatNoWorkerOffersIt: where the model's only worker offers no
// structured output, a request with a format is the caller's 400 naming
// response_format, and the worker never sees the job.
func TestResponseFormatNoWorkerOffersIt(t *testing.T) {
	var plain *plainOnly
	f := newNetFixture(t, 1, market.RunOptions{}, func(_ int, b runtime.Backend) runtime.Backend {
		plain = &plainOnly{Backend: b}
		return plain
	})
	srv := httptest.NewServer(openaiapi.NewHandler(f.cs))
	defer srv.Close()
	body := `{"model":"` + netModel + `","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_object"}}`
	resp, err := http.Post(srv.URL+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var e openaiapi.ErrorResponse
	if resp.StatusCode != 400 || json.Unmarshal(b, &e) != nil || e.Error.Param == nil || *e.Error.Param != "response_format" ||
		!strings.Contains(e.Error.Message, "structured output") {
		t.Errorf("POST with a format no worker offers: %d %s; want 400 naming response_format", resp.StatusCode, b)
	}
	_, err = f.cs.Generate(context.Background(), runtime.Request{Model: netModel, Prompt: "hi", Format: &runtime.ResponseFormat{Type: runtime.FormatJSONObject}})
	if fe := (*runtime.FieldError)(nil); !errors.As(err, &fe) || fe.Field != "response_format" {
		t.Errorf("Generate with a format no worker offers: %v; want a FieldError naming response_format", err)
	}
	if n := plain.formats.Load(); n != 0 {
		t.Errorf("the worker was given %d jobs with a format", n)
	}
}

// TestResponseFormatFailover kills the worker answering a json_schema request
// mid-object: the next worker's engine follows the schema's grammar from the
// text delivered so far, so the joined answer is still JSON of the schema,
// and each worker is paid for its part.
func TestResponseFormatFailover(t *testing.T) {
	noLeaks(t)
	armed := &atomic.Bool{}
	armed.Store(true)
	stalled := make(chan int, 1)
	const after = 6
	f := newNetFixture(t, 2, market.RunOptions{PayEvery: 1}, func(_ int, b runtime.Backend) runtime.Backend {
		return &stallBackend{Backend: b, after: after, armed: armed, stalled: stalled}
	})
	req := netRequest(0)
	req.MaxTokens = 200
	req.Format = &runtime.ResponseFormat{Type: runtime.FormatJSONSchema, Name: "pick", Schema: json.RawMessage(netSchema)}
	s, err := f.cs.Generate(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ns := s.(*service.NetStream)
	first := f.byPeer[ns.Worker()]
	got := recvTokens(t, s, after)
	<-stalled
	want, err := market.Cost(market.Price{Completion: first.price.Completion}, 0, after)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the voucher for the delivered tokens", func() bool {
		b, _ := first.payee.Balance(first.channel)
		return b == want
	})
	f.kill(first)

	rest, err := drain(s)
	if err != nil {
		t.Fatalf("stream after the kill: %v", err)
	}
	as := ns.Attempts()
	if len(as) != 2 || as[0].Err == nil || as[1].Err != nil {
		t.Fatalf("attempts %+v; want the killed worker's failed one, then a finished one", as)
	}
	joined := got.text + rest.text
	if err := checkNetSchema(joined); err != nil {
		t.Errorf("joined answer %q (%q before the kill): %v", joined, got.text, err)
	}
	t.Logf("%q + %q", got.text, rest.text)
	checkBalances(t, f, map[peer.ID][]market.Receipt{
		first.node.Host.ID(): {as[0].Receipt}, as[1].Candidate.Peer: {as[1].Receipt},
	})
}
