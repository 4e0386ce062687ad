package gateway

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/runtime"
)

const testToken = "0123456789abcdef0123456789abcdef"

// fakeInfo serves a fixed overview.
type fakeInfo struct{ ov Overview }

func (f *fakeInfo) Status() Status     { return Status{PeerID: f.ov.Node.PeerID} }
func (f *fakeInfo) Peers() []Peer      { return nil }
func (f *fakeInfo) Overview() Overview { return f.ov }

const (
	workerID = "12D3KooWWorkerAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA1"
	clientID = "12D3KooWClientBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB2"
)

// testnetOverview is a client node of a testnet (accepts sim, dev ledger) that
// bought one job.
func testnetOverview() Overview {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	return Overview{
		Time: now,
		Node: NodeInfo{
			PeerID: clientID, Version: "v-test", UptimeSeconds: 3725, Role: "client",
			Addrs: []string{"/ip4/127.0.0.1/tcp/4001"}, TEE: "none", TEETier: "none (not confidential)",
			AcceptTEE: []string{"sim"}, AcceptsSim: true,
			Chain: "devledger (simulated chain, not TON) at http://127.0.0.1:9", DevLedger: true,
			Models: []Model{},
		},
		Peers: []PeerRow{{
			Peer:      Peer{ID: workerID, Addrs: []string{"/ip4/127.0.0.1/udp/4002/quic-v1"}, Direction: "outbound", LatencyMS: 0.42},
			Connected: true, Jobs: 2, OK: 1, LastJob: now.Add(-3 * time.Second), Spent: 1234567,
			TTFTMS: 12.5, Verdict: "accepted", TEE: "sim", Tier: "sim (not confidential)", Worker: true,
		}},
		Ads: []AdRow{{
			Worker: workerID, TEE: "sim", Sim: true, Slots: Slots{Total: 2, Free: 1},
			Models: []AdModel{{ID: "stories260K", PromptPrice: 1_000_000, CompletionPrice: 3_000_000, TTFTMS: 4}},
			GPUs:   []GPU{}, Issued: now.Add(-time.Minute), Expiry: now.Add(4 * time.Minute),
		}},
		InFlight: []JobRow{{ID: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", Side: "client", Peer: workerID, Model: "stories260K", Start: now.Add(-time.Second), NanoTON: 17}},
		Done: []JobRow{
			{ID: "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", Side: "client", Peer: workerID, Model: "stories260K", Start: now.Add(-5 * time.Second), End: now.Add(-3 * time.Second),
				TTFTMS: 12.5, DurationMS: 80, PromptTokens: 5, CompletionTokens: 24, NanoTON: 77, Outcome: "ok"},
			{ID: "cccccccccccccccccccccccccccccccc", Side: "client", Peer: workerID, Model: "stories260K", Start: now.Add(-9 * time.Second), End: now.Add(-8 * time.Second),
				Outcome: "failed", Error: `worker said <script>alert(1)</script>`},
		},
		Channels: Channels{
			Payer: []PayerChannel{{ID: "0f", Address: "EQChannelPayerAddressXXXXXXXXXXXXXXXXXXXXXXXXXXXX", Worker: workerID, Deposit: 1_000_000_000, Sent: 77, Left: 1_000_000_000 - 77, Seqno: 3, Updated: now}},
			Payee: []PayeeChannel{},
		},
		Money:     Money{SpentNanoTON: 1234567, JobsBought: 2, TokensBought: 24, DepositedNanoTON: 1_000_000_000, SentNanoTON: 77},
		GPUs:      []GPU{},
		GPUReason: "no NVIDIA driver (NVML not found)",
	}
}

// plainOverview is a worker on a real TEE settling nowhere: no marks.
func plainOverview() Overview {
	ov := testnetOverview()
	ov.Node.Role, ov.Node.TEE, ov.Node.TEETier = "worker", "tdx", "tdx (confidential)"
	ov.Node.AcceptTEE, ov.Node.AcceptsSim = []string{"tdx", "sev-snp"}, false
	ov.Node.Chain, ov.Node.DevLedger = "none", false
	ov.Ads[0].TEE, ov.Ads[0].Sim = "tdx", false
	ov.Peers[0].TEE, ov.Peers[0].Tier = "tdx", "tdx (confidential)"
	return ov
}

// countingBackend counts the requests that reach the network behind /v1.
type countingBackend struct {
	tickBackend
	calls *int
}

func (b countingBackend) Generate(ctx context.Context, r runtime.Request) (runtime.Stream, error) {
	*b.calls++
	return b.tickBackend.Generate(ctx, r)
}

func newTestServer(t *testing.T, ov Overview) (*Server, *httptest.Server, *int) {
	t.Helper()
	v1Calls := new(int)
	s := New(testToken, &fakeInfo{ov: ov}, nil,
		WithV1(backendNet{countingBackend{tickBackend{n: 1}, v1Calls}}, Local{}),
		WithMetrics(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "metrics") })))
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	return s, ts, v1Calls
}

var noRedirect = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func do(t *testing.T, method, u string, mod func(*http.Request)) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	if mod != nil {
		mod(req)
	}
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// signIn does GET /?token= and returns the cookie it set.
func signIn(t *testing.T, ts *httptest.Server) *http.Cookie {
	t.Helper()
	resp, _ := do(t, "GET", ts.URL+"/?token="+url.QueryEscape(testToken), nil)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" {
		t.Fatalf("GET /?token=<right> = %s, Location %q; want 303 to /", resp.Status, resp.Header.Get("Location"))
	}
	cs := resp.Cookies()
	if len(cs) != 1 {
		t.Fatalf("GET /?token= set %d cookies; want 1", len(cs))
	}
	c := cs[0]
	if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/" {
		t.Fatalf("cookie %s: HttpOnly %v, SameSite %v, Path %q; want HttpOnly, Strict, /", c.Name, c.HttpOnly, c.SameSite, c.Path)
	}
	if strings.Contains(c.Value, testToken) || strings.Contains(c.Name, testToken) {
		t.Fatalf("cookie %s=%s carries the token itself", c.Name, c.Value)
	}
	return c
}

func TestStatusPageAuth(t *testing.T) {
	_, ts, v1Calls := newTestServer(t, testnetOverview())
	cookie := signIn(t, ts)
	withCookie := func(r *http.Request) { r.AddCookie(cookie) }
	withBearer := func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+testToken) }
	chatWithBearer := func(r *http.Request) {
		withBearer(r)
		r.Body, r.ContentLength = io.NopCloser(strings.NewReader(chatBody)), int64(len(chatBody))
	}
	forged := func(r *http.Request) {
		r.AddCookie(&http.Cookie{Name: cookie.Name, Value: strings.Repeat("0", len(cookie.Value))})
	}
	otherNode := func(r *http.Request) { // the cookie another node (another token) set
		s2 := New("another-token-0123456789", &fakeInfo{}, nil)
		r.AddCookie(&http.Cookie{Name: s2.cookieName(), Value: cookieHash(cookieValueDomain, "another-token-0123456789")})
	}

	for _, tc := range []struct {
		name, method, path string
		mod                func(*http.Request)
		want               int
	}{
		{"page without anything", "GET", "/", nil, 401},
		{"page with a wrong token", "GET", "/?token=nope", nil, 401},
		{"page with the cookie", "GET", "/", withCookie, 200},
		{"page with the bearer", "GET", "/", withBearer, 200},
		{"page with a forged cookie", "GET", "/", forged, 401},
		{"page with another node's cookie", "GET", "/", otherNode, 401},
		{"overview JSON with the cookie", "GET", "/api/v0/overview", withCookie, 200},
		{"live part with the cookie", "GET", "/api/v0/overview.html", withCookie, 200},
		{"status with the cookie", "GET", "/api/v0/status", withCookie, 200},
		{"overview without anything", "GET", "/api/v0/overview", nil, 401},
		// The cookie never authorizes what is not a GET of / or /api/v0 (CSRF).
		{"page HEAD with the cookie", "HEAD", "/", withCookie, 401},
		{"overview POST with the cookie", "POST", "/api/v0/overview", withCookie, 401},
		{"chat with the cookie", "POST", "/v1/chat/completions", withCookie, 401},
		{"models with the cookie", "GET", "/v1/models", withCookie, 401},
		{"metrics with the cookie", "GET", "/metrics", withCookie, 401},
		{"metrics with the bearer", "GET", "/metrics", withBearer, 200},
		{"chat with the bearer", "POST", "/v1/chat/completions", chatWithBearer, 200},
		{"unknown page with the cookie", "GET", "/other", withCookie, 401},
	} {
		resp, body := do(t, tc.method, ts.URL+tc.path, tc.mod)
		if resp.StatusCode != tc.want {
			t.Errorf("%s: %s %s = %s; want %d\n%.300s", tc.name, tc.method, tc.path, resp.Status, tc.want, body)
		}
	}
	if *v1Calls != 1 {
		t.Fatalf("/v1 handler ran %d times; want once (the bearer's call only)", *v1Calls)
	}

	// The browser's 401 says where the token is and how to open the page.
	resp, body := do(t, "GET", ts.URL+"/", nil)
	u, _ := url.Parse(ts.URL)
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Fatalf("401 page Content-Type %q; want HTML", ct)
	}
	for _, want := range []string{"api.token", "http://" + u.Host + "/?token=", "Authorization: Bearer"} {
		if !strings.Contains(body, want) {
			t.Errorf("401 page lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, testToken) {
		t.Fatal("401 page shows the token")
	}
	// An API client without the token still gets the OpenAI-style JSON error.
	resp, body = do(t, "GET", ts.URL+"/api/v0/overview", nil)
	if !strings.Contains(resp.Header.Get("Content-Type"), "json") || !strings.Contains(body, "invalid_api_key") {
		t.Fatalf("API 401 = %s %q; want the JSON error", resp.Header.Get("Content-Type"), body)
	}
}

func TestStatusPageRendersData(t *testing.T) {
	_, ts, _ := newTestServer(t, testnetOverview())
	resp, body := do(t, "GET", ts.URL+"/", func(r *http.Request) { r.AddCookie(signIn(t, ts)) })
	if resp.StatusCode != 200 {
		t.Fatalf("GET / = %s", resp.Status)
	}
	for _, want := range []string{
		`data-peer="` + workerID + `"`,                      // the peers table's row
		`<td class="num jobs">2 <span class="muted">(1 ok)`, // its jobs, from the journal
		`sim (not confidential)`,                            // its attestation tier
		`stories260K`,                                       // the ad's model
		"1\u202f000\u202f000", "3\u202f000\u202f000",        // its prices, nanoTON per 1M tokens
		`data-job="aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"`, // in flight
		`data-job="bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"`, // done
		`5 / 24`, // its tokens
		`worker said &lt;script&gt;alert(1)&lt;/script&gt;`, // the error, escaped
		"1\u202f234\u202f567",                               // spent
		"999\u202f999\u202f923",                             // what the payer channel has left
		`no NVIDIA driver (NVML not found)`,                 // why no GPU
		"1h02m",                                             // uptime
		`id="peers"`, `id="ads"`, `id="jobs-inflight"`, `id="jobs-done"`, `id="channels-payer"`, `id="channels-payee"`, `id="money"`, `id="gpus"`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(body, "<script>alert(1)") {
		t.Fatal("page carries an unescaped error text")
	}
	// Only our own inline code runs: the CSP's nonce is the script's, and
	// nothing is fetched from elsewhere.
	csp := resp.Header.Get("Content-Security-Policy")
	m := regexp.MustCompile(`script-src 'nonce-([^']+)'`).FindStringSubmatch(csp)
	if m == nil || !strings.Contains(body, `<script nonce="`+m[1]+`"`) || !strings.Contains(csp, "default-src 'none'") {
		t.Fatalf("CSP %q does not match the page's script nonce", csp)
	}
	if strings.Contains(body, "https://") || strings.Contains(body, "src=\"http") {
		t.Fatal("page refers to an outside resource")
	}
	if !strings.Contains(body, `fetch("/api/v0/overview.html"`) {
		t.Fatal("page lacks its refresh script")
	}

	// The live part is the same tables alone.
	_, live := do(t, "GET", ts.URL+"/api/v0/overview.html", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+testToken) })
	if strings.Contains(live, "<html") || strings.Contains(live, "<script") || !strings.Contains(live, `data-peer="`+workerID+`"`) || !strings.Contains(live, `id="jobs-done"`) {
		t.Fatalf("live part:\n%.500s", live)
	}
}

func TestStatusPageMarks(t *testing.T) {
	const simMark, ledgerMark = "simulated TEE — NOT confidential", "dev ledger — simulated chain, not TON"
	bearer := func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+testToken) }

	_, ts, _ := newTestServer(t, testnetOverview())
	_, body := do(t, "GET", ts.URL+"/", bearer)
	for _, want := range []string{`id="mark-sim"`, simMark, `id="mark-devledger"`, ledgerMark, "buys from workers whose TEE is simulated"} {
		if !strings.Contains(body, want) {
			t.Errorf("testnet client page lacks %q", want)
		}
	}

	simWorker := testnetOverview()
	simWorker.Node.Role, simWorker.Node.TEE, simWorker.Node.SimTEE = "worker", "sim", true
	_, ts, _ = newTestServer(t, simWorker)
	_, body = do(t, "GET", ts.URL+"/", bearer)
	if !strings.Contains(body, "This node's attestation is signed by a local key") {
		t.Errorf("sim worker page lacks its own sim mark")
	}

	_, ts, _ = newTestServer(t, plainOverview())
	_, body = do(t, "GET", ts.URL+"/", bearer)
	for _, bad := range []string{"mark-sim", "mark-devledger", "simulated TEE", "NOT confidential", "dev ledger", "simulated chain"} {
		if strings.Contains(body, bad) {
			t.Errorf("page of a tdx node settling nowhere shows %q", bad)
		}
	}
	if !strings.Contains(body, "tdx (confidential)") {
		t.Error("page of a tdx node does not name its TEE")
	}
}

func TestOverviewJSON(t *testing.T) {
	_, ts, _ := newTestServer(t, testnetOverview())
	resp, body := do(t, "GET", ts.URL+"/api/v0/overview", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+testToken) })
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("GET /api/v0/overview = %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"time", "node", "peers", "ads", "inflight", "done", "channels", "money", "gpus", "gpu_reason"} {
		if _, ok := m[k]; !ok {
			t.Errorf("overview JSON lacks %q", k)
		}
	}
	node := m["node"].(map[string]any)
	for k, want := range map[string]any{"peer_id": clientID, "role": "client", "tee": "none", "accepts_sim": true, "dev_ledger": true, "sim_tee": false, "uptime_seconds": 3725.0} {
		if node[k] != want {
			t.Errorf("node.%s = %v; want %v", k, node[k], want)
		}
	}
	peer := m["peers"].([]any)[0].(map[string]any)
	for k, want := range map[string]any{"id": workerID, "direction": "outbound", "latency_ms": 0.42, "connected": true, "jobs": 2.0, "verdict": "accepted", "tier": "sim (not confidential)", "spent_nanoton": 1234567.0} {
		if peer[k] != want {
			t.Errorf("peers[0].%s = %v; want %v", k, peer[k], want)
		}
	}
	ad := m["ads"].([]any)[0].(map[string]any)
	model := ad["models"].([]any)[0].(map[string]any)
	if ad["tee"] != "sim" || ad["sim"] != true || model["prompt_price"] != 1e6 || model["completion_price"] != 3e6 {
		t.Errorf("ads[0] = %v", ad)
	}
	done := m["done"].([]any)[0].(map[string]any)
	if done["outcome"] != "ok" || done["completion_tokens"] != 24.0 || done["nanoton"] != 77.0 || done["end"] == nil {
		t.Errorf("done[0] = %v", done)
	}
	if in := m["inflight"].([]any)[0].(map[string]any); in["end"] != nil || in["outcome"] != nil {
		t.Errorf("inflight[0] has an end or an outcome: %v", in)
	}
	ch := m["channels"].(map[string]any)
	if p := ch["payer"].([]any)[0].(map[string]any); p["deposit_nanoton"] != 1e9 || p["sent_nanoton"] != 77.0 || p["left_nanoton"] != 1e9-77 {
		t.Errorf("channels.payer[0] = %v", p)
	}
	if ch["payee"] == nil {
		t.Error("channels.payee is null; want []")
	}
	money := m["money"].(map[string]any)
	if money["spent_nanoton"] != 1234567.0 || money["earned_nanoton"] != 0.0 {
		t.Errorf("money = %v", money)
	}
}

func TestPageFormats(t *testing.T) {
	for n, want := range map[uint64]string{0: "0", 999: "999", 1000: "1\u202f000", 1234567: "1\u202f234\u202f567", 18446744073709551615: "18\u202f446\u202f744\u202f073\u202f709\u202f551\u202f615"} {
		if got := groupDigits(n); got != want {
			t.Errorf("groupDigits(%d) = %q; want %q", n, got, want)
		}
	}
	for n, want := range map[uint64]string{0: "0", 1: "0.000000001", 1_500_000_000: "1.5", 1_000_000_000: "1", 18446744073709551615: "18446744073.709551615"} {
		if got := tonString(n); got != want {
			t.Errorf("tonString(%d) = %q; want %q", n, got, want)
		}
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		t    time.Time
		want string
	}{
		{time.Time{}, "—"}, {now.Add(-5 * time.Second), "5s ago"}, {now.Add(-61 * time.Second), "1m01s ago"},
		{now.Add(4 * time.Minute), "in 4m00s"}, {now.Add(-50 * time.Hour), "2d ago"},
	} {
		if got := sinceString(now, tc.t); got != tc.want {
			t.Errorf("sinceString(%v) = %q; want %q", tc.t, got, tc.want)
		}
	}
	for ms, want := range map[float64]string{0: "—", 0.42: "0.4 ms", 94: "94 ms", 5521: "5.52 s", 12345: "12.3 s"} {
		if got := msString(ms); got != want {
			t.Errorf("msString(%v) = %q; want %q", ms, got, want)
		}
	}
	if got := countString(1, "job") + ", " + countString(0, "job"); got != "1 job, 0 jobs" {
		t.Errorf("countString = %q", got)
	}
	if got := shortID(workerID); got != "12D3KooW…AAAAA1" {
		t.Errorf("shortID = %q", got)
	}
}

// What one refresh of the status page costs the node to render (the data
// gathering is the node's), for an overview of 50 peers, ads and jobs.
func BenchmarkStatusPageLive(b *testing.B) {
	ov := testnetOverview()
	for len(ov.Peers) < 50 {
		ov.Peers = append(ov.Peers, ov.Peers[0])
		ov.Ads = append(ov.Ads, ov.Ads[0])
		ov.Done = append(ov.Done, ov.Done[0])
	}
	s := New(testToken, &fakeInfo{ov: ov}, nil)
	h := s.Handler()
	req := httptest.NewRequest("GET", "/api/v0/overview.html", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	b.ReportAllocs()
	var n int
	for b.Loop() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != 200 {
			b.Fatalf("status %d", w.Code)
		}
		n = w.Body.Len()
	}
	b.ReportMetric(float64(n), "bytes/page")
}
