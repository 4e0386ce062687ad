// Package llamalib installs and finds the prebuilt llama.cpp libraries that
// the embedded engine (runtime/llamacpp, through yzma) loads at run time, so
// that a node built from nothing but the cocoon binary can serve a model.
//
// It exists apart from runtime/llamacpp because choosing and installing a
// library folder must not load one: purego cannot unload a library, so the
// choice is made in the node (runtime/backends) and each try happens in an
// engine child process (runtime/runner), which can fall back to the CPU build
// when a GPU build fails to load. cmd/cocoon imports it for
// `cocoon runtime install`; runtime/backends for Choose.
//
// # Packages
//
// The libraries are npm's @node-llama-cpp/linux-x64{,-cuda,-vulkan} 3.22.1
// (llama.cpp release v0.5.0), fetched from the registry's tarball URL with
// net/http and checked against the sha512 pinned here (npm's dist.integrity)
// before a byte is unpacked. Each kind is unpacked flat into
//
//	<datadir>/runtime/llama/<kind>-3.22.1/     (cocoon runtime install)
//	$XDG_CACHE_HOME/cocoon/llama/<kind>-3.22.1/ (cocoon runtime install --shared;
//	                                           ~/.cache when XDG_CACHE_HOME is unset)
//
// with libllama.so and libggml.so linking the versioned files (yzma opens
// those plain names) and an INTEGRITY file naming the tarball's hash. A folder
// appears whole or not at all: it is unpacked into a temporary sibling and
// renamed.
//
// # Lookup and selection
//
// Choose returns the folders to try, best first: runtime.lib_dir, else
// $COCOON_LLAMA_LIB, else the installed kinds (datadir before the shared
// cache). Among installed kinds it takes CUDA when an NVIDIA driver is present
// (libcuda.so.1 loads or /proc/driver/nvidia/version exists), Vulkan when
// libvulkan.so.1 loads, and the CPU build always, last, as the fallback.
package llamalib
