// Package testmodel finds the llama.cpp libraries and the shared test model
// for the runtime packages' tests, and fails (not skips) a test when they are
// missing: `make test` installs the libraries first, so their absence is a
// broken set-up to fix, not hardware to do without.
package testmodel

import (
	"log/slog"
	"os"
	"path/filepath"
	goruntime "runtime"
	"testing"

	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/llamacpp"
)

// ModelID is the id the shared model is served under.
const ModelID = "stories260K"

// root is the repository root, found from this file's path.
func root() string {
	_, file, _, _ := goruntime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", "..", ".."))
}

// LibDir is $COCOON_LLAMA_LIB, or .cache/llama/lib of this checkout.
func LibDir() string {
	if d := os.Getenv("COCOON_LLAMA_LIB"); d != "" {
		return d
	}
	return filepath.Join(root(), ".cache", "llama", "lib")
}

// ModelPath is $COCOON_TEST_MODEL, or ../shared/models/stories260K.gguf beside this checkout.
func ModelPath(t testing.TB) string {
	p := os.Getenv("COCOON_TEST_MODEL")
	if p == "" {
		p = filepath.Join(root(), "..", "shared", "models", "stories260K.gguf")
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("test model: %v (set COCOON_TEST_MODEL to stories260K.gguf; ../shared/models/MODELS.md says where it comes from)", err)
	}
	return p
}

// Backend loads the shared model with one thread (llama.cpp's threads
// spin-wait, and tests share the machine with builds) and closes it at the end.
func Backend(t testing.TB, parallel int) *llamacpp.Backend {
	t.Helper()
	b, err := llamacpp.New(llamacpp.Config{
		LibDir:   LibDir(),
		Models:   []runtime.ModelConfig{{Path: ModelPath(t)}},
		Threads:  1,
		Parallel: parallel,
		Logger:   slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatalf("llamacpp backend: %v", err) // the error says to run `make deps`
	}
	t.Cleanup(func() { b.Close() })
	return b
}
