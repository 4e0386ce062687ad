package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/client/local"
	"github.com/cocoon-network/cocoon/node"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
	"github.com/cocoon-network/cocoon/testnet"
)

// TestMetricsAuth: a node's /metrics is behind the API's bearer token, and with
// the token it serves the cocoon_ metrics in the Prometheus text format.
func TestMetricsAuth(t *testing.T) {
	p := startNode(t, initDir(t))
	api, err := local.FromDatadir(p.datadir)
	if err != nil {
		t.Fatal(err)
	}
	tok := api.Token
	get := func(token string) (*http.Response, string) {
		resp, err := local.New(api.BaseURL, token).Do(context.Background(), http.MethodGet, "/metrics", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return resp, string(b)
	}
	if resp, body := get(""); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("GET /metrics without the token: %s; want 401\n%s", resp.Status, body)
	}
	if resp, _ := get(tok + "x"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("GET /metrics with a wrong token: %s; want 401", resp.Status)
	}
	resp, body := get(tok)
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET /metrics with the token: %s, %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	for _, line := range []string{
		"# TYPE cocoon_jobs_total counter",
		`cocoon_jobs_total{outcome="ok",side="client"} 0`,
		`cocoon_ads_dropped_total{reason="malformed"} 0`,
		"# TYPE cocoon_peers_connected gauge",
		"cocoon_spent_nanoton_total 0",
		"# TYPE cocoon_job_duration_seconds histogram",
		"# TYPE go_goroutines gauge",
	} {
		if !strings.Contains(body, line+"\n") {
			t.Errorf("/metrics lacks %q", line)
		}
	}
}

// TestMetricsPrometheus runs a local testnet (one client, two workers), buys a few
// chat completions through the client's gateway, and lets Debian's real
// Prometheus scrape the client and both workers with their API tokens. Through
// Prometheus' own query API it checks that the jobs counters equal the jobs run
// (client side on the client, worker side summed over the workers) and that the
// nanoTON the client spent equal those the workers earned and the answers cost.
func TestMetricsPrometheus(t *testing.T) {
	prom := depPath(t, "COCOON_PROMETHEUS", "prometheus/usr/bin/prometheus", "Debian's prometheus")
	c := startTestnet(t, 3, 2)
	client, workers := c.Nodes[0], c.Nodes[1:]

	const jobs = 4
	var cost, completion uint64
	for i := range jobs {
		u := chatOnce(t, client, fmt.Sprintf("Tell me story number %d", i))
		cost += u.CostNanoTON
		completion += u.CompletionTokens
	}
	if cost == 0 {
		t.Fatal("the answers cost nothing: no money to check")
	}

	q := startPrometheus(t, prom, c.Nodes)
	waitFor(t, 30*time.Second, "Prometheus to scrape all three nodes", func() bool {
		v, ok := q.value(`sum(up{job=~"node.*"})`)
		return ok && v == 3
	})
	client0 := fmt.Sprintf(`{job=%q}`, client.Name)
	workerJobs := fmt.Sprintf(`{job=~%q}`, workers[0].Name+"|"+workers[1].Name)
	checks := []struct {
		query string
		want  uint64
	}{
		{`sum(cocoon_jobs_total` + withLabels(client0, `side="client",outcome="ok"`) + `)`, jobs},
		{`sum(cocoon_jobs_total` + withLabels(workerJobs, `side="worker",outcome="ok"`) + `)`, jobs},
		{`sum(cocoon_tokens_total` + withLabels(client0, `side="client",kind="completion"`) + `)`, completion},
		{`sum(cocoon_spent_nanoton_total` + client0 + `)`, cost},
		{`sum(cocoon_earned_nanoton_total` + workerJobs + `)`, cost},
		{`sum(cocoon_jobs_in_flight)`, 0},
	}
	// A worker counts its job once the client's final voucher is in, which may be
	// a moment after the client's answer: wait until the scrapes have caught up.
	got := make([]string, len(checks))
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok := true
		for i, ch := range checks {
			v, found := q.value(ch.query)
			got[i] = fmt.Sprintf("%s = %g (found %v); want %d", ch.query, v, found, ch.want)
			ok = ok && found && v == float64(ch.want)
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Prometheus' query API after 30 s:\n%s", strings.Join(got, "\n"))
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("Prometheus' query API:\n%s", strings.Join(got, "\n"))
	// Figures that depend on timing have floors: the client is connected to both
	// workers, took each one's ad into its book and attested at least one sim worker.
	for _, f := range []struct {
		query string
		least float64
	}{
		{`cocoon_peers_connected` + client0, 2},
		{`cocoon_ads_accepted_total` + client0, 2},
		{`cocoon_attestations_total` + withLabels(client0, `verdict="accepted",kind="sim"`), 1},
	} {
		if v, ok := q.value(f.query); !ok || v < f.least {
			t.Errorf("%s = %g (found %v); want at least %g", f.query, v, ok, f.least)
		}
	}
	// The spent and earned counters agree with the channel books, too.
	checkBooks(t, c, cost)
}

// withLabels adds matchers to a {…} selector.
func withLabels(sel, more string) string { return strings.TrimSuffix(sel, "}") + "," + more + "}" }

type chatUsage struct {
	PromptTokens, CompletionTokens, CostNanoTON uint64
}

// chatOnce buys one short non-streamed chat completion through p's gateway.
func chatOnce(t *testing.T, p *testnet.Proc, prompt string) chatUsage {
	t.Helper()
	greedy, n := 0.0, 12
	cc, _, err := p.API().ChatCompletion(context.Background(), openaiapi.ChatCompletionRequest{Model: "stories260K", MaxTokens: &n, Temperature: &greedy,
		Messages: []openaiapi.ChatMessage{{Role: "user", Content: openaiapi.Content(prompt)}}})
	if err != nil || len(cc.Choices) == 0 || cc.Choices[0].Message.Content == "" || cc.Usage == nil {
		log, _ := os.ReadFile(p.Log)
		t.Fatalf("chat completion: %+v, %v\nclient node log:\n%s", cc, err, log)
	}
	u := chatUsage{PromptTokens: uint64(cc.Usage.PromptTokens), CompletionTokens: uint64(cc.Usage.CompletionTokens)}
	if cc.Usage.CostNanoTON != nil {
		u.CostNanoTON = *cc.Usage.CostNanoTON
	}
	return u
}

// promQuery is a running Prometheus' query API.
type promQuery struct {
	t   *testing.T
	url string
}

// value runs an instant query whose result is one sample; ok is false when the
// result is empty (no series yet) or the query failed.
func (q promQuery) value(query string) (v float64, ok bool) {
	resp, err := http.Get(q.url + "/api/v1/query?query=" + url.QueryEscape(query))
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	var r struct {
		Status string
		Error  string
		Data   struct {
			Result []struct {
				Value [2]any
			}
		}
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&r); err != nil || r.Status != "success" {
		if r.Error != "" {
			q.t.Fatalf("query %s: %s", query, r.Error) // a bad query never gets better
		}
		return 0, false
	}
	if len(r.Data.Result) != 1 {
		return 0, false
	}
	s, _ := r.Data.Result[0].Value[1].(string)
	v, err = strconv.ParseFloat(s, 64)
	return v, err == nil
}

// startPrometheus runs Debian's prometheus on a free 127.0.0.1 port, scraping
// every node's /metrics each second with that node's API token (one scrape job
// per node, named after it). It stops Prometheus when the test ends and keeps
// its directory (config, log) when the test failed.
func startPrometheus(t *testing.T, prom string, nodes []*testnet.Proc) promQuery {
	t.Helper()
	dir, err := os.MkdirTemp("", "cocoon-prometheus")
	if err != nil {
		t.Fatal(err)
	}
	var cfg strings.Builder
	cfg.WriteString("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n")
	for _, p := range nodes {
		fmt.Fprintf(&cfg, "  - job_name: %s\n    authorization:\n      credentials_file: %s\n    static_configs:\n      - targets: [%q]\n        labels: {role: %s}\n",
			p.Name, filepath.Join(p.Datadir, node.TokenFile), strings.TrimPrefix(p.URL, "http://"), p.Role)
	}
	conf := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(conf, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	logPath := filepath.Join(dir, "prometheus.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(prom, "--config.file="+conf, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=info")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", prom, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			log, _ := os.ReadFile(logPath)
			t.Logf("prometheus config and log kept in %s; log:\n%s", dir, log)
			return
		}
		os.RemoveAll(dir)
	})
	q := promQuery{t: t, url: "http://" + addr}
	waitFor(t, 30*time.Second, "Prometheus to answer on "+addr, func() bool {
		select {
		case <-exited:
			log, _ := os.ReadFile(logPath)
			t.Fatalf("prometheus exited:\n%s", log)
		default:
		}
		resp, err := http.Get(q.url + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return q
}
