package runtime

import "sync/atomic"

// GPU is one accelerator found on this machine.
type GPU struct {
	Name      string // e.g. "NVIDIA H100 80GB HBM3"
	VRAMBytes uint64
	FreeBytes uint64 // VRAM free when detected (what a model may still use)
	Driver    string // driver version
}

// detector is what DetectGPUs asks; runtime/nvml sets it when linked.
var detector atomic.Pointer[func() ([]GPU, string)]

// SetGPUDetector makes f the source of DetectGPUs. runtime/nvml calls it
// from its init (NVML opened at run time through purego); this package
// itself stays free of dlopen, as the layout test wants of it.
func SetGPUDetector(f func() ([]GPU, string)) { detector.Store(&f) }

// DetectGPUs lists the NVIDIA GPUs of this machine. When it finds none it
// returns a reason ("no NVIDIA driver: ..."). Every binary that links
// runtime/backends (the node) links runtime/nvml, which answers; others get
// a reason saying no detector is linked.
func DetectGPUs() ([]GPU, string) {
	if f := detector.Load(); f != nil {
		return (*f)()
	}
	return nil, "no GPU detector linked (import runtime/nvml)"
}

// Offload says where a model of the embedded engine runs: which build of
// llama.cpp, and how many of its layers sit on a GPU.
type Offload struct {
	Lib       string `json:"lib"`        // the llama.cpp build: "cpu", "cuda" or "vulkan"
	LibDir    string `json:"lib_dir"`    // the folder it was loaded from
	Layers    int    `json:"layers"`     // as llama.cpp counts them: the blocks and the output layer
	GPULayers int    `json:"gpu_layers"` // of those, offloaded to a GPU (0 on the CPU build, or with no GPU device)
	// Fallback is why a GPU build was passed over ("" when none failed).
	Fallback string `json:"fallback,omitempty"`
}

// OffloadReporter is a backend that says where each of its models runs
// (runtime/runner's Backend does). The node shows it in its status and ads:
// n.Backend.Unwrap().(runtime.OffloadReporter).
type OffloadReporter interface {
	Offload(model string) (Offload, bool)
}
