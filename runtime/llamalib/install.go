package llamalib

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha512"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// Kind is a build of llama.cpp: which hardware its ggml backend drives.
type Kind string

// The kinds npm ships for linux-x64.
const (
	CPU    Kind = "cpu"
	CUDA   Kind = "cuda"
	Vulkan Kind = "vulkan"
)

// GPU reports whether k offloads to a GPU.
func (k Kind) GPU() bool { return k == CUDA || k == Vulkan }

// Kinds lists the kinds in order of preference.
var Kinds = []Kind{CUDA, Vulkan, CPU}

// ParseKind reads "cpu", "cuda" or "vulkan".
func ParseKind(s string) (Kind, error) {
	for _, k := range Kinds {
		if string(k) == s {
			return k, nil
		}
	}
	return "", fmt.Errorf("unknown llama.cpp build %q (want cpu, cuda or vulkan)", s)
}

// Version is the pinned node-llama-cpp package version (llama.cpp release v0.5.0,
// which yzma v1.28.0 matches).
const Version = "3.22.1"

// DefaultRegistry is npm's registry.
const DefaultRegistry = "https://registry.npmjs.org"

// Package is one pinned npm package.
type Package struct {
	Name      string // e.g. "@node-llama-cpp/linux-x64-cuda"
	Tarball   string // the path of its tarball under the registry URL
	Integrity string // npm's dist.integrity: "sha512-" and the base64 digest
}

// Packages are the pinned packages, from `npm view <name>@3.22.1 dist`.
var Packages = map[Kind]Package{
	CPU: {"@node-llama-cpp/linux-x64", "/@node-llama-cpp/linux-x64/-/linux-x64-3.22.1.tgz",
		"sha512-5uCCDNqWCNfaAm8aR/Uzxbo4HBpKgNF91kCHPepKhgMgV2OAmatoefbOlMihsqCiH2Od35E/eUHQCFbfRBJuOg=="},
	CUDA: {"@node-llama-cpp/linux-x64-cuda", "/@node-llama-cpp/linux-x64-cuda/-/linux-x64-cuda-3.22.1.tgz",
		"sha512-8rQCjyNNLZJUFit+YpjwlC4hwkKgOMIkB2wuycKBf8NU2O3ySKbiWZQ8aw9ku2nUTXjSnUIrE6KB88itduTBuA=="},
	Vulkan: {"@node-llama-cpp/linux-x64-vulkan", "/@node-llama-cpp/linux-x64-vulkan/-/linux-x64-vulkan-3.22.1.tgz",
		"sha512-bBxqU+JOcBu1nb5Qj2zcMci+JByT1E8EajHvYodyNfVIPkEhXh+/HMwR1/BT7xP08YK0hks+kM8fglER0P8JEg=="},
}

// Bounds on a tarball, which is a stranger's input until its hash matches
// and a decompression bomb's carrier if the pin were ever wrong. The CUDA
// package is the largest: 143 MB packed.
const (
	MaxTarball  = 512 << 20 // bytes downloaded
	MaxUnpacked = 2 << 30   // bytes of all files unpacked
	MaxFile     = 1 << 30   // bytes of one file
	MaxEntries  = 256       // tar entries
)

// ErrIntegrity is returned when a tarball's hash is not the pinned one.
var ErrIntegrity = errors.New("llamalib: tarball integrity check failed")

// IntegrityFile, in an installed folder, holds the integrity of the tarball it came from.
const IntegrityFile = "INTEGRITY"

// DataDirRoot is where `cocoon runtime install` puts the kinds for a node's datadir.
func DataDirRoot(datadir string) string { return filepath.Join(datadir, "runtime", "llama") }

// CacheRoot is the shared install root: $XDG_CACHE_HOME/cocoon/llama, else
// ~/.cache/cocoon/llama; "" when neither is known.
func CacheRoot() string { return cacheRootFrom(os.Getenv) }

// KindDir is the folder of kind k under an install root.
func KindDir(root string, k Kind) string { return filepath.Join(root, string(k)+"-"+Version) }

// InstallOptions tunes Install; the zero value fetches from npm with http.DefaultClient.
type InstallOptions struct {
	Registry string       // base URL; empty: DefaultRegistry
	Client   *http.Client // nil: http.DefaultClient
	Force    bool         // reinstall over a complete folder
	Logger   *slog.Logger // nil: slog.Default()
}

// Install fetches kind k's pinned tarball, checks its integrity and unpacks
// its libraries into KindDir(root, k), which it returns. A folder already
// installed from the same tarball is kept unless opt.Force. Nothing is left
// behind on failure: not the download, not a partial folder.
func Install(ctx context.Context, root string, k Kind, opt InstallOptions) (string, error) {
	pkg, ok := Packages[k]
	if !ok {
		return "", fmt.Errorf("llamalib: no package for kind %q", k)
	}
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	dest := KindDir(root, k)
	if !opt.Force {
		if b, err := os.ReadFile(filepath.Join(dest, IntegrityFile)); err == nil && strings.TrimSpace(string(b)) == pkg.Integrity {
			log.Info("llama.cpp already installed", "kind", k, "dir", dest)
			return dest, nil
		}
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", fmt.Errorf("llamalib: install %s: %w", k, err)
	}
	reg := strings.TrimSuffix(opt.Registry, "/")
	if reg == "" {
		reg = DefaultRegistry
	}
	url := reg + pkg.Tarball
	log.Info("fetching llama.cpp", "kind", k, "package", pkg.Name+"@"+Version, "url", url)
	tgz, err := fetch(ctx, opt.Client, url, root)
	if err != nil {
		return "", fmt.Errorf("llamalib: fetch %s: %w", url, err)
	}
	defer os.Remove(tgz.Name())
	defer tgz.Close()
	if err := checkIntegrity(tgz, pkg.Integrity); err != nil {
		return "", fmt.Errorf("%s from %s: %w", pkg.Name, url, err)
	}
	if _, err := tgz.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(root, ".install-"+string(k)+"-")
	if err != nil {
		return "", fmt.Errorf("llamalib: install %s: %w", k, err)
	}
	defer os.RemoveAll(tmp) // a no-op once renamed
	if err := unpack(tgz, tmp); err != nil {
		return "", fmt.Errorf("llamalib: unpack %s: %w", pkg.Name, err)
	}
	if err := os.WriteFile(filepath.Join(tmp, IntegrityFile), []byte(pkg.Integrity+"\n"), 0o644); err != nil {
		return "", err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	// Replace an older folder: move it aside first, so that dest is never half of either.
	if _, err := os.Stat(dest); err == nil {
		old := tmp + ".old"
		if err := os.Rename(dest, old); err != nil {
			return "", fmt.Errorf("llamalib: replace %s: %w", dest, err)
		}
		defer os.RemoveAll(old)
	}
	if err := os.Rename(tmp, dest); err != nil {
		return "", fmt.Errorf("llamalib: install %s: %w", dest, err)
	}
	log.Info("llama.cpp installed", "kind", k, "dir", dest)
	return dest, nil
}

// fetch downloads url into a temporary file under dir, at most MaxTarball bytes.
func fetch(ctx context.Context, c *http.Client, url, dir string) (*os.File, error) {
	if c == nil {
		c = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("registry answered %s", resp.Status)
	}
	if resp.ContentLength > MaxTarball {
		return nil, fmt.Errorf("tarball of %d bytes is over the %d-byte bound", resp.ContentLength, MaxTarball)
	}
	f, err := os.CreateTemp(dir, ".download-*.tgz")
	if err != nil {
		return nil, err
	}
	n, err := io.Copy(f, io.LimitReader(resp.Body, MaxTarball+1))
	if err == nil && n > MaxTarball {
		err = fmt.Errorf("tarball is over the %d-byte bound", MaxTarball)
	}
	if err != nil {
		f.Close()
		os.Remove(f.Name())
		if resp.ContentLength >= 0 {
			return nil, fmt.Errorf("got %d of %d bytes: %w", n, resp.ContentLength, err)
		}
		return nil, fmt.Errorf("after %d bytes: %w", n, err)
	}
	return f, nil
}

// checkIntegrity hashes r from its start and compares it with an npm
// integrity string ("sha512-<base64>").
func checkIntegrity(r io.ReadSeeker, want string) error {
	if _, err := r.Seek(0, io.SeekStart); err != nil {
		return err
	}
	h := sha512.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return err
	}
	got := "sha512-" + base64.StdEncoding.EncodeToString(h.Sum(nil))
	if got != want {
		return fmt.Errorf("%w: expected %s, got %s (%d bytes); refusing to unpack it", ErrIntegrity, want, got, n)
	}
	return nil
}

// unpack writes the shared libraries of an npm tarball flat into dir and
// links libllama.so and libggml.so to the versioned files. Only regular
// files under package/bins/ whose names end in ".so" are kept; every entry
// is checked (no absolute path, no "..", no link leaving the package) and
// sizes are bounded, whether it is kept or not.
func unpack(r io.Reader, dir string) error {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return err
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	var total int64
	var entries int
	var llama, ggml string
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if entries++; entries > MaxEntries {
			return fmt.Errorf("more than %d entries", MaxEntries)
		}
		name := h.Name
		if err := safeName(name); err != nil {
			return err
		}
		switch h.Typeflag {
		case tar.TypeSymlink, tar.TypeLink:
			target := h.Linkname
			if h.Typeflag == tar.TypeSymlink && !path.IsAbs(target) {
				target = path.Join(path.Dir(name), target)
			}
			if err := safeName(target); err != nil {
				return fmt.Errorf("link %s → %s: %w", name, h.Linkname, err)
			}
			continue // not kept: the folder is rebuilt flat
		case tar.TypeReg:
		default:
			continue // directories and the like: the folder is flat
		}
		if h.Size < 0 || h.Size > MaxFile {
			return fmt.Errorf("%s: %d bytes is over the %d-byte bound", name, h.Size, MaxFile)
		}
		if total += h.Size; total > MaxUnpacked {
			return fmt.Errorf("over %d bytes unpacked", MaxUnpacked)
		}
		base := path.Base(name)
		if !strings.HasPrefix(name, "package/bins/") || !strings.HasSuffix(base, ".so") {
			continue
		}
		if err := writeFile(filepath.Join(dir, base), tr, h.Size); err != nil {
			return err
		}
		switch {
		case strings.HasPrefix(base, "libllama.") && base != "libllama.so":
			llama = base
		case strings.HasPrefix(base, "libggml.") && base != "libggml.so":
			ggml = base
		}
	}
	if llama == "" || ggml == "" {
		return errors.New("the package holds no libllama.*.so or libggml.*.so")
	}
	for link, target := range map[string]string{"libllama.so": llama, "libggml.so": ggml} {
		p := filepath.Join(dir, link)
		_ = os.Remove(p) // a package shipping the plain name too: the versioned file wins
		if err := os.Symlink(target, p); err != nil {
			return err
		}
	}
	return nil
}

// safeName refuses tar names that would leave the folder they are unpacked in.
func safeName(name string) error {
	if name == "" || path.IsAbs(name) || strings.HasPrefix(name, "\\") || filepath.VolumeName(name) != "" {
		return fmt.Errorf("entry %q: absolute path", name)
	}
	for _, part := range strings.Split(strings.ReplaceAll(name, "\\", "/"), "/") {
		if part == ".." {
			return fmt.Errorf("entry %q: path leaves the package", name)
		}
	}
	return nil
}

func writeFile(p string, r io.Reader, size int64) error {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	n, err := io.Copy(f, io.LimitReader(r, size))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != size {
		err = fmt.Errorf("%s: %d of %d bytes", filepath.Base(p), n, size)
	}
	return err
}
