package enclave

import (
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cocoon-network/cocoon/enclave/tee"
)

// MeasurementSize is the size of a TDX MRTD/RTMR, an SNP MEASUREMENT and a sim measurement.
const MeasurementSize = 48

// DefaultMaxEvidenceAge bounds the age of evidence that carries a signed time when
// the policy leaves MaxEvidenceAge zero.
const DefaultMaxEvidenceAge = 5 * time.Minute

// maxFutureSkew is how far ahead of the verifier's clock a signed evidence time may be.
const maxFutureSkew = 30 * time.Second

// Policy says which workers a node accepts: the kinds its client selects from
// the ads, and the evidence its verifier accepts of them. It is the node
// config's [enclave.policy] section, the one place a node says what it buys from:
//
//	[enclave.policy]
//	allowed_kinds = ["tdx", "sev-snp"]   # add "none" for workers outside any TEE
//	allow_sim = false                    # the guard: "sim" may be listed only when on
//	allow_debug = false
//	max_evidence_age = "5m0s"
//	[enclave.policy.allowed_measurements]
//	tdx = ["<mrtd hex>", "<mrtd>:<rtmr0>:<rtmr1>:<rtmr2>:<rtmr3>"]
//	"sev-snp" = ["<measurement hex>"]
//
// The zero value accepts tdx and sev-snp with any measurement and refuses sim
// and none. Validate before use.
type Policy struct {
	// AllowedKinds lists the kinds accepted: "tdx", "sev-snp", "none" (peers
	// outside any TEE, which attest nothing) and "sim" (simulated, not
	// confidential; only with AllowSim). Empty means tdx and sev-snp.
	AllowedKinds []tee.Kind `toml:"allowed_kinds"`
	// AllowedMeasurements maps a kind to its allow-list of hex measurements. A kind
	// without an entry accepts any measurement (the verdict says so in NotChecked).
	// A TDX entry is the MRTD alone, or MRTD:RTMR0:RTMR1:RTMR2:RTMR3.
	AllowedMeasurements map[tee.Kind][]string `toml:"allowed_measurements"`
	// AllowSim is the guard on simulated TEEs ("sim (not confidential)"): sim
	// may be listed in AllowedKinds (or be the node's own attester) only when it
	// is on; on in testnets, off elsewhere.
	AllowSim bool `toml:"allow_sim"`
	// AllowDebug accepts hardware evidence from debuggable guests (SNP policy DEBUG,
	// TDX TD_ATTRIBUTES.DEBUG), whose memory the host can read. Off by default.
	AllowDebug bool `toml:"allow_debug"`
	// MaxEvidenceAge bounds the age of evidence that carries a signed time (sim).
	// Zero means DefaultMaxEvidenceAge. Hardware quotes carry no time: their freshness
	// is the verifier's nonce, bound through the report data.
	MaxEvidenceAge time.Duration `toml:"max_evidence_age"`
}

// Validate checks the policy and returns an error naming the offending field.
func (p Policy) Validate() error {
	for i, k := range p.AllowedKinds {
		if !k.Valid() {
			return fmt.Errorf("enclave policy: allowed_kinds[%d]: unknown kind %q (want one of tdx, sev-snp, sim, none)", i, k)
		}
		if k == tee.Sim && !p.AllowSim {
			return fmt.Errorf("enclave policy: allowed_kinds[%d]: %q is listed but allow_sim is false", i, k)
		}
	}
	if p.MaxEvidenceAge < 0 {
		return fmt.Errorf("enclave policy: max_evidence_age: %v is negative", p.MaxEvidenceAge)
	}
	for k, list := range p.AllowedMeasurements {
		if !k.Valid() {
			return fmt.Errorf("enclave policy: allowed_measurements: unknown kind %q", k)
		}
		if k == tee.None {
			return fmt.Errorf("enclave policy: allowed_measurements[%q]: kind none has no measurement", k)
		}
		for i, m := range list {
			if _, err := parseMeasurement(k, m); err != nil {
				return fmt.Errorf("enclave policy: allowed_measurements[%q][%d]: %w", k, i, err)
			}
		}
	}
	return nil
}

// defaultKinds is what an empty AllowedKinds accepts: TEE hardware only.
var defaultKinds = []tee.Kind{tee.TDX, tee.SEVSNP}

// Kinds returns the kinds the policy accepts, the default applied: the TEE
// filter of a node's client, so that it selects the workers whose evidence
// its verifier accepts. The caller owns the slice.
func (p Policy) Kinds() []tee.Kind { return slices.Clone(p.kinds()) }

func (p Policy) kinds() []tee.Kind {
	if len(p.AllowedKinds) == 0 {
		return defaultKinds
	}
	return p.AllowedKinds
}

// Accepts reports whether the policy accepts workers of kind k at all: what a
// client selects from the ads, before any evidence is seen.
func (p Policy) Accepts(k tee.Kind) bool { return p.allows(k) == nil }

// allows is Accepts with the reason for a refusal.
func (p Policy) allows(k tee.Kind) error {
	if k == tee.Sim && !p.AllowSim {
		return ErrSimNotAllowed
	}
	if kinds := p.kinds(); !slices.Contains(kinds, k) {
		return fmt.Errorf("kind %q not in allowed_kinds %v: %w", k, kinds, ErrKindNotAllowed)
	}
	return nil
}

func (p Policy) maxAge() time.Duration {
	if p.MaxEvidenceAge == 0 {
		return DefaultMaxEvidenceAge
	}
	return p.MaxEvidenceAge
}

// checkMeasurement matches parts (one 48-byte value; five for TDX) against the
// allow-list of kind k. It reports pinned=false when the kind has no allow-list.
func (p Policy) checkMeasurement(k tee.Kind, parts [][]byte) (pinned bool, err error) {
	list, ok := p.AllowedMeasurements[k]
	if !ok {
		return false, nil
	}
	for _, entry := range list {
		want, err := parseMeasurement(k, entry)
		if err != nil {
			return true, err // Validate catches this; never accept on a bad entry
		}
		if len(want) > len(parts) {
			continue
		}
		match := true
		for i := range want {
			if string(want[i]) != string(parts[i]) {
				match = false
				break
			}
		}
		if match {
			return true, nil
		}
	}
	return true, fmt.Errorf("%s measurement %s: %w", k, formatMeasurement(parts), ErrMeasurementNotAllowed)
}

// parseMeasurement decodes one allow-list entry: colon-separated hex values of
// MeasurementSize bytes, one for sev-snp and sim, one (MRTD) or five
// (MRTD and RTMR0..3) for tdx.
func parseMeasurement(k tee.Kind, s string) ([][]byte, error) {
	fields := strings.Split(strings.TrimSpace(s), ":")
	switch {
	case k == tee.TDX && len(fields) != 1 && len(fields) != 5:
		return nil, fmt.Errorf("tdx measurement %q: want MRTD or MRTD:RTMR0:RTMR1:RTMR2:RTMR3", s)
	case k != tee.TDX && len(fields) != 1:
		return nil, fmt.Errorf("%s measurement %q: want one hex value", k, s)
	}
	out := make([][]byte, len(fields))
	for i, f := range fields {
		b, err := hex.DecodeString(f)
		if err != nil {
			return nil, fmt.Errorf("measurement %q: not hex: %w", s, err)
		}
		if len(b) != MeasurementSize {
			return nil, fmt.Errorf("measurement %q: part %d is %d bytes, want %d", s, i, len(b), MeasurementSize)
		}
		out[i] = b
	}
	return out, nil
}

func formatMeasurement(parts [][]byte) string {
	s := make([]string, len(parts))
	for i, p := range parts {
		s[i] = hex.EncodeToString(p)
	}
	return strings.Join(s, ":")
}
