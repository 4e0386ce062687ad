package llamacpp

import (
	"github.com/hybridgroup/yzma/pkg/llama"

	"github.com/cocoon-network/cocoon/runtime"
)

// allLayers stands for "every layer" in n_gpu_layers: llama.cpp offloads
// min(n_gpu_layers, n_layer+1) layers, and a negative value there offloads
// none, so -1 (runtime.gpu_layers' "all") is passed as a count no model reaches.
const allLayers = 9999

// modelParams are llama.cpp's model parameters for gpuLayers (-1: all, 0:
// none). Only a build that registered a GPU device (a CUDA or Vulkan build
// that found one) offloads; otherwise the model runs on the CPU with no
// device named, as SetCPUOnly explains.
func modelParams(gpuLayers int) (llama.ModelParams, int) {
	p := llama.ModelDefaultParams()
	if gpuLayers == 0 || !llama.SupportsGpuOffload() {
		p.SetCPUOnly()
		return p, 0
	}
	if gpuLayers < 0 || gpuLayers > allLayers {
		gpuLayers = allLayers
	}
	p.NGpuLayers = int32(gpuLayers)
	return p, gpuLayers
}

// offloadOf is what llama.cpp logs as "offloaded N/M layers to GPU": M is
// the model's blocks plus its output layer.
func offloadOf(lm llama.Model, requested int) runtime.Offload {
	layers := int(llama.ModelNLayer(lm)) + 1
	return runtime.Offload{Layers: layers, GPULayers: min(max(requested, 0), layers), LibDir: lib.dir}
}

// Offload says where model id runs; the runner fills in the build's kind.
func (b *Backend) Offload(id string) (runtime.Offload, bool) {
	m, ok := b.models[id]
	if !ok {
		return runtime.Offload{}, false
	}
	return m.offload, true
}
