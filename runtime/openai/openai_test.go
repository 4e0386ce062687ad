package openai_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/internal/testmodel"
	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/openai"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

const prompt = "once upon a time"

type result struct {
	text   string
	tokens int
	usage  runtime.Usage
	finish string
}

func drain(t *testing.T, b runtime.Backend, req runtime.Request) (result, error) {
	t.Helper()
	s, err := b.Generate(context.Background(), req)
	if err != nil {
		return result{}, err
	}
	defer s.Close()
	var r result
	for {
		d, err := s.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			r.usage = s.Usage()
			return r, err
		}
		r.text += d.Text
		r.tokens += d.Tokens
	}
	r.usage, r.finish = s.Usage(), s.FinishReason()
	return r, nil
}

// ownServer is the project's llamacpp backend behind the project's OpenAI handler.
func ownServer(t *testing.T) (*httptest.Server, runtime.Backend) {
	lb := testmodel.Backend(t, 2)
	srv := httptest.NewServer(openaiapi.NewHandler(lb))
	t.Cleanup(srv.Close)
	return srv, lb
}

func TestStreamsFromOwnLlamaCPPServer(t *testing.T) {
	srv, direct := ownServer(t)
	b, err := openai.New(context.Background(), openai.Config{BaseURL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ms := b.Models()
	if len(ms) != 1 || ms[0].ID != testmodel.ModelID || ms[0].ContextLength != 2048 {
		t.Fatalf("Models() = %+v; want stories260K with 2048 tokens", ms)
	}
	for _, req := range []runtime.Request{
		{Model: testmodel.ModelID, Prompt: prompt, MaxTokens: 40},
		{Model: testmodel.ModelID, Prompt: prompt, MaxTokens: 40, Stop: []string{"Lily"}},
		{Model: testmodel.ModelID, Prompt: prompt, MaxTokens: 30, Temperature: 0.9, Seed: ptr(uint64(7))},
		{Model: testmodel.ModelID, Messages: []runtime.Message{{Role: "user", Content: "A story, please."}}, MaxTokens: 20},
	} {
		want, err := drain(t, direct, req)
		if err != nil {
			t.Fatal(err)
		}
		got, err := drain(t, b, req)
		if err != nil {
			t.Fatalf("via openai backend %+v: %v", req, err)
		}
		if got.text != want.text || got.usage != want.usage || got.finish != want.finish || got.tokens != want.usage.CompletionTokens {
			t.Errorf("request %.50v:\nvia HTTP %+v\ndirect   %+v", req, got, want)
		}
	}
	if _, err := b.Generate(context.Background(), runtime.Request{Model: "other", Prompt: "x"}); !errors.Is(err, runtime.ErrUnknownModel) {
		t.Errorf("unknown model: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }

// replay serves a recorded transcript as the answer to every completion request.
func replay(t *testing.T, file string) *httptest.Server {
	t.Helper()
	body, err := os.ReadFile(filepath.Join("testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/models" {
			io.WriteString(w, `{"object":"list","data":[{"id":"meta-llama/Llama-3.1-8B-Instruct","object":"model","created":1732531000,"owned_by":"vllm","root":"meta-llama/Llama-3.1-8B-Instruct","parent":null,"max_model_len":8192}]}`)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
		w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv
}

const vllmModel = "meta-llama/Llama-3.1-8B-Instruct"

func TestRecordedVLLMTranscripts(t *testing.T) {
	chat := runtime.Request{Model: vllmModel, Messages: []runtime.Message{{Role: "user", Content: "Tell me a story."}}, MaxTokens: 16}
	for _, tc := range []struct {
		file    string
		req     runtime.Request
		text    string
		usage   runtime.Usage
		finish  string
		wantErr error
		errText string
	}{
		{file: "vllm_chat_stream.sse", req: chat, text: "Once upon a time, a small fox named Pip lived by the river.",
			usage: runtime.Usage{PromptTokens: 21, CompletionTokens: 16}, finish: "length"},
		{file: "vllm_completion_stream.sse", req: runtime.Request{Model: vllmModel, Prompt: "Once upon a time"},
			text: ", there was a girl.", usage: runtime.Usage{PromptTokens: 4, CompletionTokens: 6}, finish: "stop"},
		{file: "vllm_chat_error.sse", req: chat, text: "Once upon a time,", wantErr: runtime.ErrUpstream, errText: "CUDA out of memory"},
		{file: "vllm_chat_no_usage.sse", req: chat, text: "Once upon a time, a small fox named Pip lived by the river.", wantErr: runtime.ErrUnbillable},
		{file: "vllm_chat_truncated.sse", req: chat, text: "Once upon a time, a", wantErr: runtime.ErrUpstream, errText: "unexpected EOF"},
		{file: "malformed.sse", req: chat, text: "Once", wantErr: runtime.ErrUpstream, errText: "malformed"},
		{file: "not_json.sse", req: chat, wantErr: runtime.ErrUpstream, errText: "not a completion chunk"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			srv := replay(t, tc.file)
			b, err := openai.New(context.Background(), openai.Config{BaseURL: srv.URL + "/v1/"})
			if err != nil {
				t.Fatal(err)
			}
			if ms := b.Models(); len(ms) != 1 || ms[0].ContextLength != 8192 {
				t.Fatalf("Models() = %+v; want one of 8192 tokens (max_model_len)", ms)
			}
			r, err := drain(t, b, tc.req)
			if r.text != tc.text {
				t.Errorf("text %q; want %q", r.text, tc.text)
			}
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.errText) {
					t.Fatalf("err = %v; want %v saying %q", err, tc.wantErr, tc.errText)
				}
				if r.usage != (runtime.Usage{}) {
					t.Fatalf("failed stream reports usage %+v; want none billed", r.usage)
				}
				return
			}
			if err != nil || r.usage != tc.usage || r.finish != tc.finish || r.tokens != tc.usage.CompletionTokens {
				t.Fatalf("got %+v, %v; want usage %+v finish %q", r, err, tc.usage, tc.finish)
			}
		})
	}
}

// With vLLM's continuous usage stats each delta carries its own tokens.
func TestContinuousUsage(t *testing.T) {
	srv := replay(t, "vllm_chat_continuous_usage.sse")
	b, err := openai.New(context.Background(), openai.Config{BaseURL: srv.URL, ContinuousUsage: true})
	if err != nil {
		t.Fatal(err)
	}
	s, err := b.Generate(context.Background(), runtime.Request{Model: vllmModel, Messages: []runtime.Message{{Role: "user", Content: "A story."}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var got []runtime.Delta
	for {
		d, err := s.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, d)
	}
	sum := 0
	for _, d := range got {
		if d.Text == "" || d.Tokens == 0 || (d.Text == " Pip") != (d.Tokens == 2) {
			t.Errorf("delta %+v; want text with its own tokens (2 for the merged \" Pip\")", d)
		}
		sum += d.Tokens
	}
	if sum != 15 || s.Usage() != (runtime.Usage{PromptTokens: 21, CompletionTokens: 15}) || len(got) != 14 {
		t.Fatalf("%d deltas summing to %d tokens, usage %+v; want 14 deltas, 15 tokens", len(got), sum, s.Usage())
	}
}

func TestHangingUpstream(t *testing.T) {
	models := `{"object":"list","data":[{"id":"m","object":"model","context_length":4096}]}`
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/models" {
			io.WriteString(w, models)
			return
		}
		io.Copy(io.Discard, r.Body) // so that the server notices the client hanging up
		switch r.Header.Get("X-Test") {
		case "headers": // never answers
		case "idle": // answers, sends one event, then nothing
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, `data: {"choices":[{"index":0,"text":"Hel","finish_reason":null}]}`+"\n\n")
			w.(http.Flusher).Flush()
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release) // before srv.Close, which waits for the handlers
	for _, phase := range []string{"headers", "idle"} {
		t.Run(phase, func(t *testing.T) {
			client := &http.Client{Transport: &headerTransport{phase}}
			b, err := openai.New(context.Background(), openai.Config{BaseURL: srv.URL, Client: client,
				FirstEventTimeout: 300 * time.Millisecond, IdleTimeout: 300 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			r, err := drain(t, b, runtime.Request{Model: "m", Prompt: "hi"})
			if !errors.Is(err, runtime.ErrUpstream) || !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("err = %v; want an upstream timeout", err)
			}
			if r.usage != (runtime.Usage{}) {
				t.Fatalf("usage %+v after a timeout; want none", r.usage)
			}
			t.Logf("%s: %v", phase, err)
		})
	}
}

// headerTransport marks requests with the behaviour the test server should show.
type headerTransport struct{ phase string }

func (h *headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("X-Test", h.phase)
	return http.DefaultTransport.RoundTrip(r)
}

func TestUpstreamUnreachableAndStatuses(t *testing.T) {
	// A port nobody listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	if _, err := openai.New(context.Background(), openai.Config{BaseURL: "http://" + addr}); !errors.Is(err, runtime.ErrUpstream) {
		t.Fatalf("New on a closed port: %v; want ErrUpstream", err)
	}

	var gotAuth string
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth = r.Header.Get("Authorization")
		if r.URL.Path == "/v1/models" {
			io.WriteString(w, `{"object":"list","data":[{"id":"m","object":"model","context_length":4096}]}`)
			return
		}
		w.WriteHeader(status)
		io.WriteString(w, `{"object":"error","message":"This model's maximum context length is 8192 tokens","type":"BadRequestError","param":null,"code":400}`)
	}))
	defer srv.Close()
	b, err := openai.New(context.Background(), openai.Config{BaseURL: srv.URL + "/v1", APIKey: "sk-test"})
	if err != nil {
		t.Fatal(err)
	}
	if gotAuth != "Bearer sk-test" {
		t.Errorf("Authorization = %q", gotAuth)
	}
	for _, tc := range []struct {
		status int
		want   error
	}{
		{http.StatusBadRequest, runtime.ErrInvalidRequest},
		{http.StatusNotFound, runtime.ErrUnknownModel},
		{http.StatusServiceUnavailable, runtime.ErrBusy},
		{http.StatusInternalServerError, runtime.ErrUpstream},
		{http.StatusOK, runtime.ErrUpstream}, // 200 but JSON, not an event stream
	} {
		status = tc.status
		_, err := b.Generate(context.Background(), runtime.Request{Model: "m", Prompt: "x"})
		if !errors.Is(err, tc.want) {
			t.Errorf("upstream %d: %v; want %v", tc.status, err, tc.want)
		}
		if tc.status == http.StatusBadRequest && !strings.Contains(err.Error(), "maximum context length") {
			t.Errorf("upstream 400: %v; want the upstream's message", err)
		}
	}
	if _, err := openai.New(context.Background(), openai.Config{BaseURL: srv.URL, Models: []string{"absent"}}); err == nil || !strings.Contains(err.Error(), `"absent"`) {
		t.Errorf("New with a model the upstream lacks: %v", err)
	}
}

func TestCancelStopsUpstream(t *testing.T) {
	srv, _ := ownServer(t)
	b, err := openai.New(context.Background(), openai.Config{BaseURL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s, err := b.Generate(ctx, runtime.Request{Model: testmodel.ModelID, Prompt: prompt, Temperature: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	cancel()
	for {
		_, err = s.Recv()
		if err != nil {
			break
		}
	}
	if !errors.Is(err, context.Canceled) || s.Usage() != (runtime.Usage{}) {
		t.Fatalf("after cancel: %v, usage %+v; want context.Canceled and nothing billed", err, s.Usage())
	}
}

// A context length the ads cannot carry (above 2^30, or negative) is refused
// at start, naming the model, instead of wrapping in the ad's uint32.
func TestUpstreamContextLengthBounded(t *testing.T) {
	for _, n := range []string{"4294967297", "-1"} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, `{"object":"list","data":[{"id":"m","object":"model","max_model_len":`+n+`}]}`)
		}))
		_, err := openai.New(context.Background(), openai.Config{BaseURL: srv.URL + "/v1"})
		srv.Close()
		if !errors.Is(err, runtime.ErrUpstream) || !strings.Contains(err.Error(), `"m"`) || !strings.Contains(err.Error(), n) {
			t.Errorf("context length %s: %v; want an upstream error naming the model and the value", n, err)
		}
	}
}
