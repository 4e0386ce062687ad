package runtime

// GPU is one accelerator found on this machine.
type GPU struct {
	Name      string // e.g. "NVIDIA H100 80GB HBM3"
	VRAMBytes uint64
	Driver    string // driver version
}

// DetectGPUs lists the NVIDIA GPUs of this machine through NVML. When it finds
// none it returns a reason ("no NVIDIA driver: ...", "built without NVML (build
// tag nvml)"). NVML needs cgo, so it is compiled in only with the build tag
// nvml; other builds get a stub that always says so.
func DetectGPUs() ([]GPU, string) { return detectGPUs() }
