// Package testmodel finds the llama.cpp libraries and the shared test model
// for every test of the module (runtime, market, market/service,
// testnet/inproc, cmd/cocoon), and fails (not skips) a test when they are
// missing: `make test` installs the libraries first, so their absence is a
// broken set-up to fix, not hardware to do without. It is the one copy of
// that lookup; only tests import it.
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
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// LibDir is $COCOON_LLAMA_LIB, or .cache/llama/lib of this checkout (where
// `make deps` installs the libraries).
func LibDir() string {
	if d := os.Getenv(llamacpp.LibEnv); d != "" {
		return d
	}
	return filepath.Join(root(), ".cache", "llama", "lib")
}

// Path is $COCOON_TEST_MODEL, or ../shared/models/stories260K.gguf beside
// this checkout; it is not checked.
func Path() string {
	if p := os.Getenv("COCOON_TEST_MODEL"); p != "" {
		return p
	}
	return filepath.Join(root(), "..", "shared", "models", "stories260K.gguf")
}

// ModelPath is Path, failing t when the file is not there.
func ModelPath(t testing.TB) string {
	t.Helper()
	p := Path()
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("test model: %v (set COCOON_TEST_MODEL to stories260K.gguf; ../shared/models/MODELS.md says where it comes from)", err)
	}
	return p
}

// Backend loads the shared model in process, under id (ModelID when empty),
// with one thread (llama.cpp's threads spin-wait, and tests share the machine
// with builds) and closes it when the test ends.
func Backend(t testing.TB, parallel int, id ...string) *llamacpp.Backend {
	t.Helper()
	mc := runtime.ModelConfig{Path: ModelPath(t)}
	if len(id) > 0 {
		mc.ID = id[0]
	}
	b, err := llamacpp.New(llamacpp.Config{
		LibDir:   LibDir(),
		Models:   []runtime.ModelConfig{mc},
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
