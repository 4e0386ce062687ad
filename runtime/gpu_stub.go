//go:build !nvml || !cgo

package runtime

func detectGPUs() ([]GPU, string) {
	return nil, "built without NVML (build tag nvml, needs cgo)"
}
