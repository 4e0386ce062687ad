package gateway

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/cocoon-network/cocoon/runtime"
)

// modelsBackend serves models with one-delta answers whose stream names who
// answered (as the network's streams do) and counts its requests.
type modelsBackend struct {
	models     []string
	worker     string // X-Cocoon-Worker on its streams; "": no header
	calls      *int
	structured bool // every model offers structured output
}

func (b modelsBackend) Close() error { return nil }
func (b modelsBackend) Models() []runtime.Model {
	var out []runtime.Model
	for _, m := range b.models {
		out = append(out, runtime.Model{ID: m, StructuredOutput: b.structured})
	}
	return out
}
func (b modelsBackend) Generate(ctx context.Context, r runtime.Request) (runtime.Stream, error) {
	*b.calls++
	s := &tickStream{b: tickBackend{n: 1}, ctx: ctx}
	if b.worker == "" {
		return s, nil
	}
	return localStream{s, http.Header{"X-Cocoon-Worker": {b.worker}}}, nil
}

// TestRoute: a model the node runs itself is answered by its own backend under
// its own name and tier; every other model, and every model on a client-only
// node, is bought on the network.
func TestRoute(t *testing.T) {
	var localCalls, netCalls int
	local := modelsBackend{models: []string{"mine", "both"}, calls: &localCalls, structured: true}
	network := backendNet{modelsBackend{models: []string{"theirs", "both"}, worker: "w1", calls: &netCalls}}
	self := Local{Backend: local, Worker: "self", TEE: "sim (not confidential)"}
	chat := func(t *testing.T, s *Server, model string) http.Header {
		t.Helper()
		body := strings.NewReader(`{"model":"` + model + `","messages":[{"role":"user","content":"hi"}]}`)
		req := httptest.NewRequest("POST", "/v1/chat/completions", body)
		req.Header.Set("Authorization", "Bearer "+testToken)
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			t.Fatalf("chat %s = %d; want 200\n%s", model, rec.Code, rec.Body)
		}
		return rec.Header()
	}

	s := New(testToken, &fakeInfo{}, nil, WithV1(network, self))
	for _, tc := range []struct {
		model, worker, tee string
		local, net         int // calls after the request
	}{
		{"mine", "self", "sim (not confidential)", 1, 0},
		{"both", "self", "sim (not confidential)", 2, 0}, // never bought from another
		{"theirs", "w1", "", 2, 1},
	} {
		h := chat(t, s, tc.model)
		if h.Get("X-Cocoon-Worker") != tc.worker || h.Get("X-Cocoon-TEE") != tc.tee {
			t.Errorf("chat %s: answered by %q (TEE %q); want %q (%q)", tc.model, h.Get("X-Cocoon-Worker"), h.Get("X-Cocoon-TEE"), tc.worker, tc.tee)
		}
		if localCalls != tc.local || netCalls != tc.net {
			t.Errorf("after chat %s: %d local, %d network requests; want %d, %d", tc.model, localCalls, netCalls, tc.local, tc.net)
		}
	}

	// /v1/models: the network's, then the local ones nobody sells; a model
	// this node runs follows a response format as its own backend does.
	req := httptest.NewRequest("GET", "/v1/models", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, req)
	var list struct {
		Data []struct {
			ID         string `json:"id"`
			Local      bool   `json:"local"`
			Structured *bool  `json:"structured_output"`
		} `json:"data"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &list); err != nil {
		t.Fatalf("GET /v1/models: %v\n%s", err, rec.Body)
	}
	var got []string
	for _, m := range list.Data {
		if local := m.ID != "theirs"; local != (m.Structured != nil && *m.Structured) {
			t.Errorf("GET /v1/models: %s structured_output %v; want %v", m.ID, m.Structured, local)
		}
		if m.Local {
			got = append(got, m.ID+" (local)")
		} else {
			got = append(got, m.ID)
		}
	}
	if want := []string{"theirs", "both", "mine (local)"}; !slices.Equal(got, want) {
		t.Errorf("GET /v1/models = %v; want %v", got, want)
	}

	// A client-only node buys everything.
	localCalls, netCalls = 0, 0
	s = New(testToken, &fakeInfo{}, nil, WithV1(network, Local{Worker: "self"}))
	if h := chat(t, s, "mine"); h.Get("X-Cocoon-Worker") != "w1" || localCalls != 0 || netCalls != 1 {
		t.Errorf("client-only chat mine: answered by %q, %d local, %d network requests; want w1, 0, 1", h.Get("X-Cocoon-Worker"), localCalls, netCalls)
	}
}
