package enclave

import (
	"context"
	"errors"
	"testing"
)

func TestGPUEvidenceNotSupportedYet(t *testing.T) {
	if _, err := CollectGPUEvidence(context.Background(), [ReportDataSize]byte{}); !errors.Is(err, ErrGPUNotSupported) {
		t.Errorf("CollectGPUEvidence = %v; want ErrGPUNotSupported", err)
	}
	if _, err := (&Verifier{}).VerifyGPUEvidence(context.Background(), []GPUEvidence{{Report: []byte{1}}}, [ReportDataSize]byte{}); !errors.Is(err, ErrGPUNotSupported) {
		t.Errorf("VerifyGPUEvidence = %v; want ErrGPUNotSupported", err)
	}
}
