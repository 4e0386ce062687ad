package llamalib

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeInstall makes an installed-looking folder of kind k under root.
func fakeInstall(t *testing.T, root string, k Kind) string {
	t.Helper()
	dir := KindDir(root, k)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	files := []string{"libllama.so", "libggml.so", "libggml-base.so"}
	if k.GPU() {
		files = append(files, "libggml-"+string(k)+".so")
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestChoose(t *testing.T) {
	datadir := t.TempDir()
	cache := t.TempDir()
	dd := DataDirRoot(datadir)
	cc := filepath.Join(cache, "cocoon", "llama")
	cpu := fakeInstall(t, dd, CPU)
	cuda := fakeInstall(t, dd, CUDA)
	vulkan := fakeInstall(t, cc, Vulkan) // the shared cache
	cacheCPU := fakeInstall(t, cc, CPU)
	explicit := t.TempDir()

	nvidia := &Host{NVIDIA: true, Vulkan: true}
	vk := &Host{Vulkan: true}
	none := &Host{}
	env := func(vars map[string]string) func(string) string {
		return func(k string) string {
			if k == "XDG_CACHE_HOME" {
				return cache
			}
			return vars[k]
		}
	}
	noEnv := env(nil)
	for _, tc := range []struct {
		name string
		opt  Options
		want []string // dirs, in order
	}{
		{"NVIDIA driver: CUDA, then Vulkan, then CPU", Options{DataDir: datadir, Host: nvidia, Env: noEnv}, []string{cuda, vulkan, cpu}},
		{"Vulkan only", Options{DataDir: datadir, Host: vk, Env: noEnv}, []string{vulkan, cpu}},
		{"no driver: the CPU", Options{DataDir: datadir, Host: none, Env: noEnv}, []string{cpu}},
		{"no datadir: the shared cache", Options{Host: none, Env: noEnv}, []string{cacheCPU}},
		{"forced vulkan without a loader", Options{DataDir: datadir, Want: Vulkan, Host: none, Env: noEnv}, []string{vulkan, cpu}},
		{"forced cpu with a driver", Options{DataDir: datadir, Want: CPU, Host: nvidia, Env: noEnv}, []string{cpu}},
		{"lib_dir first, whatever is installed", Options{LibDir: explicit, DataDir: datadir, Host: nvidia, Env: noEnv}, []string{explicit}},
		{"$COCOON_LLAMA_LIB", Options{DataDir: datadir, Host: nvidia, Env: env(map[string]string{LibEnv: explicit})}, []string{explicit}},
		{"lib_dir over $COCOON_LLAMA_LIB", Options{LibDir: cpu, Host: none, Env: env(map[string]string{LibEnv: explicit})}, []string{cpu}},
		{"a GPU lib_dir falls back to the installed CPU", Options{LibDir: cuda, DataDir: datadir, Host: nvidia, Env: noEnv}, []string{cuda, cpu}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			libs, err := Choose(tc.opt)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, l := range libs {
				got = append(got, l.Dir)
			}
			if strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Fatalf("Choose = %v; want %v", got, tc.want)
			}
		})
	}

	empty := t.TempDir()
	_, err := Choose(Options{DataDir: empty, Host: nvidia, Env: func(string) string { return "" }})
	if !errors.Is(err, ErrNotInstalled) || !strings.Contains(err.Error(), "cocoon runtime install") || !strings.Contains(err.Error(), DataDirRoot(empty)) {
		t.Fatalf("Choose with nothing installed = %v; want ErrNotInstalled naming the folder and `cocoon runtime install`", err)
	}
	_, err = Choose(Options{DataDir: datadir, Want: CUDA, Host: nvidia, Env: func(string) string { return "" }})
	if err != nil {
		t.Fatalf("forced cuda, installed: %v", err)
	}
	_, err = Choose(Options{DataDir: empty, Want: CUDA, Host: nvidia, Env: noEnv})
	if !errors.Is(err, ErrNotInstalled) || !strings.Contains(err.Error(), "cocoon runtime install cuda") {
		t.Fatalf("forced cuda, not installed = %v; want the install command", err)
	}
	if KindOf(cuda) != CUDA || KindOf(vulkan) != Vulkan || KindOf(cpu) != CPU {
		t.Fatalf("KindOf: %s %s %s", KindOf(cuda), KindOf(vulkan), KindOf(cpu))
	}
}

// DetectHost never fails: it says what it found either way.
func TestDetectHostSaysWhy(t *testing.T) {
	h := DetectHost()
	if h.Why == "" {
		t.Fatal("no reason")
	}
	t.Logf("%+v", h)
}
