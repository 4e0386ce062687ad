package enclave

import (
	"context"
	"errors"
)

// NVIDIA GPU confidential computing (Hopper/Blackwell "CC mode") is the place where
// the model's weights and activations live, so a full verdict will need the GPU's
// evidence too: an SPDM attestation report signed by the GPU's device key, its
// certificate chain to NVIDIA's root, and the driver/VBIOS measurements checked
// against NVIDIA's reference manifests (RIM), all bound to the same report data as
// the CPU evidence. It is not implemented yet: the only Go package served to this
// project (github.com/confidentsecurity/go-nvtrust) verifies remotely through
// NVIDIA's service, and no offline Go verifier exists. The types below mark where it
// goes; every function returns ErrGPUNotSupported.

// ErrGPUNotSupported is returned by every GPU evidence function.
var ErrGPUNotSupported = errors.New("enclave: NVIDIA GPU confidential-computing evidence is not supported yet")

// GPUEvidence will carry one GPU's attestation report and certificate chain.
type GPUEvidence struct {
	Report    []byte // SPDM GET_MEASUREMENTS response signed by the GPU's attestation key
	CertChain []byte // device certificate chain up to NVIDIA's root
}

// CollectGPUEvidence will gather evidence from the local GPUs for reportData.
// Not supported yet: it returns ErrGPUNotSupported.
func CollectGPUEvidence(ctx context.Context, reportData [ReportDataSize]byte) ([]GPUEvidence, error) {
	return nil, ErrGPUNotSupported
}

// VerifyGPUEvidence will check GPU evidence against reportData and a policy.
// Not supported yet: it returns ErrGPUNotSupported.
func (v *Verifier) VerifyGPUEvidence(ctx context.Context, ev []GPUEvidence, reportData [ReportDataSize]byte) (Verdict, error) {
	return Verdict{}, ErrGPUNotSupported
}
