package openaiapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/cocoon-network/cocoon/internal/testmodel"
	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

func post(t *testing.T, url, body string) *http.Response {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func decode[T any](t *testing.T, r io.Reader) T {
	t.Helper()
	var v T
	if err := json.NewDecoder(r).Decode(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// events reads a whole SSE answer: the data of each event, and whether [DONE] ended it.
func events(t *testing.T, r io.Reader) (data [][]byte, done bool) {
	t.Helper()
	er := openaiapi.NewEventReader(r, 0)
	for {
		d, isDone, err := er.Next()
		if err == io.EOF {
			return data, done
		}
		if err != nil {
			t.Fatalf("event stream: %v", err)
		}
		if isDone {
			done = true
			continue
		}
		data = append(data, append([]byte(nil), d...))
	}
}

func direct(t *testing.T, b runtime.Backend, req runtime.Request) (string, runtime.Usage, string) {
	t.Helper()
	s, err := b.Generate(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var text string
	for {
		d, err := s.Recv()
		if err == io.EOF {
			return text, s.Usage(), s.FinishReason()
		}
		if err != nil {
			t.Fatal(err)
		}
		text += d.Text
	}
}

func TestLlamaCPPBehindHandler(t *testing.T) {
	lb := testmodel.Backend(t, 1)
	srv := httptest.NewServer(openaiapi.NewHandler(lb))
	defer srv.Close()
	wantText, wantUsage, wantFinish := direct(t, lb, runtime.Request{Model: testmodel.ModelID, Prompt: "once upon a time", MaxTokens: 24})
	wantU := openaiapi.Usage{PromptTokens: wantUsage.PromptTokens, CompletionTokens: wantUsage.CompletionTokens, TotalTokens: wantUsage.PromptTokens + wantUsage.CompletionTokens}

	t.Run("completion", func(t *testing.T) {
		resp := post(t, srv.URL+"/v1/completions", `{"model":"stories260K","prompt":"once upon a time","max_tokens":24,"temperature":0}`)
		c := decode[openaiapi.Completion](t, resp.Body)
		if resp.StatusCode != 200 || c.Object != "text_completion" || len(c.Choices) != 1 || c.Choices[0].Text != wantText ||
			*c.Choices[0].FinishReason != wantFinish || *c.Usage != wantU || !strings.HasPrefix(c.ID, "cmpl-") {
			t.Fatalf("got %d %+v; want text %q usage %+v", resp.StatusCode, c, wantText, wantU)
		}
	})
	t.Run("completion stream", func(t *testing.T) {
		resp := post(t, srv.URL+"/v1/completions", `{"model":"stories260K","prompt":["once upon a time"],"max_tokens":24,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}`)
		if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
			t.Fatalf("Content-Type %q", ct)
		}
		evs, done := events(t, resp.Body)
		var text string
		for i, e := range evs {
			c := decode[openaiapi.Completion](t, bytes.NewReader(e))
			if c.Object != "text_completion" {
				t.Fatalf("event %d: object %q", i, c.Object)
			}
			if i == len(evs)-1 {
				if len(c.Choices) != 0 || c.Usage == nil || *c.Usage != wantU {
					t.Fatalf("last event %s; want the usage %+v", e, wantU)
				}
				continue
			}
			text += c.Choices[0].Text
		}
		if text != wantText || !done {
			t.Fatalf("streamed %q (done %v); want %q and [DONE]", text, done, wantText)
		}
	})
	t.Run("chat stream", func(t *testing.T) {
		msgs := []runtime.Message{{Role: "user", Content: "Tell me a story."}}
		wantText, wantUsage, _ := direct(t, lb, runtime.Request{Model: testmodel.ModelID, Messages: msgs, MaxTokens: 16})
		resp := post(t, srv.URL+"/v1/chat/completions", `{"model":"stories260K","messages":[{"role":"user","content":[{"type":"text","text":"Tell me a story."}]}],"max_completion_tokens":16,"temperature":0,"stream":true}`)
		evs, done := events(t, resp.Body)
		var text, finish string
		for i, e := range evs {
			c := decode[openaiapi.ChatCompletionChunk](t, bytes.NewReader(e))
			if c.Object != "chat.completion.chunk" || c.Usage != nil || len(c.Choices) != 1 {
				t.Fatalf("event %d: %s", i, e)
			}
			if i == 0 && c.Choices[0].Delta.Role != "assistant" {
				t.Fatalf("first event %s; want the assistant role", e)
			}
			if c.Choices[0].Delta.Content != nil {
				text += *c.Choices[0].Delta.Content
			}
			if f := c.Choices[0].FinishReason; f != nil {
				finish = *f
			}
		}
		if text != wantText || finish != "length" || !done || wantUsage.CompletionTokens != 16 {
			t.Fatalf("streamed %q finish %q done %v; want %q length", text, finish, done, wantText)
		}
	})
	t.Run("models", func(t *testing.T) {
		resp, err := http.Get(srv.URL + "/v1/models")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		l := decode[openaiapi.ModelList](t, resp.Body)
		want := openaiapi.Model{ID: "stories260K", Object: "model", OwnedBy: "cocoon", ContextLength: 2048,
			Digest: "sha256:270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d"}
		if l.Object != "list" || len(l.Data) != 1 || l.Data[0].ID != want.ID || l.Data[0].Digest != want.Digest || l.Data[0].ContextLength != 2048 {
			t.Fatalf("models %+v; want %+v", l, want)
		}
	})
}

// fake is a backend whose streams replay fixed deltas and then an error or EOF.
type fake struct {
	deltas []runtime.Delta
	end    error
	genErr error
	header http.Header
	cost   uint64
}

func (f *fake) Models() []runtime.Model { return []runtime.Model{{ID: "m", ContextLength: 100}} }
func (f *fake) Close() error            { return nil }
func (f *fake) Generate(ctx context.Context, req runtime.Request) (runtime.Stream, error) {
	if f.genErr != nil {
		return nil, f.genErr
	}
	if req.Model != "m" {
		return nil, runtime.ErrUnknownModel
	}
	s := &fakeStream{f: f}
	if f.header != nil {
		return &hookedStream{s}, nil
	}
	return s, nil
}

type fakeStream struct {
	f *fake
	i int
}

func (s *fakeStream) Recv() (runtime.Delta, error) {
	if s.i < len(s.f.deltas) {
		s.i++
		return s.f.deltas[s.i-1], nil
	}
	if s.f.end != nil {
		return runtime.Delta{}, s.f.end
	}
	return runtime.Delta{}, io.EOF
}
func (s *fakeStream) Usage() runtime.Usage {
	return runtime.Usage{PromptTokens: 3, CompletionTokens: len(s.f.deltas)}
}
func (s *fakeStream) FinishReason() string { return runtime.FinishStop }
func (s *fakeStream) Close() error         { return nil }

// hookedStream is a gateway-like stream: it names its worker and its cost.
type hookedStream struct{ *fakeStream }

func (h *hookedStream) Header() http.Header { return h.f.header }
func (h *hookedStream) CostNanoTON() uint64 { return h.f.cost }

func TestHooks(t *testing.T) {
	f := &fake{deltas: []runtime.Delta{{Text: "Hi", Tokens: 1}, {Text: " there", Tokens: 1}},
		header: http.Header{"X-Cocoon-Worker": {"12D3KooWtest"}, "X-Cocoon-Tee": {"sim"}}, cost: 1234}
	// Through Limit, as a node would wrap it: the hooks are found through Unwrap.
	srv := httptest.NewServer(openaiapi.NewHandler(runtime.Limit(f, 2, 0)))
	defer srv.Close()
	resp := post(t, srv.URL+"/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
	c := decode[openaiapi.ChatCompletion](t, resp.Body)
	if resp.Header.Get("X-Cocoon-Worker") != "12D3KooWtest" || resp.Header.Get("X-Cocoon-Tee") != "sim" {
		t.Errorf("headers %v; want the stream's", resp.Header)
	}
	if c.Usage == nil || c.Usage.CostNanoTON == nil || *c.Usage.CostNanoTON != 1234 || c.Choices[0].Message.Content != "Hi there" {
		t.Errorf("answer %+v; want cost_nanoton 1234", c)
	}
	resp = post(t, srv.URL+"/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}`)
	evs, _ := events(t, resp.Body)
	if last := string(evs[len(evs)-1]); !strings.Contains(last, `"cost_nanoton":1234`) || resp.Header.Get("X-Cocoon-Worker") == "" {
		t.Errorf("stream: last event %s, headers %v; want cost and worker", last, resp.Header)
	}
	// Without the hooks there is no cost field.
	plain := httptest.NewServer(openaiapi.NewHandler(&fake{deltas: f.deltas}))
	defer plain.Close()
	resp = post(t, plain.URL+"/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
	if b, _ := io.ReadAll(resp.Body); bytes.Contains(b, []byte("cost_nanoton")) {
		t.Errorf("answer without the hook has a cost: %s", b)
	}
}

func TestMidStreamError(t *testing.T) {
	f := &fake{deltas: []runtime.Delta{{Text: "Hel", Tokens: 1}}, end: errors.Join(runtime.ErrUpstream, errors.New("worker vanished"))}
	srv := httptest.NewServer(openaiapi.NewHandler(f))
	defer srv.Close()
	resp := post(t, srv.URL+"/v1/completions", `{"model":"m","prompt":"x","stream":true,"stream_options":{"include_usage":true}}`)
	evs, done := events(t, resp.Body)
	last := decode[openaiapi.ErrorResponse](t, bytes.NewReader(evs[len(evs)-1]))
	if done || !strings.Contains(last.Error.Message, "worker vanished") || last.Error.Type != "server_error" {
		t.Fatalf("events %q done %v; want an error event and no [DONE]", evs, done)
	}
	for _, e := range evs {
		if bytes.Contains(e, []byte(`"usage"`)) {
			t.Fatalf("failed stream sent usage: %s", e)
		}
	}
	// Not streaming: the error is the answer.
	resp = post(t, srv.URL+"/v1/completions", `{"model":"m","prompt":"x"}`)
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("status %d; want 502", resp.StatusCode)
	}
}

func TestErrorAnswers(t *testing.T) {
	lim := runtime.Limit(&fake{}, 1, -1)
	srv := httptest.NewServer(openaiapi.NewHandler(lim))
	defer srv.Close()
	big := `{"model":"m","prompt":"` + strings.Repeat("a", openaiapi.MaxBodyBytes) + `"}`
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		typ, code, param         string
	}{
		{"malformed json", "POST", "/v1/chat/completions", `{"model":`, 400, "invalid_request_error", "", ""},
		{"not an object", "POST", "/v1/chat/completions", `[1,2]`, 400, "invalid_request_error", "", ""},
		{"trailing data", "POST", "/v1/completions", `{"model":"m","prompt":"x"} {}`, 400, "invalid_request_error", "", ""},
		{"no model", "POST", "/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}]}`, 400, "invalid_request_error", "", "model"},
		{"no messages", "POST", "/v1/chat/completions", `{"model":"m"}`, 400, "invalid_request_error", "", "messages"},
		{"bad role", "POST", "/v1/chat/completions", `{"model":"m","messages":[{"role":"robot","content":"hi"}]}`, 400, "invalid_request_error", "", "messages"},
		{"wrong type", "POST", "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":"ten"}`, 400, "invalid_request_error", "", "max_tokens"},
		{"n=2", "POST", "/v1/completions", `{"model":"m","prompt":"x","n":2}`, 400, "invalid_request_error", "unsupported_value", "n"},
		{"temperature", "POST", "/v1/completions", `{"model":"m","prompt":"x","temperature":9}`, 400, "invalid_request_error", "", "temperature"},
		{"five stops", "POST", "/v1/completions", `{"model":"m","prompt":"x","stop":["a","b","c","d","e"]}`, 400, "invalid_request_error", "", "stop"},
		{"token prompt", "POST", "/v1/completions", `{"model":"m","prompt":[1,2,3]}`, 400, "invalid_request_error", "", ""},
		{"unknown model", "POST", "/v1/completions", `{"model":"gpt-9","prompt":"x"}`, 404, "invalid_request_error", "model_not_found", "model"},
		{"too large", "POST", "/v1/completions", big, 413, "invalid_request_error", "request_too_large", ""},
		{"wrong method", "GET", "/v1/chat/completions", "", 405, "invalid_request_error", "", ""},
		{"unknown path", "POST", "/v1/audio/speech", "{}", 404, "invalid_request_error", "unknown_url", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, srv.URL+tc.path, strings.NewReader(tc.body))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			e := decode[openaiapi.ErrorResponse](t, resp.Body)
			code, param := "", ""
			if e.Error.Code != nil {
				code = *e.Error.Code
			}
			if e.Error.Param != nil {
				param = *e.Error.Param
			}
			if resp.StatusCode != tc.status || e.Error.Type != tc.typ || code != tc.code || param != tc.param || e.Error.Message == "" {
				t.Fatalf("%d %+v (code %q param %q); want %d %s code %q param %q", resp.StatusCode, e.Error, code, param, tc.status, tc.typ, tc.code, tc.param)
			}
		})
	}

	// Busy: the one slot is taken and there is no queue.
	s, err := lim.Generate(context.Background(), runtime.Request{Model: "m", Prompt: "x"})
	if err != nil {
		t.Fatal(err)
	}
	resp := post(t, srv.URL+"/v1/completions", `{"model":"m","prompt":"x"}`)
	e := decode[openaiapi.ErrorResponse](t, resp.Body)
	if resp.StatusCode != http.StatusServiceUnavailable || e.Error.Code == nil || *e.Error.Code != "busy" {
		t.Fatalf("busy: %d %+v; want 503 busy", resp.StatusCode, e)
	}
	s.Close()
	if resp := post(t, srv.URL+"/v1/completions", `{"model":"m","prompt":"x"}`); resp.StatusCode != 200 {
		t.Fatalf("after the slot was freed: %d", resp.StatusCode)
	}
}

// netErr is a gateway's network-side error with its own status and code, as
// market.NoWorkerError is.
type netErr struct {
	status int
	code   string
}

func (e netErr) Error() string     { return fmt.Sprintf("no worker finished (%d)", e.status) }
func (e netErr) HTTPStatus() int   { return e.status }
func (e netErr) ErrorCode() string { return e.code }

// TestNetworkFailureStatus: failures on the network's side are answered 502,
// 503 or 504 with their code (OpenAI clients retry those), whether the backend
// fails at once or after the stream began (not streaming).
func TestNetworkFailureStatus(t *testing.T) {
	for _, ne := range []netErr{{502, "no_worker_finished"}, {503, "no_worker_available"}, {504, "timeout"}} {
		for _, f := range []*fake{
			{genErr: ne},
			{deltas: []runtime.Delta{{Text: "Hel", Tokens: 1}}, end: fmt.Errorf("%w: %w", runtime.ErrUpstream, ne)},
		} {
			srv := httptest.NewServer(openaiapi.NewHandler(f))
			resp := post(t, srv.URL+"/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
			e := decode[openaiapi.ErrorResponse](t, resp.Body)
			srv.Close()
			if resp.StatusCode != ne.status || e.Error.Code == nil || *e.Error.Code != ne.code || e.Error.Type != "server_error" {
				t.Errorf("%v (at start %v): %d %+v; want %d %s", ne, f.genErr != nil, resp.StatusCode, e.Error, ne.status, ne.code)
			}
		}
	}
}

// slowReader returns some bytes, then the timeout a connection's read
// deadline gives.
type slowReader struct{ sent bool }

func (r *slowReader) Read(p []byte) (int, error) {
	if !r.sent {
		r.sent = true
		return copy(p, `{"model":"m","mess`), nil
	}
	return 0, os.ErrDeadlineExceeded
}

// TestBodyTimeout: a body cut by the server's read deadline is answered 408
// (which clients retry) and the connection is not kept.
func TestBodyTimeout(t *testing.T) {
	h := openaiapi.NewHandler(&fake{})
	for _, path := range []string{"/v1/chat/completions", "/v1/completions"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("POST", path, &slowReader{}))
		e := decode[openaiapi.ErrorResponse](t, rec.Body)
		if rec.Code != http.StatusRequestTimeout || e.Error.Code == nil || *e.Error.Code != "request_timeout" || rec.Header().Get("Connection") != "close" {
			t.Errorf("%s with a timed-out body: %d %+v, Connection %q; want 408 request_timeout, close", path, rec.Code, e.Error, rec.Header().Get("Connection"))
		}
	}
}
