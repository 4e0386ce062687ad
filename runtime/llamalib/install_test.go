package llamalib

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"testing"
)

// TarballEnv names the CPU package's tarball as npm serves it; unset:
// .cache/llama/node-llama-cpp-linux-x64-3.22.1.tgz of this checkout, where
// `make deps` (scripts/llama-libs.sh) keeps it.
const TarballEnv = "COCOON_LLAMA_TGZ"

// cpuTarball reads the real tarball, failing (not skipping) t without it:
// `make test` runs `make deps` first.
func cpuTarball(t *testing.T) []byte {
	t.Helper()
	p := os.Getenv(TarballEnv)
	if p == "" {
		_, file, _, _ := goruntime.Caller(0)
		p = filepath.Join(filepath.Dir(file), "..", "..", ".cache", "llama", "node-llama-cpp-linux-x64-"+Version+".tgz")
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("the CPU package's tarball: %v (run `make deps`, or set %s)", err, TarballEnv)
	}
	return b
}

// registry is a loopback npm registry serving body at the CPU package's
// tarball path, with a Content-Length of size (len(body) when negative).
func registry(t *testing.T, body []byte, size int) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != Packages[CPU].Tarball {
			http.NotFound(w, r)
			return
		}
		if size < 0 {
			size = len(body)
		}
		w.Header().Set("Content-Length", strconv.Itoa(size))
		w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

var quiet = slog.New(slog.DiscardHandler)

func TestInstallFromLoopbackRegistry(t *testing.T) {
	url := registry(t, cpuTarball(t), -1)
	root := filepath.Join(t.TempDir(), "runtime", "llama")
	dir, err := Install(context.Background(), root, CPU, InstallOptions{Registry: url, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(root, "cpu-"+Version); dir != want {
		t.Fatalf("installed into %s; want %s", dir, want)
	}
	for link, target := range map[string]string{"libllama.so": "libllama.v0.5.0.so", "libggml.so": "libggml.v0.5.0.so"} {
		if got, err := os.Readlink(filepath.Join(dir, link)); err != nil || got != target {
			t.Errorf("%s → %q, %v; want → %s", link, got, err, target)
		}
	}
	for _, f := range []string{"libggml-base.so", "libggml-cpu-x64.so", "libllama.v0.5.0.so", IntegrityFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "llama-addon.node")); err == nil {
		t.Error("kept llama-addon.node: only the .so files belong in the folder")
	}
	assertOnly(t, root, "cpu-"+Version)

	// A second install finds it complete and fetches nothing.
	dead := registry(t, nil, 0)
	if _, err := Install(context.Background(), root, CPU, InstallOptions{Registry: dead, Logger: quiet}); err != nil {
		t.Fatalf("second install: %v", err)
	}
	// --force replaces it whole.
	if _, err := Install(context.Background(), root, CPU, InstallOptions{Registry: url, Force: true, Logger: quiet}); err != nil {
		t.Fatalf("forced install: %v", err)
	}
	assertOnly(t, root, "cpu-"+Version)
	libs := Installed(filepath.Dir(filepath.Dir(root)), "")
	if len(libs) != 1 || libs[0].Kind != CPU || libs[0].Dir != dir || libs[0].From != "datadir" {
		t.Fatalf("Installed = %+v; want the cpu folder from the datadir", libs)
	}
}

// assertOnly fails t unless root holds exactly names: no temporary folder,
// no download left behind.
func assertOnly(t *testing.T, root string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(root)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(names, ",") {
		t.Fatalf("%s holds %v; want %v", root, got, names)
	}
}

func TestInstallRefusesTamperedOrTruncatedTarball(t *testing.T) {
	good := cpuTarball(t)
	tampered := bytes.Clone(good)
	tampered[len(tampered)/2] ^= 0x01
	for _, tc := range []struct {
		name string
		body []byte
		size int
		want string
	}{
		{"one byte changed", tampered, -1, "expected " + Packages[CPU].Integrity + ", got sha512-"},
		{"truncated, short Content-Length", good[:len(good)/3], -1, "expected " + Packages[CPU].Integrity + ", got sha512-"},
		{"truncated, full Content-Length", good[:len(good)/3], len(good), "unexpected EOF"},
		{"empty", nil, -1, "expected " + Packages[CPU].Integrity},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "llama")
			_, err := Install(context.Background(), root, CPU, InstallOptions{Registry: registry(t, tc.body, tc.size), Logger: quiet})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Install = %v; want an error containing %q", err, tc.want)
			}
			if strings.HasPrefix(tc.want, "expected ") && !errors.Is(err, ErrIntegrity) {
				t.Errorf("Install = %v; want ErrIntegrity", err)
			}
			t.Log(err)
			assertOnly(t, root) // nothing half-installed, no download kept
		})
	}
}

func TestInstallRegistryErrors(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	root := t.TempDir()
	_, err := Install(context.Background(), root, CPU, InstallOptions{Registry: srv.URL, Logger: quiet})
	if err == nil || !strings.Contains(err.Error(), "404") || !strings.Contains(err.Error(), Packages[CPU].Tarball) {
		t.Fatalf("Install from a 404 = %v; want the status and the URL", err)
	}
	assertOnly(t, root)
}

// entry is one tar entry of a crafted tarball.
type entry struct {
	name, link string
	typ        byte
	body       string
	size       int64 // header size when body is not written (oversized)
}

func tgz(t *testing.T, entries []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: 0o644, Size: int64(len(e.body))}
		if e.typ == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		if e.size > 0 {
			h.Size = e.size
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.size > 0 {
			tw.Flush() // the oversized entry is refused on its header: its body never comes
			break
		}
		io.WriteString(tw, e.body)
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

func TestUnpackRefusesHostileEntries(t *testing.T) {
	libs := []entry{{name: "package/bins/linux-x64/libllama.v0.5.0.so", body: "x"}, {name: "package/bins/linux-x64/libggml.v0.5.0.so", body: "y"}}
	many := make([]entry, MaxEntries+1)
	for i := range many {
		many[i] = entry{name: "package/f" + strconv.Itoa(i)}
	}
	for _, tc := range []struct {
		name    string
		entries []entry
		want    string // "" : unpacks
	}{
		{"plain", libs, ""},
		{"vulkan names", []entry{{name: "package/bins/linux-x64-vulkan/libllama.vulkan.v0.5.0.so", body: "x"},
			{name: "package/bins/linux-x64-vulkan/libggml.vulkan.v0.5.0.so", body: "y"}, {name: "package/bins/linux-x64-vulkan/libggml-vulkan.so", body: "z"}}, ""},
		{"absolute path", append([]entry{{name: "/etc/libx.so", body: "x"}}, libs...), "absolute path"},
		{"dot-dot", append([]entry{{name: "package/bins/../../../libx.so", body: "x"}}, libs...), "leaves the package"},
		{"symlink outside", append([]entry{{name: "package/bins/l.so", link: "../../../etc/passwd", typ: tar.TypeSymlink}}, libs...), "leaves the package"},
		{"absolute symlink", append([]entry{{name: "package/bins/l.so", link: "/etc/passwd", typ: tar.TypeSymlink}}, libs...), "absolute path"},
		{"hard link outside", append([]entry{{name: "package/bins/l.so", link: "../x", typ: tar.TypeLink}}, libs...), "leaves the package"},
		{"oversized file", append(libs, entry{name: "package/bins/big.so", size: MaxFile + 1}), "bound"},
		{"too many entries", many, "more than 256 entries"},
		{"no libllama", libs[1:], "no libllama"},
		{"duplicate name", append(libs, libs[0]), "exists"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			err := unpack(bytes.NewReader(tgz(t, tc.entries)), dir)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unpack = %v; want success", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("unpack = %v; want an error containing %q", err, tc.want)
			}
			if tc.want == "" && KindOf(dir) != map[string]Kind{"plain": CPU, "vulkan names": Vulkan}[tc.name] {
				t.Errorf("KindOf = %s", KindOf(dir))
			}
		})
	}
}

// A tarball whose hash is wrong is never unpacked: the check comes first.
func TestIntegrityBeforeUnpack(t *testing.T) {
	bomb := tgz(t, []entry{{name: "/etc/evil.so", body: "x"}})
	err := checkIntegrity(bytes.NewReader(bomb), Packages[CPU].Integrity)
	if !errors.Is(err, ErrIntegrity) {
		t.Fatalf("checkIntegrity = %v; want ErrIntegrity", err)
	}
}
