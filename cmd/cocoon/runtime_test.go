package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/client/local"
	"github.com/cocoon-network/cocoon/runtime/llamalib"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

// cpuTarball is the CPU package's tarball as npm serves it: $COCOON_LLAMA_TGZ,
// else where `make deps` (scripts/llama-libs.sh) keeps it. Missing, the test
// fails: `make test` runs `make deps` first.
func cpuTarball(t *testing.T) []byte {
	t.Helper()
	p := os.Getenv("COCOON_LLAMA_TGZ")
	if p == "" {
		p = filepath.Join("..", "..", ".cache", "llama", "node-llama-cpp-linux-x64-"+llamalib.Version+".tgz")
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("the CPU package's tarball: %v (run `make deps`, or set COCOON_LLAMA_TGZ)", err)
	}
	return b
}

// npmRegistry serves body at the CPU package's tarball URL on 127.0.0.1:
// tests reach no real registry.
func npmRegistry(t *testing.T, body []byte) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != llamalib.Packages[llamalib.CPU].Tarball {
			http.NotFound(w, r)
			return
		}
		w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// bareEnv is this process's environment without the variables that would
// point a node at libraries: what a user who has only the binary has.
func bareEnv(t *testing.T) []string {
	var env []string
	for _, kv := range os.Environ() {
		switch strings.SplitN(kv, "=", 2)[0] {
		case "COCOON_LLAMA_LIB", "HOME", "XDG_CACHE_HOME", "COCOON_HOME":
			continue
		}
		env = append(env, kv)
	}
	return append(env, "HOME="+t.TempDir()) // an empty shared cache
}

func runEnv(t *testing.T, env []string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// TestRuntimeInstallThenServe is a user with only the binary: `cocoon
// runtime install cpu` into the datadir (from a loopback registry holding
// the real tarball), then `cocoon node --serve` with no COCOON_LLAMA_LIB,
// answering a completion.
func TestRuntimeInstallThenServe(t *testing.T) {
	model := testModel(t)
	env := bareEnv(t)
	dir := initDir(t)
	url := npmRegistry(t, cpuTarball(t))

	// Without an install the node says what to run.
	_, stderr, err := runEnv(t, env, "node", "--datadir", dir, "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0",
		"--serve", model)
	if err == nil || !strings.Contains(stderr, "cocoon runtime install") {
		t.Fatalf("node with no libraries: %v; stderr %q; want it to say `cocoon runtime install`", err, stderr)
	}

	out, stderr, err := runEnv(t, env, "runtime", "install", "cpu", "--datadir", dir, "--registry", url)
	if err != nil {
		t.Fatalf("cocoon runtime install: %v\n%s", err, stderr)
	}
	want := filepath.Join(dir, "runtime", "llama", "cpu-"+llamalib.Version)
	if !strings.Contains(out, "llama.cpp cpu build: "+want) {
		t.Fatalf("install printed %q; want the folder %s", out, want)
	}
	list, _, err := runEnv(t, env, "runtime", "list", "--datadir", dir)
	if err != nil || !strings.Contains(list, "a node would load: cpu from "+want) {
		t.Fatalf("cocoon runtime list: %v\n%s", err, list)
	}

	cmd := exec.Command(bin, "node", "--datadir", dir, "--listen", "/ip4/127.0.0.1/tcp/0",
		"--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--api", "127.0.0.1:0", "--mdns=false", "--serve", model)
	cmd.Env = env
	p := &proc{cmd: cmd, datadir: dir, stderr: &syncBuffer{}}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitFor(t, 30*time.Second, "the node's API", func() bool {
		_, err := os.Stat(filepath.Join(dir, "api.addr"))
		return err == nil
	})
	api, err := local.FromDatadir(dir)
	if err != nil {
		t.Fatal(err)
	}
	greedy, n := 0.0, 24
	res, _, err := api.Completion(context.Background(), openaiapi.CompletionRequest{Model: "stories260K",
		Prompt: "Once upon a time", MaxTokens: &n, Temperature: &greedy})
	if err != nil || len(res.Choices) != 1 || !strings.HasPrefix(res.Choices[0].Text, ", there was a little girl named Lily") {
		t.Fatalf("completion = %+v, %v; node stderr:\n%s", res, err, p.stderr)
	}
	if log := p.stderr.String(); !strings.Contains(log, "llama.cpp build chosen") || !strings.Contains(log, "from=datadir") {
		t.Errorf("the node did not log the build it chose from the datadir:\n%s", log)
	}
}

// A tarball with one byte changed is refused, naming both hashes, and leaves
// nothing installed; an unknown kind names the kinds.
func TestRuntimeInstallRefusesTamperedTarball(t *testing.T) {
	body := bytes.Clone(cpuTarball(t))
	body[1000] ^= 0x80
	dir := t.TempDir()
	_, stderr, err := runEnv(t, bareEnv(t), "runtime", "install", "cpu", "--datadir", dir, "--registry", npmRegistry(t, body))
	integrity := llamalib.Packages[llamalib.CPU].Integrity
	if err == nil || !strings.Contains(stderr, "integrity check failed: expected "+integrity+", got sha512-") {
		t.Fatalf("install of a tampered tarball: %v\n%s", err, stderr)
	}
	root := filepath.Join(dir, "runtime", "llama")
	if ents, _ := os.ReadDir(root); len(ents) != 0 {
		t.Fatalf("%s holds %v after a refused install", root, ents)
	}
	_, stderr, err = runEnv(t, bareEnv(t), "runtime", "install", "rocm", "--datadir", dir)
	if err == nil || !strings.Contains(stderr, `unknown llama.cpp build "rocm" (want cpu, cuda or vulkan)`) {
		t.Fatalf("install rocm: %v\n%s", err, stderr)
	}
}

// --shared installs into $XDG_CACHE_HOME/cocoon/llama, where a node with
// any datadir finds it (after its own datadir).
func TestRuntimeInstallShared(t *testing.T) {
	cache := t.TempDir()
	env := append(bareEnv(t), "XDG_CACHE_HOME="+cache)
	out, stderr, err := runEnv(t, env, "runtime", "install", "cpu", "--shared", "--registry", npmRegistry(t, cpuTarball(t)))
	want := filepath.Join(cache, "cocoon", "llama", "cpu-"+llamalib.Version)
	if err != nil || !strings.Contains(out, want) {
		t.Fatalf("install --shared: %v: %s%s; want %s", err, out, stderr, want)
	}
	list, _, err := runEnv(t, env, "runtime", "list", "--datadir", t.TempDir())
	if err != nil || !strings.Contains(list, "a node would load: cpu from "+want+" (cache)") {
		t.Fatalf("cocoon runtime list: %v\n%s", err, list)
	}
}
