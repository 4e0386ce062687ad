package main

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/cocoon-network/cocoon/runtime/openaiapi"
	"github.com/cocoon-network/cocoon/testnet"
)

// pageState is what the browser test reads of the status page, through the DOM
// the browser built (after the page's own script swapped in its live part).
type pageState struct {
	Peers []struct {
		ID, Jobs, Attest, LastJob string
	}
	Done []struct {
		ID, Peer, Outcome string
	}
	Ads     []string
	Spent   string
	Earned  string
	ToClaim string
	Refresh string
	// Sim and Ledger are the visible text of the two marks ("" when absent or hidden).
	Sim, Ledger string
	// Marker is a flag the test sets on the window: still there, the page was
	// not reloaded.
	Marker bool
}

const readPage = `(() => {
  const rows = (sel) => Array.from(document.querySelectorAll(sel));
  const txt = (el, s) => { const c = el.querySelector(s); return c ? c.textContent.trim() : ""; };
  const vis = (id) => {
    const e = document.getElementById(id);
    if (!e) return "";
    const r = e.getBoundingClientRect(), st = getComputedStyle(e);
    return r.width > 0 && r.height > 0 && st.visibility !== "hidden" && st.display !== "none" ? e.innerText : "";
  };
  return {
    Peers: rows("#peers tbody tr[data-peer]").map(r => ({ID: r.dataset.peer, Jobs: txt(r, "td.jobs"), Attest: txt(r, "td.attest"), LastJob: txt(r, "td.lastjob")})),
    Done: rows("#jobs-done tbody tr[data-job]").map(r => ({ID: r.dataset.job, Peer: r.dataset.peer, Outcome: txt(r, "td.outcome")})),
    Ads: rows("#ads tbody tr[data-worker]").map(r => r.dataset.worker),
    Spent: txt(document, "#spent"),
    Earned: txt(document, "#earned"),
    ToClaim: txt(document, "#to-claim"),
    Refresh: txt(document, "#refresh"),
    Sim: vis("mark-sim"), Ledger: vis("mark-devledger"),
    Marker: window.__cocoonNoReload === 1,
  };
})()`

// chromiumPath is Debian's headless Chromium that `make deps` installs
// (scripts/chromium.sh) and the Makefile names in $COCOON_CHROMIUM.
func chromiumPath(t *testing.T) string {
	t.Helper()
	p := os.Getenv("COCOON_CHROMIUM")
	if p == "" {
		t.Fatal("COCOON_CHROMIUM is not set: run `make deps` (scripts/chromium.sh installs Debian's chromium-headless-shell and prints its path), then run the tests through make or export COCOON_CHROMIUM=$(sh scripts/chromium.sh)")
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("COCOON_CHROMIUM=%s: %v; run `make deps`", p, err)
	}
	return p
}

// artifactDir is where tests keep what a person should look at afterwards:
// $COCOON_ARTIFACTS, or <repo>/.artifacts.
func artifactDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("COCOON_ARTIFACTS")
	if dir == "" {
		dir, _ = filepath.Abs("../../.artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestStatusPage drives headless Chromium against a real local testnet (a dev
// ledger, a client node and two sim workers, all separate processes): it opens
// the client's status page with ?token=, buys one chat completion through the
// client's gateway, and sees — without a reload — the job appear in the jobs
// table and the worker's row of the peers table change; the sim TEE and dev
// ledger marks are visible. The screenshot is kept in the artifacts folder.
func TestStatusPage(t *testing.T) {
	chromium := chromiumPath(t)
	start := time.Now()
	c := startTestnet(t, 3, 2)
	client, workers := c.Nodes[0], c.Nodes[1:]
	t.Logf("testnet up in %s", time.Since(start).Round(time.Millisecond))

	var browserOut bytes.Buffer
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox, // the tests run as root, where Chromium's sandbox cannot start
		chromedp.DisableGPU,
		chromedp.WindowSize(1440, 1000),
		// Nothing but 127.0.0.1: every other host name fails to resolve.
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"),
		chromedp.CombinedOutput(&browserOut),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(allocCtx)
	defer cancel()
	fail := func(format string, args ...any) {
		t.Helper()
		clientLog, _ := os.ReadFile(client.Log)
		t.Fatalf(format+"\n--- browser output:\n%s\n--- client node log (tail):\n%s", append(args, lastBytes(browserOut.Bytes(), 2000), lastBytes(clientLog, 3000))...)
	}

	// Every request the page makes, to check that it stays on the node.
	var mu sync.Mutex
	var requests []string
	if err := chromedp.Listen(ctx, func(ev any) {
		if e, ok := ev.(*network.EventRequestWillBeSent); ok {
			mu.Lock()
			requests = append(requests, e.Request.URL)
			mu.Unlock()
		}
	}); err != nil {
		fail("start Chromium %s: %v", chromium, err)
	}
	// The sign-in URL as a user gets it: `cocoon status --page-url`.
	pageURL, _, err := run(t, "status", "--datadir", client.Datadir, "--page-url")
	pageURL = strings.TrimSpace(pageURL)
	if err != nil || pageURL != client.URL+"/?token="+url.QueryEscape(client.Token) {
		fail("cocoon status --page-url: %q, %v; want %s/?token=<its token>", pageURL, err, client.URL)
	}
	// The first Run starts the browser: no timeout on it (see chromedp.Run).
	if err := chromedp.Do(ctx, chromedp.Navigate(pageURL)); err != nil {
		fail("open the status page: %v", err)
	}
	step, stepCancel := context.WithTimeout(ctx, 45*time.Second)
	defer stepCancel()
	loc, err := chromedp.Run(step, chromedp.Location())
	if err != nil || loc != client.URL+"/" {
		fail("after sign-in the page is at %q (%v); want %s/ without the token", loc, err, client.URL)
	}
	if _, err := chromedp.Run(step, chromedp.Evaluate[chromedp.Void](`window.__cocoonNoReload = 1`)); err != nil {
		fail("mark the window: %v", err)
	}
	// waitPage polls the page in tab (as the browser shows it) until cond holds.
	waitPage := func(tab context.Context, d time.Duration, what string, cond func(pageState) bool) pageState {
		t.Helper()
		deadline := time.Now().Add(d)
		for {
			st, err := chromedp.Run(tab, chromedp.Evaluate[pageState](readPage))
			if err != nil {
				fail("read the page: %v", err)
			}
			if cond(st) {
				return st
			}
			if time.Now().After(deadline) {
				fail("timed out after %s waiting for the page to show %s; it shows %+v", d, what, st)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	row := func(st pageState, id string) (jobs, attest string, ok bool) {
		for _, p := range st.Peers {
			if p.ID == id {
				return p.Jobs, p.Attest, true
			}
		}
		return "", "", false
	}

	// Before any job: both workers are in the peers and ads tables, with no job
	// and no attestation, and the jobs table is empty. The page's script is
	// already refreshing it (with the cookie, not the token).
	before := waitPage(step, 10*time.Second, "both workers and a live refresh", func(st pageState) bool {
		_, _, ok0 := row(st, workers[0].PeerID)
		_, _, ok1 := row(st, workers[1].PeerID)
		return ok0 && ok1 && len(st.Ads) == 2 && strings.HasPrefix(st.Refresh, "live · updated")
	})
	for _, w := range workers {
		if jobs, attest, _ := row(before, w.PeerID); jobs != "0" || !strings.Contains(attest, "not attested") {
			fail("before any job, worker %s's row shows jobs %q, attestation %q", w.Name, jobs, attest)
		}
	}
	if len(before.Done) != 0 {
		fail("before any job, the jobs table lists %+v", before.Done)
	}

	// One chat completion through the client's gateway, as any program sends it.
	worker, cost := chat(t, client)
	t.Logf("chat answered by %s for %d nanoTON", worker, cost)

	after := waitPage(step, 15*time.Second, "the job and the worker's changed row", func(st pageState) bool {
		jobs, attest, _ := row(st, worker)
		return len(st.Done) == 1 && jobs == "1" && strings.Contains(attest, "sim")
	})
	if d := after.Done[0]; d.Peer != worker || d.Outcome != "ok" {
		fail("jobs table row %+v; want an ok job with %s", d, worker)
	}
	if _, attest, _ := row(after, worker); attest != "sim (not confidential)" {
		fail("worker's attestation cell %q; want the sim tier", attest)
	}
	if want := groupDigitsForTest(cost); after.Spent != want {
		fail("page shows %q spent; the answer cost %d nanoTON (%q)", after.Spent, cost, want)
	}
	if !after.Marker {
		fail("the page was reloaded: the window lost the test's marker")
	}
	if !strings.Contains(after.Sim, "simulated TEE — NOT confidential") || !strings.Contains(after.Ledger, "dev ledger — simulated chain, not TON") {
		fail("marks not visible: sim %q, dev ledger %q", after.Sim, after.Ledger)
	}

	screenshot := func(tab context.Context, name, what string) {
		t.Helper()
		png, err := chromedp.Run(tab, chromedp.FullScreenshot(100))
		if err != nil {
			fail("screenshot: %v", err)
		}
		shot := filepath.Join(artifactDir(t), name)
		if err := os.WriteFile(shot, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot of %s: %s", what, shot)
	}
	screenshot(step, "statuspage.png", "the client's status page after the job")

	// The worker that answered, in a second tab: it earned what the client
	// spent, can claim it from its channel, and marks its own sim TEE.
	var served *testnet.Proc
	for _, w := range workers {
		if w.PeerID == worker {
			served = w
		}
	}
	if served == nil {
		fail("the answer names worker %q, not one of the testnet's", worker)
	}
	tab, cancelTab := chromedp.NewContext(ctx)
	defer cancelTab()
	if err := chromedp.Do(tab, chromedp.Navigate(served.URL+"/?token="+url.QueryEscape(served.Token))); err != nil {
		fail("open the worker's status page: %v", err)
	}
	tabStep, cancelTabStep := context.WithTimeout(tab, 15*time.Second)
	defer cancelTabStep()
	want := groupDigitsForTest(cost)
	ws := waitPage(tabStep, 10*time.Second, "the worker's earnings", func(st pageState) bool { return st.Earned == want && st.ToClaim == want })
	if !strings.Contains(ws.Sim, "attestation is signed by a local key") || !strings.Contains(ws.Ledger, "dev ledger — simulated chain, not TON") {
		fail("worker page marks: sim %q, dev ledger %q", ws.Sim, ws.Ledger)
	}
	screenshot(tabStep, "statuspage-worker.png", "the worker's status page after the job")

	mu.Lock()
	defer mu.Unlock()
	for _, u := range requests {
		if !strings.HasPrefix(u, client.URL+"/") && !strings.HasPrefix(u, "data:") {
			t.Errorf("the client's page requested %s, outside its node", u)
		}
	}
	t.Logf("the client's page made %d requests, all to %s; whole test %s", len(requests), client.URL, time.Since(start).Round(time.Millisecond))
}

// chat buys one short chat completion through node p's gateway with its bearer
// token and returns the worker that answered and what it cost.
func chat(t *testing.T, p *testnet.Proc) (worker string, cost uint64) {
	t.Helper()
	greedy, n := 0.0, 16
	cc, by, err := p.API().ChatCompletion(context.Background(), openaiapi.ChatCompletionRequest{Model: "stories260K", MaxTokens: &n, Temperature: &greedy,
		Messages: []openaiapi.ChatMessage{{Role: "user", Content: "Tell me a story"}}})
	if err != nil {
		t.Fatalf("chat completion: %v", err)
	}
	if len(cc.Choices) == 0 || cc.Choices[0].Message.Content == "" || cc.Usage == nil || cc.Usage.CostNanoTON == nil || *cc.Usage.CostNanoTON == 0 {
		t.Fatalf("chat completion without text or cost: %+v", cc)
	}
	return by.Worker, *cc.Usage.CostNanoTON
}

// groupDigitsForTest writes n as the page does: groups of three digits
// separated by a narrow no-break space.
func groupDigitsForTest(n uint64) string {
	s := fmt.Sprint(n)
	var b strings.Builder
	for i := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteString("\u202f")
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func lastBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
