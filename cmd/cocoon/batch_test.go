package main

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
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/internal/testmodel"
	"github.com/cocoon-network/cocoon/testnet"
)

// TestBatchBadInputSendsNothing runs the command on a file with one bad line:
// one line naming the line and field, a non-zero exit, and no output file (the
// datadir has no node: nothing was even looked up).
func TestBatchBadInputSendsNothing(t *testing.T) {
	const goodLine = `{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"hi"}]}}`
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.jsonl"), filepath.Join(dir, "out.jsonl")
	os.WriteFile(in, []byte(goodLine+"\n"+`{"custom_id":"h","method":"POST","url":"/v1/embeddings","body":{"model":"m","input":"x"}}`+"\n"), 0o644)
	_, stderr, err := run(t, "batch", in, "-o", out, "--datadir", filepath.Join(dir, "none"))
	if err == nil || strings.Count(strings.TrimSpace(stderr), "\n") != 0 ||
		!strings.Contains(stderr, "line 2: url:") || !strings.Contains(stderr, "nothing was sent") {
		t.Fatalf("batch with a bad line 2: %v, stderr %q; want one line naming line 2's url", err, stderr)
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the output file exists after a refused input: %v", err)
	}
}

// batchOut is what the test reads of an output line.
type batchOut struct {
	ID       string          `json:"id"`
	CustomID string          `json:"custom_id"`
	Error    json.RawMessage `json:"error"`
	Response struct {
		StatusCode int               `json:"status_code"`
		RequestID  string            `json:"request_id"`
		Headers    map[string]string `json:"headers"`
		Body       json.RawMessage   `json:"body"`
	} `json:"response"`
}

// answerText is the text and cost of a chat or completion answer body.
func answerText(t *testing.T, body []byte) (string, uint64) {
	t.Helper()
	var a struct {
		Choices []struct {
			Text    *string `json:"text"`
			Message *struct {
				Content string `json:"content"`
			} `json:"message"`
		} `json:"choices"`
		Usage struct {
			CostNanoTON *uint64 `json:"cost_nanoton"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(body, &a); err != nil || len(a.Choices) != 1 || a.Usage.CostNanoTON == nil {
		t.Fatalf("answer %s: %v", body, err)
	}
	if a.Choices[0].Message != nil {
		return a.Choices[0].Message.Content, *a.Usage.CostNanoTON
	}
	if a.Choices[0].Text == nil {
		t.Fatalf("answer %s has no text", body)
	}
	return *a.Choices[0].Text, *a.Usage.CostNanoTON
}

func countLines(path string) int {
	b, _ := os.ReadFile(path)
	return bytes.Count(b, []byte("\n"))
}

var batchSummary = regexp.MustCompile(`batch: (\d+) of (\d+) done: (\d+) answered now(?: \(\d+ with an error status\))?, (\d+) skipped as already finished, (\d+) failed; (\d+) nanoTON spent`)

// parseSummary reads done, total, answered now, skipped, failed and spent from
// the summary line.
func parseSummary(t *testing.T, out string) [6]uint64 {
	t.Helper()
	m := batchSummary.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no summary line in %q", out)
	}
	var v [6]uint64
	for i := range v {
		v[i], _ = strconv.ParseUint(m[i+1], 10, 64)
	}
	return v
}

// writeBatchInput writes n requests for the test model, distinct prompts at
// temperature 0 with 8 to 16 tokens, every tenth a /v1/completions one, and
// returns each custom_id's url and body.
func writeBatchInput(t testing.TB, path string, n int) map[string]string {
	t.Helper()
	var buf bytes.Buffer
	bodies := map[string]string{}
	for i := range n {
		id := fmt.Sprintf("req-%03d", i)
		url := "/v1/chat/completions"
		body := fmt.Sprintf(`{"model":"stories260K","messages":[{"role":"user","content":"Tell me story %d about %s"}],"max_tokens":%d,"temperature":0}`,
			i, []string{"a cat", "a dog", "the sea", "a red ball", "Lily"}[i%5], 8+i%9)
		if i%10 == 9 {
			url = "/v1/completions"
			body = fmt.Sprintf(`{"model":"stories260K","prompt":"Once upon a time, story %d,","max_tokens":%d,"temperature":0}`, i, 8+i%9)
		}
		bodies[id] = url + " " + body
		fmt.Fprintf(&buf, `{"custom_id":%q,"method":"POST","url":%q,"body":%s}`+"\n", id, url, body)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return bodies
}

// TestBatchInterruptResume runs a 200-line batch with `cocoon batch` against a
// real local testnet of 3 workers and a client, interrupts it with SIGINT
// halfway, re-runs it to finish the rest, and checks that every request was
// answered exactly once, by its own answer, across all 3 workers, and that what
// the output says was spent is what the workers can claim.
func TestBatchInterruptResume(t *testing.T) {
	c := startTestnet(t, 4, 3)
	dir := c.Dir
	client := c.Nodes[0]
	workers := map[string]bool{}
	for _, w := range c.Nodes[1:] {
		workers[w.PeerID] = true
	}

	const n = 200
	in, out := filepath.Join(dir, "in.jsonl"), filepath.Join(dir, "out.jsonl")
	bodies := writeBatchInput(t, in, n)

	// First run: SIGINT once about half the answers are in.
	start := time.Now()
	first := exec.Command(bin, "batch", in, "-o", out, "--datadir", client.Datadir)
	stdout1, stderr1 := &syncBuffer{}, &syncBuffer{}
	first.Stdout, first.Stderr = stdout1, stderr1
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- first.Wait() }()
	t.Cleanup(func() { first.Process.Kill() })
	waitFor(t, 90*time.Second, "half the answers in OUT", func() bool { return countLines(out) >= n/2 })
	first.Process.Signal(syscall.SIGINT)
	var err error
	select {
	case err = <-exited:
	case <-time.After(45 * time.Second):
		t.Fatalf("batch still running 45 s after SIGINT; stderr:\n%s", stderr1)
	}
	done1 := countLines(out)
	t.Logf("first run: %d lines in %s; stdout %q", done1, time.Since(start).Round(time.Millisecond), stdout1)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("interrupted batch exited with %v; want a non-zero exit", err)
	}
	want := fmt.Sprintf("interrupted: %d of %d done; run the same command again to finish the rest", done1, n)
	if !strings.Contains(stderr1.String(), want) {
		t.Fatalf("interrupted batch's stderr lacks %q:\n%s", want, stderr1)
	}
	if done1 >= n || done1 < n/2 {
		t.Fatalf("%d lines after the interrupt; want at least %d and fewer than %d", done1, n/2, n)
	}
	// stderr is no terminal here: plain progress lines, no bar redrawn with \r.
	if strings.Contains(stderr1.String(), "\r") || !regexp.MustCompile(`batch: \d+/200 done, [\d.]+ req/s, ETA`).MatchString(stderr1.String()) {
		t.Fatalf("progress on a non-terminal stderr:\n%q", stderr1)
	}
	s1 := parseSummary(t, stdout1.String())
	if s1[0] != uint64(done1) || s1[2] != uint64(done1) || s1[3] != 0 || s1[4] != 0 {
		t.Fatalf("first run's summary %v; want %d answered, none skipped or failed", s1, done1)
	}

	// Second run: only the rest is sent.
	t2 := time.Now()
	stdout2, stderr2, err := run(t, "batch", in, "-o", out, "--datadir", client.Datadir)
	if err != nil {
		t.Fatalf("re-run: %v\n%s%s", err, stdout2, stderr2)
	}
	t.Logf("second run: %s; %s", time.Since(t2).Round(time.Millisecond), strings.TrimSpace(stdout2))
	s2 := parseSummary(t, stdout2)
	if s2[0] != n || s2[1] != n || s2[2] != uint64(n-done1) || s2[3] != uint64(done1) || s2[4] != 0 {
		t.Fatalf("re-run summary %v; want %d done, %d answered now, %d skipped, 0 failed", s2, n, n-done1, done1)
	}

	// The output: exactly one line per custom_id, each answered by a worker.
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) != n {
		t.Fatalf("%d output lines; want %d", len(lines), n)
	}
	got := map[string]batchOut{}
	seenWorkers := map[string]int{}
	var spent uint64
	for i, l := range lines {
		var o batchOut
		if err := json.Unmarshal([]byte(l), &o); err != nil {
			t.Fatalf("output line %d %q: %v", i+1, l, err)
		}
		if _, dup := got[o.CustomID]; dup {
			t.Fatalf("custom_id %q answered twice", o.CustomID)
		}
		if bodies[o.CustomID] == "" {
			t.Fatalf("output line %d has custom_id %q, not in the input", i+1, o.CustomID)
		}
		if !strings.HasPrefix(o.ID, "batch_req_") || string(o.Error) != "null" || o.Response.StatusCode != 200 || o.Response.RequestID == "" {
			t.Fatalf("output line %d: %s", i+1, l)
		}
		w := o.Response.Headers["x-cocoon-worker"]
		if !workers[w] || !strings.Contains(o.Response.Headers["x-cocoon-tee"], "sim") {
			t.Fatalf("output line %d answered by %q (TEE %q); want one of the sim workers", i+1, w, o.Response.Headers["x-cocoon-tee"])
		}
		seenWorkers[w]++
		_, cost := answerText(t, o.Response.Body)
		spent += cost
		got[o.CustomID] = o
	}
	if len(got) != n {
		t.Fatalf("%d distinct custom_ids; want %d", len(got), n)
	}
	if len(seenWorkers) != 3 {
		t.Fatalf("answers by %d workers (%v); want all 3", len(seenWorkers), seenWorkers)
	}
	t.Logf("answers per worker: %v", seenWorkers)
	if s1[5]+s2[5] != spent {
		t.Fatalf("the runs say %d + %d nanoTON spent; the output lines' costs add up to %d", s1[5], s2[5], spent)
	}

	// Every answer is its own request's: re-sent at temperature 0, ten of them
	// (spread over the file, half of them completions) come back with the same text.
	var resent uint64
	for _, i := range []int{0, 9, 23, 49, 77, 99, 120, 149, 171, 199} {
		id := fmt.Sprintf("req-%03d", i)
		url, body, _ := strings.Cut(bodies[id], " ")
		resp, err := client.API().Do(context.Background(), http.MethodPost, url, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		again, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("re-sending %s: %s %s", id, resp.Status, again)
		}
		text, cost := answerText(t, again)
		resent += cost
		if want, _ := answerText(t, got[id].Response.Body); text != want || text == "" {
			t.Fatalf("%s (%s) re-sent answers %q; the batch wrote %q", id, url, text, want)
		}
	}

	// Money: what the client paid and what the workers can claim both equal the
	// cost written in the output plus the ten re-sent requests.
	checkBooks(t, c, spent+resent)
}

// fakeGateway is a node API that answers batch requests by their prompt: "bad"
// gets a 400 with OpenAI's error body; "drop" has its connection closed without
// an answer the first time, "gone" every time; anything else a 200 with a cost of 5. It counts the
// requests in flight at once.
type fakeGateway struct {
	mu               sync.Mutex
	inFlight, most   int
	dropped, handled map[string]int
}

func (g *fakeGateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+strings.Repeat("ab", 16) {
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	if r.URL.Path == "/v1/models" {
		w.Write([]byte(`{"object":"list","data":[{"id":"m","object":"model","workers":2}]}`))
		return
	}
	var body struct{ Prompt string }
	json.NewDecoder(r.Body).Decode(&body)
	g.mu.Lock()
	g.inFlight++
	g.most = max(g.most, g.inFlight)
	g.handled[body.Prompt]++
	drop := strings.HasPrefix(body.Prompt, "drop") && g.dropped[body.Prompt] == 0 || strings.HasPrefix(body.Prompt, "gone")
	if drop {
		g.dropped[body.Prompt]++
	}
	g.mu.Unlock()
	// The request leaves the count before the client can see its end: before
	// the cut connection closes, or the answer is flushed after this returns.
	leave := sync.OnceFunc(func() { g.mu.Lock(); g.inFlight--; g.mu.Unlock() })
	defer leave()
	time.Sleep(20 * time.Millisecond)
	switch {
	case drop:
		conn, _, _ := w.(http.Hijacker).Hijack()
		leave()
		conn.Close()
	case strings.HasPrefix(body.Prompt, "bad"):
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		w.Write([]byte(`{"error":{"message":"no & good","type":"invalid_request_error","param":null,"code":null}}`))
	default:
		w.Header().Set("X-Cocoon-Worker", "w1")
		w.Write([]byte(`{"id":"cmpl-1","object":"text_completion","choices":[{"text":"ok & fine","index":0}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2,"cost_nanoton":5}}`))
	}
}

// TestBatchErrorsAndRetries runs `cocoon batch` against a fake gateway: error
// answers are written with their status and body, requests whose connection was
// cut are not written, are reported with what to do, and are the only ones the
// re-run sends; as many requests run at once as the node says workers offer the
// model.
func TestBatchErrorsAndRetries(t *testing.T) {
	g := &fakeGateway{dropped: map[string]int{}, handled: map[string]int{}}
	srv := httptest.NewServer(g)
	defer srv.Close()
	dir := t.TempDir()
	datadir := filepath.Join(dir, "node")
	os.MkdirAll(datadir, 0o700)
	os.WriteFile(filepath.Join(datadir, "api.addr"), []byte(strings.TrimPrefix(srv.URL, "http://")), 0o600)
	os.WriteFile(filepath.Join(datadir, "api.token"), []byte(strings.Repeat("ab", 16)), 0o600)

	in, out := filepath.Join(dir, "in.jsonl"), filepath.Join(dir, "out.jsonl")
	var inBuf bytes.Buffer
	prompts := map[string]string{}
	for i := range 30 {
		p := fmt.Sprintf("ok %d", i)
		switch i % 10 {
		case 3:
			p = fmt.Sprintf("bad %d", i)
		case 7:
			p = fmt.Sprintf("drop %d", i)
		}
		id := fmt.Sprintf("r%d", i)
		prompts[id] = p
		fmt.Fprintf(&inBuf, `{"custom_id":%q,"method":"POST","url":"/v1/completions","body":{"model":"m","prompt":%q}}`+"\n", id, p)
	}
	os.WriteFile(in, inBuf.Bytes(), 0o644)

	stdout, stderr, err := run(t, "batch", in, "-o", out, "--datadir", datadir)
	if err == nil || !strings.Contains(stderr, "3 requests got no answer") || !strings.Contains(stderr, "run the same command again to retry them") {
		t.Fatalf("first run: %v; want a non-zero exit naming 3 unanswered requests; stdout %q stderr %q", err, stdout, stderr)
	}
	if s := parseSummary(t, stdout); s != [6]uint64{27, 30, 27, 0, 3, 24 * 5} {
		t.Fatalf("first run's summary %v (%q); want 27 of 30 done, 3 failed, 120 nanoTON", s, stdout)
	}
	if !strings.Contains(stdout, "(3 with an error status)") || !strings.Contains(stderr, "2 at a time (2 workers offer m)") {
		t.Fatalf("first run: stdout %q, stderr %q", stdout, stderr)
	}
	g.mu.Lock() // a dropped request's handler may still be finishing
	most := g.most
	g.mu.Unlock()
	if most != 2 {
		t.Fatalf("%d requests ran at once; the node said 2 workers offer the model", most)
	}
	stdout, stderr, err = run(t, "batch", in, "-o", out, "--datadir", datadir, "--parallel", "1")
	if err != nil {
		t.Fatalf("re-run: %v: %s%s", err, stdout, stderr)
	}
	if s := parseSummary(t, stdout); s != [6]uint64{30, 30, 3, 27, 0, 15} {
		t.Fatalf("re-run's summary %v (%q); want 3 answered now, 27 skipped", s, stdout)
	}
	b, _ := os.ReadFile(out)
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) != 30 {
		t.Fatalf("%d output lines; want 30", len(lines))
	}
	seen := map[string]bool{}
	for _, l := range lines {
		var o batchOut
		if err := json.Unmarshal([]byte(l), &o); err != nil || seen[o.CustomID] {
			t.Fatalf("output line %q: %v (or a second line for its custom_id)", l, err)
		}
		seen[o.CustomID] = true
		want := 200
		if strings.HasPrefix(prompts[o.CustomID], "bad") {
			want = 400
		}
		if o.Response.StatusCode != want || (want == 200) != (o.Response.Headers["x-cocoon-worker"] == "w1") {
			t.Fatalf("output line for %q (%q): %s", o.CustomID, prompts[o.CustomID], l)
		}
		if want == 400 && !strings.Contains(string(o.Response.Body), `"message":"no & good"`) {
			t.Fatalf("error body not kept as answered: %s", l)
		}
	}
	g.mu.Lock()
	for p, n := range g.handled {
		if want := 1 + g.dropped[p]; n != want {
			t.Errorf("%q sent %d times; want %d", p, n, want)
		}
	}
	g.mu.Unlock()

	// A node that stops answering: the run gives up after a few requests in a
	// row got no answer, instead of failing every remaining one.
	inBuf.Reset()
	for i := range 50 {
		fmt.Fprintf(&inBuf, `{"custom_id":"g%d","method":"POST","url":"/v1/completions","body":{"model":"m","prompt":"gone %d"}}`+"\n", i, i)
	}
	os.WriteFile(in, inBuf.Bytes(), 0o644)
	out = filepath.Join(dir, "out2.jsonl")
	stdout, stderr, err = run(t, "batch", in, "-o", out, "--datadir", datadir)
	s := parseSummary(t, stdout)
	if err == nil || !strings.Contains(stderr, "stopped after 5 requests in a row got no answer") || s[4] < 5 || s[4] > 7 || countLines(out) != 0 {
		t.Fatalf("a node answering nothing: %v, summary %v; want a stop after 5 to 7 failures, nothing written; stderr %q", err, s, stderr)
	}
}

// BenchmarkBatch runs the 200-line batch of TestBatchInterruptResume against a
// local testnet of 3 workers (testnet.Launch gives each worker its share of the CPUs), one
// request at a time and one per worker, and reports answered lines per second.
// It needs the environment `make bench` sets.
func BenchmarkBatch(b *testing.B) {
	model, lib := testmodel.ModelPath(b), testmodel.LibDir()
	dir := b.TempDir()
	c, err := testnet.Launch(context.Background(), testnet.LaunchConfig{Bin: bin, Dir: dir, Nodes: 4, Workers: 3, Model: model, LibDir: lib})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Stop() })
	const n = 200
	in := filepath.Join(dir, "in.jsonl")
	writeBatchInput(b, in, n)
	for _, parallel := range []string{"1", "0"} {
		name := "parallel=" + parallel
		if parallel == "0" {
			name = "parallel=workers"
		}
		b.Run(name, func(b *testing.B) {
			i := 0
			for b.Loop() {
				i++
				out := filepath.Join(dir, fmt.Sprintf("out-%s-%d.jsonl", parallel, i))
				cmd := exec.Command(bin, "batch", in, "-o", out, "--datadir", c.Nodes[0].Datadir, "--parallel", parallel)
				if msg, err := cmd.CombinedOutput(); err != nil || countLines(out) != n {
					b.Fatalf("batch: %v: %s", err, msg)
				}
			}
			b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "lines/s")
			b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/200lines")
		})
	}
}
