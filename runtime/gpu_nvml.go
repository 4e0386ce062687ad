//go:build nvml && cgo

package runtime

import (
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

func detectGPUs() ([]GPU, string) {
	if ret := nvml.Init(); ret != nvml.SUCCESS {
		if ret == nvml.ERROR_LIBRARY_NOT_FOUND || ret == nvml.ERROR_DRIVER_NOT_LOADED {
			return nil, "no NVIDIA driver: " + nvml.ErrorString(ret)
		}
		return nil, "nvml init: " + nvml.ErrorString(ret)
	}
	defer nvml.Shutdown()
	driver, ret := nvml.SystemGetDriverVersion()
	if ret != nvml.SUCCESS {
		driver = "unknown"
	}
	n, ret := nvml.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, "nvml device count: " + nvml.ErrorString(ret)
	}
	if n == 0 {
		return nil, fmt.Sprintf("NVIDIA driver %s loaded, but it reports no GPU", driver)
	}
	var gpus []GPU
	for i := 0; i < n; i++ {
		dev, ret := nvml.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			continue
		}
		g := GPU{Driver: driver}
		if name, ret := dev.GetName(); ret == nvml.SUCCESS {
			g.Name = name
		}
		if mem, ret := dev.GetMemoryInfo(); ret == nvml.SUCCESS {
			g.VRAMBytes = mem.Total
		}
		gpus = append(gpus, g)
	}
	if len(gpus) == 0 {
		return nil, fmt.Sprintf("NVIDIA driver %s reports %d GPUs, none readable", driver, n)
	}
	return gpus, ""
}
