package local

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

const token = "0123456789abcdef0123456789abcdef"

// fakeNode answers the local API the way a node's gateway does, for the calls
// the client makes.
func fakeNode(t *testing.T) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v0/status", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"peer_id":"12D3KooWtest","addrs":["/ip4/127.0.0.1/tcp/1/p2p/12D3KooWtest"],"peers":2,"models":[{"id":"m","digest":"sha256:00","context_length":512}]}`)
	})
	mux.HandleFunc("GET /api/v0/peers", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `[{"id":"a","addrs":["/ip4/127.0.0.1/tcp/2"],"direction":"outbound","latency_ms":1.5}]`)
	})
	mux.HandleFunc("GET /v1/models", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"object":"list","data":[{"id":"m","object":"model","created":0,"owned_by":"cocoon","workers":3,"tee":["sim"]},{"id":"own","object":"model","local":true}]}`)
	})
	mux.HandleFunc("POST /v1/chat/completions", func(w http.ResponseWriter, r *http.Request) {
		req, _, err := openaiapi.DecodeChatRequest(r.Body)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"error":{"message":"`+err.Error()+`","type":"invalid_request_error"}}`)
			return
		}
		w.Header().Set("X-Cocoon-Worker", "w1")
		w.Header().Set("X-Cocoon-TEE", "sim (not confidential)")
		prompt := string(req.Messages[0].Content)
		if !req.Stream {
			io.WriteString(w, `{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"echo `+prompt+`"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"cost_nanoton":7}}`)
			return
		}
		if req.StreamOptions == nil || !req.StreamOptions.IncludeUsage {
			t.Errorf("a streamed chat without include_usage")
		}
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"echo \"}}]}\n\n")
		switch prompt {
		case "break":
			io.WriteString(w, "data: {\"error\":{\"message\":\"worker gone\",\"type\":\"server_error\"}}\n\n")
		case "cut":
		default:
			io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\""+prompt+"\"}}]}\n\n")
			io.WriteString(w, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3,\"cost_nanoton\":7}}\n\n")
			io.WriteString(w, "data: [DONE]\n\n")
		}
	})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"error":{"message":"missing or wrong bearer token","type":"unauthorized"}}`)
			return
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// datadir writes the files a running node leaves for its clients.
func datadir(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "api.addr"), []byte(strings.TrimPrefix(srv.URL, "http://")+"\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "api.token"), []byte(token+"\n"), 0o600)
	return dir
}

func TestFromDatadir(t *testing.T) {
	srv := fakeNode(t)
	c, err := FromDatadir(datadir(t, srv))
	if err != nil || c.BaseURL != srv.URL || c.Token != token {
		t.Fatalf("FromDatadir = %+v, %v; want %s with the token", c, err, srv.URL)
	}
	if _, err := FromDatadir(t.TempDir()); err == nil || !strings.Contains(err.Error(), "no running node") {
		t.Fatalf("FromDatadir(an empty dir) = %v; want no running node", err)
	}
}

func TestNodeCalls(t *testing.T) {
	ctx := context.Background()
	srv := fakeNode(t)
	c := New(srv.URL, token)
	st, err := c.Status(ctx)
	if err != nil || st.PeerID != "12D3KooWtest" || st.Peers != 2 || len(st.Models) != 1 || st.Models[0].ContextLength != 512 {
		t.Fatalf("Status = %+v, %v", st, err)
	}
	ps, err := c.Peers(ctx)
	if err != nil || len(ps) != 1 || ps[0].ID != "a" || ps[0].LatencyMS != 1.5 {
		t.Fatalf("Peers = %+v, %v", ps, err)
	}
	ms, err := c.Models(ctx)
	if err != nil || len(ms) != 2 || ms[0].ID != "m" || Workers(ms[0]) != 3 || Workers(ms[1]) != 0 || ms[1].Extra["local"] != true {
		t.Fatalf("Models = %+v, %v", ms, err)
	}
	if _, ok := ms[0].Extra["owned_by"]; ok {
		t.Fatalf("Models kept a standard field in Extra: %+v", ms[0].Extra)
	}

	_, err = New(srv.URL, "wrong").Status(ctx)
	var e *Error
	if !errors.As(err, &e) || e.StatusCode != http.StatusUnauthorized ||
		err.Error() != "GET /api/v0/status: 401 Unauthorized: missing or wrong bearer token" {
		t.Fatalf("Status with a wrong token = %v; want a 401 *Error with the gateway's message", err)
	}
	srv.Close()
	if _, err := c.Peers(ctx); err == nil || !strings.Contains(err.Error(), "unreachable (is the node running?)") {
		t.Fatalf("Peers of a stopped node = %v; want unreachable", err)
	}
}

func TestChat(t *testing.T) {
	ctx := context.Background()
	c := New(fakeNode(t).URL, token)
	msg := func(s string) openaiapi.ChatCompletionRequest {
		return openaiapi.ChatCompletionRequest{Model: "m", Messages: []openaiapi.ChatMessage{{Role: "user", Content: openaiapi.Content(s)}}}
	}
	cc, by, err := c.ChatCompletion(ctx, msg("hi"))
	if err != nil || len(cc.Choices) != 1 || cc.Choices[0].Message.Content != "echo hi" || *cc.Usage.CostNanoTON != 7 ||
		by != (Served{Worker: "w1", TEE: "sim (not confidential)"}) {
		t.Fatalf("ChatCompletion = %+v, %+v, %v", cc, by, err)
	}
	_, _, err = c.ChatCompletion(ctx, openaiapi.ChatCompletionRequest{Model: "m"})
	var e *Error
	if !errors.As(err, &e) || e.StatusCode != 400 || e.Type != "invalid_request_error" || !strings.HasPrefix(err.Error(), "400 Bad Request: ") {
		t.Fatalf("ChatCompletion without messages = %v; want a 400 *Error", err)
	}

	read := func(prompt string) (string, *openaiapi.Usage, error) {
		s, err := c.StreamChatCompletion(ctx, msg(prompt))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if s.Worker != "w1" {
			t.Fatalf("stream served by %q", s.Worker)
		}
		var text string
		var usage *openaiapi.Usage
		for {
			ch, err := s.Next()
			if err == io.EOF {
				return text, usage, nil
			}
			if err != nil {
				return text, usage, err
			}
			for _, c := range ch.Choices {
				if c.Delta.Content != nil {
					text += *c.Delta.Content
				}
			}
			if ch.Usage != nil {
				usage = ch.Usage
			}
		}
	}
	if text, usage, err := read("hi"); err != nil || text != "echo hi" || usage == nil || *usage.CostNanoTON != 7 {
		t.Fatalf("streamed: %q, %+v, %v", text, usage, err)
	}
	if _, _, err := read("break"); !errors.Is(err, ErrBrokenOff) || !strings.Contains(err.Error(), "worker gone") {
		t.Fatalf("a stream with an error event: %v; want ErrBrokenOff naming the message", err)
	}
	if _, _, err := read("cut"); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("a stream cut before [DONE]: %v; want io.ErrUnexpectedEOF", err)
	}
}
