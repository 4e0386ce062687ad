// Package nvml lists the NVIDIA GPUs of this machine through NVML, the
// driver's management library, opened at run time with purego (dlopen of
// libnvidia-ml.so.1) rather than linked with cgo: the default build, made
// without a C compiler (CGO_ENABLED=0 works), reports GPUs, and a machine
// without the driver gets no GPUs and a reason instead of a failed start.
//
// It registers Detect as runtime.DetectGPUs's detector when linked;
// runtime/backends links it, so every node binary has it. It calls only
// nvmlInit_v2, nvmlSystemGetDriverVersion, nvmlDeviceGetCount_v2,
// nvmlDeviceGetHandleByIndex_v2, nvmlDeviceGetName, nvmlDeviceGetMemoryInfo,
// nvmlErrorString and nvmlShutdown, present in every driver since R346.
package nvml

import (
	"fmt"
	"sync"

	"github.com/ebitengine/purego"

	"github.com/cocoon-network/cocoon/runtime"
)

// Library is the NVML library's soname, installed with the NVIDIA driver.
const Library = "libnvidia-ml.so.1"

func init() { runtime.SetGPUDetector(Detect) }

// Detect lists the GPUs through Library. With no driver it returns no GPUs
// and a reason starting "no NVIDIA driver". Safe for concurrent use.
func Detect() ([]runtime.GPU, string) { return DetectFrom(Library) }

// nvmlMemory is nvmlMemory_t.
type nvmlMemory struct{ Total, Free, Used uint64 }

const nvmlSuccess = 0

// api holds NVML's functions once bound.
type api struct {
	init          func() int32
	shutdown      func() int32
	errorString   func(int32) string
	driverVersion func(*byte, uint32) int32
	count         func(*uint32) int32
	handle        func(uint32, *uintptr) int32
	name          func(uintptr, *byte, uint32) int32
	memory        func(uintptr, *nvmlMemory) int32
}

// NVML's init is reference counted but not meant to race with itself.
var mu sync.Mutex

// DetectFrom is Detect with the library named (tests pass one that is absent).
func DetectFrom(library string) (gpus []runtime.GPU, why string) {
	mu.Lock()
	defer mu.Unlock()
	h, err := purego.Dlopen(library, purego.RTLD_NOW|purego.RTLD_LOCAL)
	if err != nil {
		return nil, fmt.Sprintf("no NVIDIA driver: %v", err)
	}
	var a api
	if err := bind(h, &a); err != nil {
		return nil, fmt.Sprintf("NVML in %s unusable: %v", library, err)
	}
	if ret := a.init(); ret != nvmlSuccess {
		return nil, "no NVIDIA driver: nvmlInit: " + a.errorString(ret)
	}
	defer a.shutdown()
	driver := "unknown"
	buf := make([]byte, 96)
	if a.driverVersion(&buf[0], uint32(len(buf))) == nvmlSuccess {
		driver = cstr(buf)
	}
	var n uint32
	if ret := a.count(&n); ret != nvmlSuccess {
		return nil, "nvml device count: " + a.errorString(ret)
	}
	if n == 0 {
		return nil, fmt.Sprintf("NVIDIA driver %s loaded, but it reports no GPU", driver)
	}
	for i := range n {
		var dev uintptr
		if a.handle(i, &dev) != nvmlSuccess {
			continue
		}
		g := runtime.GPU{Driver: driver}
		if a.name(dev, &buf[0], uint32(len(buf))) == nvmlSuccess {
			g.Name = cstr(buf)
		}
		var m nvmlMemory
		if a.memory(dev, &m) == nvmlSuccess {
			g.VRAMBytes, g.FreeBytes = m.Total, m.Free
		}
		gpus = append(gpus, g)
	}
	if len(gpus) == 0 {
		return nil, fmt.Sprintf("NVIDIA driver %s reports %d GPUs, none readable", driver, n)
	}
	return gpus, ""
}

// bind looks every function up first: purego.RegisterLibFunc panics on a
// missing symbol, and an old or odd library must give a reason, not a crash.
func bind(h uintptr, a *api) error {
	for _, f := range []struct {
		fn   any
		name string
	}{
		{&a.init, "nvmlInit_v2"}, {&a.shutdown, "nvmlShutdown"}, {&a.errorString, "nvmlErrorString"},
		{&a.driverVersion, "nvmlSystemGetDriverVersion"}, {&a.count, "nvmlDeviceGetCount_v2"},
		{&a.handle, "nvmlDeviceGetHandleByIndex_v2"}, {&a.name, "nvmlDeviceGetName"},
		{&a.memory, "nvmlDeviceGetMemoryInfo"},
	} {
		if _, err := purego.Dlsym(h, f.name); err != nil {
			return fmt.Errorf("no %s: %w", f.name, err)
		}
		purego.RegisterLibFunc(f.fn, h, f.name)
	}
	return nil
}

func cstr(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
