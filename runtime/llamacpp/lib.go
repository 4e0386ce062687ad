package llamacpp

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"unsafe"

	"github.com/ebitengine/purego"
	"github.com/hybridgroup/yzma/pkg/llama"
)

// ErrNoLibrary is returned when llama.cpp's shared libraries cannot be found
// or loaded. `cocoon runtime install` (runtime/llamalib) installs them, as
// does `make deps` (scripts/llama-libs.sh) in a checkout.
var ErrNoLibrary = errors.New("llamacpp: llama.cpp libraries not available")

// LibEnv is the environment variable naming the library folder when the
// configuration names none.
const LibEnv = "COCOON_LLAMA_LIB"

// The libraries are process-global: llama.cpp is loaded once, from one folder.
var lib struct {
	mu   sync.Mutex
	dir  string // folder loaded from, "" before the first success
	err  error  // a failed load poisons the process: purego cannot unload half of it
	logs logCapture
}

// requiredLibs are the files llama.Load opens by these names.
var requiredLibs = []string{"libllama.so", "libggml.so", "libggml-base.so"}

// loadLibrary loads llama.cpp from dir (or $COCOON_LLAMA_LIB) once per process.
func loadLibrary(dir string) error {
	if dir == "" {
		dir = os.Getenv(LibEnv)
	}
	if dir == "" {
		return fmt.Errorf("%w: no library folder configured (runtime.lib_dir) and $%s is unset; run `cocoon runtime install` (or `make deps` in a checkout)", ErrNoLibrary, LibEnv)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrNoLibrary, dir, err)
	}
	var missing []string
	for _, name := range requiredLibs {
		if _, err := os.Stat(filepath.Join(abs, name)); err != nil {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s lacks %s; run `cocoon runtime install` (or `make deps` in a checkout)", ErrNoLibrary, abs, strings.Join(missing, ", "))
	}

	lib.mu.Lock()
	defer lib.mu.Unlock()
	if lib.err != nil {
		return lib.err
	}
	if lib.dir != "" {
		if lib.dir != abs {
			return fmt.Errorf("%w: already loaded from %s, cannot load a second copy from %s", ErrNoLibrary, lib.dir, abs)
		}
		return nil
	}
	if err := llama.Load(abs); err != nil {
		lib.err = fmt.Errorf("%w: load from %s: %v", ErrNoLibrary, abs, err)
		return lib.err
	}
	llama.LogSet(purego.NewCallback(lib.logs.callback))
	llama.Init()
	lib.dir = abs
	return nil
}

// logCapture receives llama.cpp's log lines: it forwards them to slog at debug
// level and keeps the recent warnings and errors, so that a failed model load
// can say why (llama.cpp reports the reason only in its log).
type logCapture struct {
	mu     sync.Mutex
	log    *slog.Logger
	recent []string
}

const (
	ggmlLogWarn  = 3
	ggmlLogError = 4
)

func (c *logCapture) callback(level int32, text, _ uintptr) uintptr {
	s := strings.TrimSpace(cString(text))
	if s == "" {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if level == ggmlLogWarn || level == ggmlLogError {
		c.recent = append(c.recent, s)
		if len(c.recent) > 8 {
			c.recent = c.recent[len(c.recent)-8:]
		}
	}
	if c.log != nil {
		c.log.Debug("llama.cpp", "level", level, "msg", s)
	}
	return 0
}

// take returns and clears the captured warnings and errors.
func (c *logCapture) take() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := strings.Join(c.recent, "; ")
	c.recent = nil
	return s
}

func (c *logCapture) setLogger(l *slog.Logger) {
	c.mu.Lock()
	c.log = l
	c.mu.Unlock()
}

// cString copies a NUL-terminated C string (at most 4 KiB of it).
func cString(p uintptr) string {
	if p == 0 {
		return ""
	}
	ptr := *(*unsafe.Pointer)(unsafe.Pointer(&p))
	n := 0
	for n < 4096 && *(*byte)(unsafe.Add(ptr, n)) != 0 {
		n++
	}
	return string(unsafe.Slice((*byte)(ptr), n))
}
