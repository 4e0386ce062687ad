// Package tee names the trusted execution environments a cocoon worker can run
// in: one Kind, written the same way in the config file, the ads, the
// attestation verdicts, the status page and the API.
//
// It exists so that enclave (which makes and checks the evidence) and market
// (the protocol, whose ads announce the kind) share the type without importing
// each other; node, market/service and the observers import it too. It imports
// only the standard library. Each wire format converts at its own codec:
// market/ad.go to the ad's protobuf enum, enclave/wire.go to the evidence's
// kind byte.
package tee

import "fmt"

// Kind names a TEE: tdx, sev-snp, sim or none. Its text is its name as written
// in configs ("sev-snp"); the zero Kind is no kind at all and is not Valid.
type Kind string

// The kinds. None is a node that runs outside any TEE and says so; Sim is a
// simulated TEE for testnets, which protects nothing.
const (
	TDX    Kind = "tdx"     // Intel TDX
	SEVSNP Kind = "sev-snp" // AMD SEV-SNP
	Sim    Kind = "sim"     // simulated: NOT confidential
	None   Kind = "none"    // no TEE: the worker sees the prompts
)

// Kinds lists every kind, the confidential ones first.
var Kinds = []Kind{TDX, SEVSNP, Sim, None}

// Parse returns the kind named s.
func Parse(s string) (Kind, error) {
	if k := Kind(s); k.Valid() {
		return k, nil
	}
	return "", fmt.Errorf("tee kind %q: want tdx, sev-snp, sim or none", s)
}

// Valid reports whether k is one of the four kinds.
func (k Kind) Valid() bool {
	switch k {
	case TDX, SEVSNP, Sim, None:
		return true
	}
	return false
}

// String returns k's name ("sev-snp").
func (k Kind) String() string { return string(k) }

// Confidential reports whether k is TEE hardware, whose memory the host cannot read.
func (k Kind) Confidential() bool { return k == TDX || k == SEVSNP }

// Tier is the trust tier shown wherever a kind is displayed (logs, status page,
// the X-Cocoon-TEE header). The simulated kind always reads "sim (not confidential)".
func (k Kind) Tier() string {
	switch k {
	case TDX, SEVSNP:
		return string(k) + " (confidential)"
	case Sim, None:
		return string(k) + " (not confidential)"
	}
	return "unknown (not confidential)"
}
