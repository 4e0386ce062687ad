package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/testnet"
)

// post sends body to a node's gateway and returns the status and response.
func post(t *testing.T, p *testnet.Proc, path, body string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, p.URL+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+p.Token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 2 * time.Minute}).Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// nested is content that is an array nested depth times.
func nested(depth int) string {
	return strings.Repeat("[", depth) + `{"type":"text","text":"hi"}` + strings.Repeat("]", depth)
}

// hostileCorpus is what a stranger sends to take a node down: each body
// with the statuses that count as a clean answer.
var hostileCorpus = []struct {
	name, path, body string
	ok               []int
}{
	{"NUL in content", "/v1/chat/completions", `{"model":"stories260K","messages":[{"role":"user","content":"a\u0000b"}]}`, []int{400}},
	{"NUL in a content part", "/v1/chat/completions", `{"model":"stories260K","messages":[{"role":"user","content":[{"type":"text","text":"\u0000"}]}]}`, []int{400}},
	{"NUL in a raw prompt", "/v1/completions", `{"model":"stories260K","prompt":"a\u0000b"}`, []int{400}},
	{"NUL in the role", "/v1/chat/completions", `{"model":"stories260K","messages":[{"role":"\u0000","content":"hi"}]}`, []int{400}},
	{"NUL in a stop", "/v1/chat/completions", `{"model":"stories260K","messages":[{"role":"user","content":"hi"}],"stop":"\u0000"}`, []int{400}},
	{"NUL in the model", "/v1/chat/completions", `{"model":"stories260K\u0000","messages":[{"role":"user","content":"hi"}]}`, []int{400}},
	{"invalid UTF-8", "/v1/chat/completions", "{\"model\":\"stories260K\",\"messages\":[{\"role\":\"user\",\"content\":\"a\xff\xfe\xc3b\"}],\"max_tokens\":8}", []int{200}},
	{"control characters", "/v1/chat/completions", `{"model":"stories260K","messages":[{"role":"user","content":"\u0001\u0002\u001b[31m\u007f\u202e\ufeff\b\f"}],"max_tokens":8}`, []int{200}},
	{"1 MB of one token", "/v1/chat/completions", `{"model":"stories260K","messages":[{"role":"user","content":"` + strings.Repeat("a", 1<<20) + `"}],"max_tokens":8}`, []int{400}},
	{"1 MB raw prompt", "/v1/completions", `{"model":"stories260K","prompt":"` + strings.Repeat(" the", 1<<18) + `","max_tokens":8}`, []int{400}},
	{"deeply nested content parts", "/v1/chat/completions", `{"model":"stories260K","messages":[{"role":"user","content":` + nested(20000) + `}]}`, []int{400}},
	{"10,000 content parts", "/v1/chat/completions", `{"model":"stories260K","messages":[{"role":"user","content":[` + strings.TrimSuffix(strings.Repeat(`{"type":"text","text":"a"},`, 10000), ",") + `]}],"max_tokens":8}`, []int{400}},
	{"max_tokens 2^32+1", "/v1/chat/completions", `{"model":"stories260K","messages":[{"role":"user","content":"hi"}],"max_tokens":4294967297}`, []int{400}},
	{"max_tokens 10^18", "/v1/completions", `{"model":"stories260K","prompt":"hi","max_tokens":1000000000000000000}`, []int{400}},
	{"body over 4 MiB", "/v1/chat/completions", `{"model":"stories260K","messages":[{"role":"user","content":"` + strings.Repeat("a", 5<<20) + `"}]}`, []int{413}},
}

// TestHostileRequests sends the corpus through a multi-process testnet, to a
// client's gateway (the network path, the worker's checks behind it) and to a
// worker's own gateway (its local engine): every request gets a clean answer
// or a refusal, no node process exits, and a normal request after them is
// answered; what the clients paid equals what the workers can claim.
func TestHostileRequests(t *testing.T) {
	c := startTestnet(t, 3, 2)
	client, worker := c.Nodes[0], c.Nodes[2]
	for _, p := range []*testnet.Proc{client, worker} {
		for _, h := range hostileCorpus {
			code, body := post(t, p, h.path, h.body)
			if !containsInt(h.ok, code) {
				t.Errorf("%s to %s: %d %.300s; want one of %v", h.name, p.Role, code, body, h.ok)
				continue
			}
			if code != 200 && !bytes.Contains(body, []byte(`"error"`)) {
				t.Errorf("%s to %s: %d without an OpenAI error body: %.200s", h.name, p.Role, code, body)
			}
			t.Logf("%s → %s: %d %.140s", p.Role, h.name, code, oneLine(body))
		}
	}
	for _, p := range c.Nodes {
		if !p.Alive() {
			t.Errorf("%s (%s) exited", p.Name, p.Role)
		}
	}
	code, body := post(t, client, "/v1/chat/completions", `{"model":"stories260K","messages":[{"role":"user","content":"Tell me a story"}],"max_tokens":16}`)
	if code != 200 {
		t.Fatalf("a normal request after the corpus: %d %s", code, body)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if paid, claim := books(t, c); paid != claim {
		t.Fatalf("clients paid %d, workers can claim %d", paid, claim)
	}
}

// getJSON GETs path from a node's API into v.
func getJSON(t *testing.T, p *testnet.Proc, path string, v any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, p.URL+path, nil)
	req.Header.Set("Authorization", "Bearer "+p.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
}

func containsInt(xs []int, x int) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

func oneLine(b []byte) string { return strings.Join(strings.Fields(string(b)), " ") }

// engineChildren lists the engine processes a node started (its children).
func engineChildren(pid int) []int {
	var out []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, s := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(s); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// TestEngineKilledMidStream kills the serving worker's engine process
// (SIGKILL, then SIGABRT: an abort from inside) while a streamed answer is
// under way: the caller's stream completes on the other worker, what the
// client was told it spent equals what the clients paid and the workers can
// claim, every node stays up, and the engine is back within seconds.
func TestEngineKilledMidStream(t *testing.T) {
	c := startTestnet(t, 3, 2)
	client := c.Nodes[0]
	workers := map[string]*testnet.Proc{c.Nodes[1].PeerID: c.Nodes[1], c.Nodes[2].PeerID: c.Nodes[2]}
	var told uint64
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGABRT} {
		req, _ := http.NewRequest(http.MethodPost, client.URL+"/v1/completions", strings.NewReader(
			`{"model":"stories260K","prompt":"Once upon a time","max_tokens":300,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}`))
		req.Header.Set("Authorization", "Bearer "+client.Token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
		serving := workers[resp.Header.Get("X-Cocoon-Worker")]
		if serving == nil {
			t.Fatalf("answered by %q, not a worker", resp.Header.Get("X-Cocoon-Worker"))
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		if !sc.Scan() { // the first chunk: the engine is under way
			t.Fatalf("no first chunk: %v", sc.Err())
		}
		// While this reader waits, the gateway stops paying and the worker
		// pauses at its credit window: the kill lands mid-answer.
		kids := engineChildren(serving.PID)
		if len(kids) != 1 {
			t.Fatalf("worker %s has engine processes %v, want one", serving.Name, kids)
		}
		if err := syscall.Kill(kids[0], sig); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		var text strings.Builder
		var usage struct {
			CompletionTokens int    `json:"completion_tokens"`
			Cost             uint64 `json:"cost_nanoton"`
		}
		for sc.Scan() {
			line, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok || line == "[DONE]" {
				continue
			}
			var chunk struct {
				Choices []struct {
					Text string `json:"text"`
				} `json:"choices"`
				Usage *json.RawMessage `json:"usage"`
				Error any              `json:"error"`
			}
			if err := json.Unmarshal([]byte(line), &chunk); err != nil {
				t.Fatalf("chunk %q: %v", line, err)
			}
			if chunk.Error != nil {
				for _, w := range workers {
					b, _ := os.ReadFile(w.Log)
					t.Logf("%s log:\n%s", w.Name, b)
				}
				t.Fatalf("%v: the stream failed: %s", sig, line)
			}
			for _, ch := range chunk.Choices {
				text.WriteString(ch.Text)
			}
			if chunk.Usage != nil {
				json.Unmarshal(*chunk.Usage, &usage)
			}
		}
		resp.Body.Close()
		if usage.CompletionTokens == 0 || usage.Cost == 0 {
			t.Fatalf("%v: no usage at the end of the stream (%q)", sig, text.String())
		}
		told += usage.Cost
		// The client's journal: the attempt on the killed engine's worker
		// failed after delivering part of the answer, and the other worker
		// finished it; together they cost what the caller was told.
		var ov struct {
			Done []struct {
				Peer             string `json:"peer"`
				CompletionTokens int    `json:"completion_tokens"`
				NanoTON          uint64 `json:"nanoton"`
				Outcome          string `json:"outcome"`
			} `json:"done"`
		}
		getJSON(t, client, "/api/v0/overview", &ov)
		if len(ov.Done) < 2 {
			t.Fatalf("%v: the client's journal has %d jobs", sig, len(ov.Done))
		}
		last, cut := ov.Done[0], ov.Done[1]
		if cut.Peer != serving.PeerID || cut.Outcome == "ok" || cut.CompletionTokens == 0 ||
			last.Peer == serving.PeerID || last.Outcome != "ok" ||
			cut.CompletionTokens+last.CompletionTokens != usage.CompletionTokens || cut.NanoTON+last.NanoTON != usage.Cost {
			t.Fatalf("%v: the client's last two attempts %+v; want a cut one on %s and a finished one on the other worker, adding up to %+v", sig, ov.Done[:2], serving.Name, usage)
		}
		t.Logf("%v: %d tokens from %s before the kill, %d from the other worker", sig, cut.CompletionTokens, serving.Name, last.CompletionTokens)
		t.Logf("%v of %s's engine: %d tokens, %d nanoTON, %d chars", sig, serving.Name, usage.CompletionTokens, usage.Cost, text.Len())
		deadline := time.Now().Add(20 * time.Second)
		for {
			if k := engineChildren(serving.PID); len(k) == 1 && k[0] != kids[0] {
				t.Logf("%v: engine back as pid %d after %v", sig, k[0], time.Since(killed).Round(time.Millisecond))
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%v: the engine of %s is not back after 20 s", sig, serving.Name)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for _, p := range c.Nodes {
		if !p.Alive() {
			t.Fatalf("%s (%s) exited", p.Name, p.Role)
		}
	}
	checkBooks(t, c, told)
}
