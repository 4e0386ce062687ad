// Package enclave produces and verifies remote-attestation evidence (Intel TDX,
// AMD SEV-SNP, and a simulated kind for testnets) bound to a libp2p peer identity.
//
// It imports only the standard library and the attestation libraries; market mounts
// its protocol on libp2p streams, node builds the attester and the policy.
package enclave
