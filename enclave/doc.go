// Package enclave produces and verifies remote-attestation evidence (Intel TDX,
// AMD SEV-SNP, and a simulated kind for testnets) bound to a libp2p peer identity.
//
// It imports only the standard library, the attestation libraries and enclave/tee
// (the TEE kind, shared with market's ads); market/service mounts its protocol on
// libp2p streams, node builds the attester and the policy. The policy is also
// what a node's client selects workers by (Policy.Kinds), so that the workers it
// buys from and the evidence it accepts are one setting.
//
// # Binding
//
// Evidence carries report data = SHA-512("cocoon-attest-v1" ‖ peer ID ‖ nonce): the
// prover's own peer ID bytes and the verifier's fresh 32-byte nonce (ReportData). The
// verifier recomputes it from the connection's authenticated remote peer ID, so
// evidence replayed by another peer, or for an older nonce, is refused. Since the
// Noise/TLS channel is keyed by the same peer ID, the whole connection is bound to
// the attested enclave.
//
// # Kinds
//
//	tdx      TDX quote v4 via configfs-tsm (TSMAttester); verified with go-tdx-guest
//	sev-snp  SNP report + certificate table via configfs-tsm; verified with go-sev-guest
//	sim      Ed25519-signed sim report (SimAttester): "sim (not confidential)",
//	         accepted only when allowed_kinds lists "sim", which needs allow_sim
//	none     no TEE (NoneAttester): accepted only when allowed_kinds lists "none"
//
// NVIDIA GPU evidence has a reserved place (GPUEvidence) and is not supported yet.
//
// # Wire
//
// One exchange per stream (see protocol.go); frames are uvarint length ‖ payload,
// with caps refused before allocation:
//
//	Request  version=1 ‖ nonce[32]
//	Response version=1 ‖ status ‖ Evidence (status 0 only)
//	Evidence version=1 ‖ kind ‖ uvarint len ‖ report ‖ uvarint len ‖ aux
package enclave
