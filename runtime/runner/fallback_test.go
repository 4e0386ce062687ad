package runner

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/internal/testmodel"
	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/llamalib"
)

// syncBuffer is a log sink shared by the supervisor's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// fakeDatadir installs two builds as `cocoon runtime install` lays them
// out: the real CPU build (links to the libraries `make deps` installed),
// and a "cuda" one, the same but for a libggml-cuda.so and a libllama.so
// that are not loadable libraries.
func fakeDatadir(t *testing.T) (datadir, cudaDir, cpuDir string) {
	t.Helper()
	datadir = t.TempDir()
	root := llamalib.DataDirRoot(datadir)
	cudaDir, cpuDir = llamalib.KindDir(root, llamalib.CUDA), llamalib.KindDir(root, llamalib.CPU)
	for _, d := range []string{cudaDir, cpuDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	real := testmodel.LibDir()
	ents, err := os.ReadDir(real)
	if err != nil || len(ents) == 0 {
		t.Fatalf("llama.cpp libraries in %s: %v (run `make deps`)", real, err)
	}
	for _, e := range ents {
		target, err := filepath.EvalSymlinks(filepath.Join(real, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(cpuDir, e.Name())); err != nil {
			t.Fatal(err)
		}
		if e.Name() != "libllama.so" {
			if err := os.Symlink(target, filepath.Join(cudaDir, e.Name())); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, f := range []string{"libllama.so", "libggml-cuda.so"} {
		if err := os.WriteFile(filepath.Join(cudaDir, f), []byte("not an ELF file\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return datadir, cudaDir, cpuDir
}

// A CUDA build that cannot load, on a machine whose NVIDIA driver is
// (faked) present, is chosen first; its child fails, the engine is started
// again on the CPU build, the reason is logged in one line and reported in
// Offload, and the model answers.
func TestGPUBuildThatFailsFallsBackToCPU(t *testing.T) {
	datadir, cudaDir, cpuDir := fakeDatadir(t)
	libs, err := llamalib.Choose(llamalib.Options{DataDir: datadir, Host: &llamalib.Host{NVIDIA: true},
		Env: func(string) string { return "" }})
	if err != nil {
		t.Fatal(err)
	}
	if len(libs) != 2 || libs[0].Kind != llamalib.CUDA || libs[1].Kind != llamalib.CPU {
		t.Fatalf("Choose = %+v; want cuda then cpu", libs)
	}
	var logs syncBuffer
	b := start(t, 1, func(c *Config) {
		c.LibDir, c.Libs, c.GPULayers = "", libs, -1
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})

	var warn []string
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "level=WARN") {
			warn = append(warn, l)
		}
	}
	if len(warn) != 1 || !strings.Contains(warn[0], "cuda build failed to start; falling back to the cpu build") ||
		!strings.Contains(warn[0], cudaDir) || !strings.Contains(warn[0], "libllama.so") {
		t.Fatalf("want one WARN line naming the cuda folder and the reason; log:\n%s", logs.String())
	}
	t.Logf("logged: %s", warn[0])

	o, ok := b.Offload(testmodel.ModelID)
	if !ok || o.Lib != "cpu" || o.LibDir != cpuDir || o.GPULayers != 0 || o.Layers < 2 ||
		!strings.Contains(o.Fallback, "cuda build in "+cudaDir+" failed") {
		t.Fatalf("Offload = %+v, %v; want the cpu build, no GPU layers, and the cuda failure", o, ok)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := b.Generate(ctx, greedy("Once upon a time", 8))
	if err != nil {
		t.Fatal(err)
	}
	text, _, err := collect(t, s)
	if err != nil || text == "" {
		t.Fatalf("generate on the fallback = %q, %v", text, err)
	}
}

// The CPU build failing has nothing to fall back to: the start fails with
// the child's reason, and no build is tried twice.
func TestCPUBuildFailureDoesNotFallBack(t *testing.T) {
	_, cudaDir, _ := fakeDatadir(t)
	dir := t.TempDir() // a CPU build with a broken libllama.so
	for _, f := range []string{"libllama.so", "libggml.so", "libggml-base.so"} {
		os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o644)
	}
	var logs syncBuffer
	_, err := New(context.Background(), Config{
		Libs:   []llamalib.Lib{{Dir: dir, Kind: llamalib.CPU}, {Dir: cudaDir, Kind: llamalib.CUDA}},
		Models: []runtime.ModelConfig{{Path: testmodel.ModelPath(t)}}, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err == nil || !strings.Contains(err.Error(), dir) {
		t.Fatalf("New = %v; want the CPU build's load error", err)
	}
	if strings.Contains(logs.String(), "falling back") {
		t.Fatalf("fell back from the CPU build:\n%s", logs.String())
	}
}
