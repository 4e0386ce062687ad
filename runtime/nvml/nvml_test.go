package nvml_test

import (
	"strings"
	"testing"

	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/nvml"
)

func TestNoDriverNoGPUsWithReason(t *testing.T) {
	gpus, why := nvml.DetectFrom("libnvidia-ml-absent.so.1")
	if len(gpus) != 0 || !strings.HasPrefix(why, "no NVIDIA driver") {
		t.Fatalf("DetectFrom(absent) = %v, %q; want no GPUs and a reason starting %q", gpus, why, "no NVIDIA driver")
	}
}

// Linking the package makes runtime.DetectGPUs use NVML; on this machine
// (a driver or none) it answers GPUs or a reason, never both, never neither.
func TestLinkedDetector(t *testing.T) {
	gpus, why := runtime.DetectGPUs()
	if (len(gpus) == 0) == (why == "") {
		t.Fatalf("DetectGPUs() = %v, %q; want GPUs or a reason", gpus, why)
	}
	if strings.Contains(why, "no GPU detector") {
		t.Fatalf("DetectGPUs() = %q: the nvml detector is not registered", why)
	}
	for _, g := range gpus {
		if g.Name == "" || g.VRAMBytes == 0 {
			t.Errorf("incomplete GPU %+v", g)
		}
	}
	t.Logf("GPUs %+v, reason %q", gpus, why)
}
