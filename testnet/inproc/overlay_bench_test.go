package inproc

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

// fixedBackend answers every request with the same words at once: an
// OpenAI-compatible server whose own cost is negligible, so that benchmarks
// measure what sits in front of it.
type fixedBackend struct{}

func (fixedBackend) Models() []runtime.Model {
	return []runtime.Model{{ID: Model, ContextLength: 4096}}
}
func (fixedBackend) Close() error { return nil }
func (fixedBackend) Generate(_ context.Context, req runtime.Request) (runtime.Stream, error) {
	n := req.MaxTokens
	if n <= 0 {
		n = 16
	}
	return &fixedStream{left: n}, nil
}

type fixedStream struct{ left, done int }

func (s *fixedStream) Recv() (runtime.Delta, error) {
	if s.left == 0 {
		return runtime.Delta{}, io.EOF
	}
	s.left--
	s.done++
	return runtime.Delta{Text: " word", Tokens: 1}, nil
}
func (s *fixedStream) Usage() runtime.Usage {
	return runtime.Usage{PromptTokens: 8, CompletionTokens: s.done}
}
func (s *fixedStream) FinishReason() string { return runtime.FinishLength }
func (s *fixedStream) Close() error         { return nil }

// startNginx runs Debian's nginx (unpacked by make deps into .cache/nginx) as a
// reverse proxy on a free loopback port in front of upstream.
func startNginx(b *testing.B, upstream string) string {
	b.Helper()
	bin := filepath.Join(repoRoot(), ".cache", "nginx", "usr", "sbin", "nginx")
	if _, err := os.Stat(bin); err != nil {
		b.Fatalf("nginx is not unpacked at %s: run `make deps`", bin)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	dir := b.TempDir()
	conf := fmt.Sprintf(`daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log stderr error;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  upstream backend { server %[2]s; keepalive 16; }
  server {
    listen 127.0.0.1:%[3]d;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
`, dir, strings.TrimPrefix(upstream, "http://"), port)
	path := filepath.Join(dir, "nginx.conf")
	os.WriteFile(path, []byte(conf), 0o644)
	cmd := exec.Command(bin, "-p", dir, "-c", path, "-e", "stderr")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			c.Close()
			return url
		}
		if time.Now().After(deadline) {
			b.Fatalf("nginx did not start: %s", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// post sends one chat request and returns its latency and the body.
func post(b *testing.B, url, token string, body []byte) (time.Duration, []byte) {
	req, _ := http.NewRequest("POST", url+"/v1/chat/completions", bytes.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	out, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	d := time.Since(start)
	if err != nil || resp.StatusCode != http.StatusOK {
		b.Fatalf("POST %s: %s %s %v", url, resp.Status, out, err)
	}
	return d, out
}

func percentile(ds []time.Duration, p float64) float64 {
	s := slices.Clone(ds)
	slices.Sort(s)
	return float64(s[int(p*float64(len(s)-1))].Microseconds()) / 1000
}

// BenchmarkOverlay measures, in one run and on the same fixed-text upstream, a warm
// 16-token chat completion sent directly, through Debian's nginx as a reverse
// proxy, and through the overlay (client gateway → mocknet → worker → upstream,
// with attestation cached, vouchers fsynced on both sides); then tokens per second
// through one long stream, and the first job to a worker that has not been
// attested yet.
func BenchmarkOverlay(b *testing.B) {
	up := httptest.NewServer(openaiapi.NewHandler(fixedBackend{}))
	defer up.Close()
	ngx := startNginx(b, up.URL)
	tn := New(b, Nodes(2), Workers(1), Upstream(up.URL+"/v1"))
	client := tn.Clients()[0]
	gw := "http://" + client.APIAddr
	body := []byte(fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"hi"}],"max_tokens":16}`, Model))

	// Cold: the client has never run a job on the worker (no attestation yet).
	cold, _ := post(b, gw, client.Token, body)

	var direct, proxy, overlay []time.Duration
	for b.Loop() {
		d, _ := post(b, up.URL, "", body)
		direct = append(direct, d)
		d, _ = post(b, ngx, "", body)
		proxy = append(proxy, d)
		d, out := post(b, gw, client.Token, body)
		overlay = append(overlay, d)
		var cc openaiapi.ChatCompletion
		if err := json.Unmarshal(out, &cc); err != nil || cc.Usage == nil || cc.Usage.CompletionTokens != 16 {
			b.Fatalf("overlay answer %s: %v", out, err)
		}
	}
	b.ReportMetric(float64(cold.Microseconds())/1000, "cold-first-job-ms") // after b.Loop, which resets metrics
	b.ReportMetric(percentile(direct, 0.5), "direct-p50-ms")
	b.ReportMetric(percentile(direct, 0.99), "direct-p99-ms")
	b.ReportMetric(percentile(proxy, 0.5)-percentile(direct, 0.5), "nginx-added-p50-ms")
	b.ReportMetric(percentile(proxy, 0.99)-percentile(direct, 0.99), "nginx-added-p99-ms")
	b.ReportMetric(percentile(overlay, 0.5)-percentile(direct, 0.5), "overlay-added-p50-ms")
	b.ReportMetric(percentile(overlay, 0.99)-percentile(direct, 0.99), "overlay-added-p99-ms")

	// One long stream through the overlay.
	long := []byte(fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"hi"}],"max_tokens":4000,"stream":true}`, Model))
	d, out := post(b, gw, client.Token, long)
	if n := bytes.Count(out, []byte("data: ")); n < 100 {
		b.Fatalf("long stream had %d events", n)
	}
	b.ReportMetric(4000/d.Seconds(), "stream-tok/s")
}
