package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/testnet"
)

// goldenBatchLines are input lines and what decodeBatchLine says of them: the
// field at fault ("" and ok: accepted). They seed FuzzBatchLine.
var goldenBatchLines = []struct {
	line  string
	ok    bool
	field string // the field an error names
}{
	{`{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"hi"}]}}`, true, ""},
	{`{"custom_id":"b","method":"POST","url":"/v1/completions","body":{"model":"m","prompt":"once","max_tokens":8,"temperature":0}}`, true, ""},
	{`{"custom_id":"c","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":false}}`, true, ""},
	{` {"body":{"model":"m","prompt":"x"},"url":"/v1/completions","method":"POST","custom_id":"d"} `, true, ""},
	{`{"custom_id":"e","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}}`, false, "body.stream"},
	{`{"method":"POST","url":"/v1/completions","body":{"model":"m","prompt":"x"}}`, false, "custom_id"},
	{`{"custom_id":"","method":"POST","url":"/v1/completions","body":{"model":"m","prompt":"x"}}`, false, "custom_id"},
	{`{"custom_id":7,"method":"POST","url":"/v1/completions","body":{"model":"m","prompt":"x"}}`, false, "custom_id"},
	{`{"custom_id":"f","method":"GET","url":"/v1/completions","body":{"model":"m","prompt":"x"}}`, false, "method"},
	{`{"custom_id":"g","url":"/v1/completions","body":{"model":"m","prompt":"x"}}`, false, "method"},
	{`{"custom_id":"h","method":"POST","url":"/v1/embeddings","body":{"model":"m","input":"x"}}`, false, "url"},
	{`{"custom_id":"i","method":"POST","url":"/v1/completions","body":"{\"model\":\"m\"}"}`, false, "body"},
	{`{"custom_id":"j","method":"POST","url":"/v1/completions"}`, false, "body"},
	{`{"custom_id":"k","method":"POST","url":"/v1/completions","body":[1]}`, false, "body"},
	{`{"custom_id":"l","method":"POST","url":"/v1/completions","body":{"prompt":"x"}}`, false, "body.model"},
	{`{"custom_id":"m","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[]}}`, false, "body.messages"},
	{`{"custom_id":"n","method":"POST","url":"/v1/completions","body":{"model":"m","prompt":"x","temperature":3}}`, false, "body.temperature"},
	{`{"custom_id":"o","method":"POST","url":"/v1/completions","body":{"model":"m","prompt":"x"},"extra":1}`, false, "extra"},
	{`{"custom_id":"p","method":"POST","url":"/v1/completions","body":{"model":"m","prompt":"x"}} {}`, false, ""},
	{`{"custom_id":"q",`, false, ""},
	{`[]`, false, ""},
	{`null`, false, ""},
	{`"text"`, false, ""},
}

func TestBatchDecodeLine(t *testing.T) {
	for _, g := range goldenBatchLines {
		r, err := decodeBatchLine([]byte(g.line))
		if g.ok {
			if err != nil {
				t.Errorf("decodeBatchLine(%s) = %v; want accepted", g.line, err)
				continue
			}
			if r.Model != "m" || r.Method != "POST" || !json.Valid(r.Body) {
				t.Errorf("decodeBatchLine(%s) = %+v", g.line, r)
			}
			continue
		}
		var le *batchLineError
		if !errors.As(err, &le) {
			t.Errorf("decodeBatchLine(%s) = %+v, %v; want a *batchLineError on %q", g.line, r, err, g.field)
			continue
		}
		if le.Field != g.field {
			t.Errorf("decodeBatchLine(%s): error %q names field %q; want %q", g.line, err, le.Field, g.field)
		}
	}
	long := `{"custom_id":"x","method":"POST","url":"/v1/completions","body":{"model":"m","prompt":"` + strings.Repeat("a", batchMaxLine) + `"}}`
	if _, err := decodeBatchLine([]byte(long)); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Errorf("a line over %d bytes: %v; want refused", batchMaxLine, err)
	}
}

// TestBatchInputFile checks the whole-file validator: blank lines are skipped,
// and the first bad line is named by its number and field.
func TestBatchInputFile(t *testing.T) {
	ok1, ok2 := goldenBatchLines[0].line, goldenBatchLines[1].line
	reqs, err := readBatchInput(strings.NewReader(ok1 + "\n\n" + ok2 + "\r\n"))
	if err != nil || len(reqs) != 2 || reqs[0].Line != 1 || reqs[1].Line != 3 || reqs[1].CustomID != "b" {
		t.Fatalf("readBatchInput(two good lines) = %+v, %v", reqs, err)
	}
	long := `{"custom_id":"x","method":"POST","url":"/v1/completions","body":{"model":"m","prompt":"` + strings.Repeat("a", batchMaxLine) + `"}}`
	for _, c := range []struct{ in, want string }{
		{ok1 + "\n" + ok1 + "\n", `line 2: custom_id: "a" was already used on line 1`},
		{ok1 + "\n" + goldenBatchLines[4].line + "\n", "line 2: body.stream: streaming is not supported"},
		{ok1 + "\n" + ok2 + "\n{\n", "line 3: not a JSON object"},
		{ok1 + "\n" + long + "\n" + ok2, "line 2: longer than 1048576 bytes"},
		{"\n \n", "no requests in the input"},
	} {
		_, err := readBatchInput(strings.NewReader(c.in))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("readBatchInput(%.60q…) = %v; want %q", c.in, err, c.want)
		}
	}
}

// TestBatchBadInputSendsNothing runs the command on a file with one bad line:
// one line naming the line and field, a non-zero exit, and no output file (the
// datadir has no node: nothing was even looked up).
func TestBatchBadInputSendsNothing(t *testing.T) {
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.jsonl"), filepath.Join(dir, "out.jsonl")
	os.WriteFile(in, []byte(goldenBatchLines[0].line+"\n"+goldenBatchLines[10].line+"\n"), 0o644)
	_, stderr, err := run(t, "batch", in, "-o", out, "--datadir", filepath.Join(dir, "none"))
	if err == nil || strings.Count(strings.TrimSpace(stderr), "\n") != 0 ||
		!strings.Contains(stderr, "line 2: url:") || !strings.Contains(stderr, "nothing was sent") {
		t.Fatalf("batch with a bad line 2: %v, stderr %q; want one line naming line 2's url", err, stderr)
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the output file exists after a refused input: %v", err)
	}
}

// TestBatchResumeTornLine checks the resume reader: finished custom_ids are
// read, a last line torn by a crash is cut off, and a file that is not a batch
// output is refused.
func TestBatchResumeTornLine(t *testing.T) {
	dir := t.TempDir()
	good := func(id string) string {
		return `{"id":"batch_req_1","custom_id":"` + id + `","response":{"status_code":200,"request_id":"r","body":{}},"error":null}` + "\n"
	}
	torn := `{"id":"batch_req_3","custom_id":"c","respon`
	path := filepath.Join(dir, "out.jsonl")
	os.WriteFile(path, []byte(good("a")+good("b")+torn), 0o644)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	done, cut, err := resumeBatchOutput(f)
	if err != nil || len(done) != 2 || !done["a"] || !done["b"] || cut != int64(len(torn)) {
		t.Fatalf("resumeBatchOutput = %v, cut %d, %v; want a and b, %d bytes cut", done, cut, err, len(torn))
	}
	// The next line appended starts on its own line.
	f.Write([]byte(good("c")))
	b, _ := os.ReadFile(path)
	if string(b) != good("a")+good("b")+good("c") {
		t.Fatalf("after the cut and one more line, the file is %q", b)
	}

	// A complete last line that only lacks its newline is torn too: its write did
	// not finish, so its request runs again.
	os.WriteFile(path, []byte(good("a")+strings.TrimSuffix(good("b"), "\n")), 0o644)
	f2, _ := os.OpenFile(path, os.O_RDWR|os.O_APPEND, 0)
	defer f2.Close()
	if done, cut, err := resumeBatchOutput(f2); err != nil || len(done) != 1 || cut == 0 {
		t.Fatalf("resumeBatchOutput(no final newline) = %v, cut %d, %v; want only a", done, cut, err)
	}

	os.WriteFile(path, []byte(good("a")+"hello\n"+good("b")), 0o644)
	f3, _ := os.OpenFile(path, os.O_RDWR|os.O_APPEND, 0)
	defer f3.Close()
	if _, _, err := resumeBatchOutput(f3); err == nil || !strings.Contains(err.Error(), "line 2 is not a batch output line") {
		t.Fatalf("resumeBatchOutput(a foreign line 2) = %v; want refused", err)
	}
}

// FuzzBatchLine: no input crashes the decoder, and an accepted line encodes to
// one that decodes to the same request.
func FuzzBatchLine(f *testing.F) {
	for _, g := range goldenBatchLines {
		f.Add([]byte(g.line))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		r, err := decodeBatchLine(line)
		if err != nil {
			var le *batchLineError
			if !errors.As(err, &le) {
				t.Fatalf("decodeBatchLine(%q) = %v; want a *batchLineError", line, err)
			}
			return
		}
		again, err := decodeBatchLine(r.marshal())
		if err != nil || again.CustomID != r.CustomID || again.Method != r.Method || again.URL != r.URL ||
			again.Model != r.Model || !bytes.Equal(again.Body, r.Body) {
			t.Fatalf("round trip of %q: got %+v, %v; want %+v", line, again, err, r)
		}
	})
}

// pinnedBin writes a wrapper of the cocoon binary that runs each node on one CPU
// of its own choosing (node1, node3 on CPU 1; the others on CPU 0). llama.cpp's
// threads spin-wait: three workers each running min(CPUs, 4) threads on a
// 2-core machine slow every generation by an order of magnitude (1.2 instead of
// 20 answers per second here). A process pinned to one CPU sees one CPU, so its
// llama.cpp runs one thread.
func pinnedBin(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("taskset"); err != nil {
		return bin
	}
	w := filepath.Join(t.TempDir(), "cocoon-pinned")
	script := "#!/bin/sh\ncpu=0\ncase \"$*\" in *node1*|*node3*) cpu=1 ;; esac\n" +
		"[ \"$(nproc --all)\" -gt 1 ] || cpu=0\nexec taskset -c $cpu " + bin + " \"$@\"\n"
	if err := os.WriteFile(w, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return w
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

var batchSummary = regexp.MustCompile(`batch: (\d+) of (\d+) done: (\d+) answered now, (\d+) skipped as already finished, (\d+) failed; (\d+) nanoTON spent`)

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

// TestBatchInterruptResume runs a 200-line batch with `cocoon batch` against a
// real local testnet of 3 workers and a client, interrupts it with SIGINT
// halfway, re-runs it to finish the rest, and checks that every request was
// answered exactly once, by its own answer, across all 3 workers, and that what
// the output says was spent is what the workers can claim.
func TestBatchInterruptResume(t *testing.T) {
	model := testModel(t)
	dir := t.TempDir()
	c, err := testnet.Launch(context.Background(), testnet.LaunchConfig{Bin: pinnedBin(t), Dir: dir, Nodes: 4, Workers: 3, Model: model})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })
	client := c.Nodes[0]
	workers := map[string]bool{}
	for _, w := range c.Nodes[1:] {
		workers[w.PeerID] = true
	}

	const n = 200
	in, out := filepath.Join(dir, "in.jsonl"), filepath.Join(dir, "out.jsonl")
	var inBuf bytes.Buffer
	bodies := map[string]string{} // custom_id → url and body
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
		fmt.Fprintf(&inBuf, `{"custom_id":%q,"method":"POST","url":%q,"body":%s}`+"\n", id, url, body)
	}
	os.WriteFile(in, inBuf.Bytes(), 0o644)

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
		req, _ := http.NewRequest(http.MethodPost, client.URL+url, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+client.Token)
		resp, err := http.DefaultClient.Do(req)
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
