package llamalib

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ebitengine/purego"
)

// LibEnv names a library folder when the configuration names none.
const LibEnv = "COCOON_LLAMA_LIB"

// ErrNotInstalled is returned by Choose when no library folder is found.
var ErrNotInstalled = errors.New("llamalib: llama.cpp libraries not found")

// Lib is one library folder to try.
type Lib struct {
	Dir  string `json:"dir"`
	Kind Kind   `json:"kind"`
	From string `json:"from"` // "runtime.lib_dir", "$COCOON_LLAMA_LIB", "datadir" or "cache"
}

// Host says which GPU drivers this machine has, for the choice of a build.
type Host struct {
	NVIDIA bool   // an NVIDIA driver: libcuda.so.1 loads, or /proc/driver/nvidia/version exists
	Vulkan bool   // a Vulkan loader: libvulkan.so.1 loads
	Why    string // what was found, for the log
}

// DetectHost looks for the drivers. It opens and closes libcuda.so.1 and
// libvulkan.so.1 without calling into them.
func DetectHost() Host {
	var h Host
	var why []string
	if _, err := os.Stat("/proc/driver/nvidia/version"); err == nil {
		h.NVIDIA = true
		why = append(why, "/proc/driver/nvidia/version")
	} else if loadable("libcuda.so.1") {
		h.NVIDIA = true
		why = append(why, "libcuda.so.1")
	}
	if loadable("libvulkan.so.1") {
		h.Vulkan = true
		why = append(why, "libvulkan.so.1")
	}
	if len(why) == 0 {
		h.Why = "no GPU driver (no libcuda.so.1, /proc/driver/nvidia, libvulkan.so.1)"
	} else {
		h.Why = "found " + strings.Join(why, ", ")
	}
	return h
}

func loadable(name string) bool {
	h, err := purego.Dlopen(name, purego.RTLD_LAZY|purego.RTLD_LOCAL)
	if err != nil {
		return false
	}
	_ = purego.Dlclose(h)
	return true
}

// Options are what Choose looks at.
type Options struct {
	LibDir  string // runtime.lib_dir
	DataDir string // the node's datadir; empty: not looked in
	// Want forces a kind (runtime.llama); empty: the best the host has.
	Want Kind
	// Host is the machine's drivers; nil: DetectHost().
	Host *Host
	// Env reads the environment; nil: os.Getenv. CacheRoot is read from it too.
	Env func(string) string
}

// Choose returns the library folders to try in order: the first is the
// one to load, the rest are fallbacks should it fail (the CPU build last).
// A configured folder (lib_dir, else $COCOON_LLAMA_LIB) comes first whatever
// its kind, followed by the installed CPU build when it is a GPU one. Without
// one, the installed kinds the host can run, CUDA, then Vulkan, then CPU.
// The error, when none is found, says how to install one.
func Choose(opt Options) ([]Lib, error) {
	env := opt.Env
	if env == nil {
		env = os.Getenv
	}
	host := opt.Host
	if host == nil {
		h := DetectHost()
		host = &h
	}
	installed := Installed(opt.DataDir, cacheRootFrom(env))
	var out []Lib
	explicit := Lib{Dir: opt.LibDir, From: "runtime.lib_dir"}
	if explicit.Dir == "" {
		explicit = Lib{Dir: env(LibEnv), From: "$" + LibEnv}
	}
	if explicit.Dir != "" {
		explicit.Kind = KindOf(explicit.Dir)
		out = append(out, explicit)
		if explicit.Kind.GPU() {
			for _, l := range installed {
				if l.Kind == CPU {
					out = append(out, l)
					break
				}
			}
		}
		return out, nil
	}
	for _, k := range Kinds {
		switch {
		case opt.Want != "" && k != opt.Want && k != CPU:
			continue
		case opt.Want == "" && k == CUDA && !host.NVIDIA:
			continue
		case opt.Want == "" && k == Vulkan && !host.Vulkan:
			continue
		}
		for _, l := range installed {
			if l.Kind == k {
				out = append(out, l)
				break
			}
		}
	}
	if opt.Want != "" && (len(out) == 0 || out[0].Kind != opt.Want) {
		return nil, fmt.Errorf("%w: runtime.llama is %q, but no %s build is installed in %s; run `cocoon runtime install %s`",
			ErrNotInstalled, opt.Want, opt.Want, strings.Join(roots(opt.DataDir, cacheRootFrom(env)), " or "), opt.Want)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: runtime.lib_dir and $%s are unset and none is installed in %s; run `cocoon runtime install` (or `make deps` in a checkout)",
			ErrNotInstalled, LibEnv, strings.Join(roots(opt.DataDir, cacheRootFrom(env)), " or "))
	}
	return out, nil
}

// Installed lists the complete installed folders under the datadir's root,
// then the shared cache's, each kind in order of preference.
func Installed(datadir, cacheRoot string) []Lib {
	var out []Lib
	for _, k := range Kinds {
		for i, root := range []string{datadirRoot(datadir), cacheRoot} {
			if root == "" {
				continue
			}
			dir := KindDir(root, k)
			if _, err := os.Stat(filepath.Join(dir, "libllama.so")); err != nil {
				continue
			}
			from := "datadir"
			if i == 1 {
				from = "cache"
			}
			out = append(out, Lib{Dir: dir, Kind: k, From: from})
		}
	}
	return out
}

// KindOf tells a folder's build by the ggml backend it ships.
func KindOf(dir string) Kind {
	for _, k := range []Kind{CUDA, Vulkan} {
		if _, err := os.Stat(filepath.Join(dir, "libggml-"+string(k)+".so")); err == nil {
			return k
		}
	}
	return CPU
}

func datadirRoot(datadir string) string {
	if datadir == "" {
		return ""
	}
	return DataDirRoot(datadir)
}

func cacheRootFrom(env func(string) string) string {
	if d := env("XDG_CACHE_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "cocoon", "llama")
	}
	if h := env("HOME"); h != "" {
		return filepath.Join(h, ".cache", "cocoon", "llama")
	}
	if h, err := os.UserHomeDir(); err == nil && h != "" {
		return filepath.Join(h, ".cache", "cocoon", "llama")
	}
	return ""
}

func roots(datadir, cache string) []string {
	var out []string
	for _, r := range []string{datadirRoot(datadir), cache} {
		if r != "" {
			out = append(out, r)
		}
	}
	return out
}
