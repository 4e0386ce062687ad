package enclave

import (
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"
)

// MeasurementSize is the size of a TDX MRTD/RTMR, an SNP MEASUREMENT and a sim measurement.
const MeasurementSize = 48

// DefaultMaxEvidenceAge bounds the age of evidence that carries a signed time when
// the policy leaves MaxEvidenceAge zero.
const DefaultMaxEvidenceAge = 5 * time.Minute

// maxFutureSkew is how far ahead of the verifier's clock a signed evidence time may be.
const maxFutureSkew = 30 * time.Second

// Policy says which evidence a verifier accepts. It is the node config's
// [enclave.policy] section:
//
//	[enclave.policy]
//	allowed_kinds = ["tdx", "sev-snp"]
//	allow_sim = false
//	max_evidence_age = "5m"
//	[enclave.policy.allowed_measurements]
//	tdx = ["<mrtd hex>", "<mrtd>:<rtmr0>:<rtmr1>:<rtmr2>:<rtmr3>"]
//	"sev-snp" = ["<measurement hex>"]
//
// The zero value accepts tdx and sev-snp evidence with any measurement and refuses
// sim and none. Validate before use.
type Policy struct {
	// AllowedKinds lists the hardware kinds accepted ("tdx", "sev-snp") and "none" for
	// peers outside any TEE. Empty means tdx and sev-snp. "sim" is governed by AllowSim
	// alone and may be listed only when AllowSim is on.
	AllowedKinds []Kind `toml:"allowed_kinds"`
	// AllowedMeasurements maps a kind to its allow-list of hex measurements. A kind
	// without an entry accepts any measurement (the verdict says so in NotChecked).
	// A TDX entry is the MRTD alone, or MRTD:RTMR0:RTMR1:RTMR2:RTMR3.
	AllowedMeasurements map[Kind][]string `toml:"allowed_measurements"`
	// AllowSim accepts simulated evidence ("sim (not confidential)"): on in testnets,
	// off elsewhere.
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
		if k == KindSim && !p.AllowSim {
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
		if k == KindNone {
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

// allows reports whether the policy accepts evidence of kind k at all.
func (p Policy) allows(k Kind) error {
	if k == KindSim {
		if !p.AllowSim {
			return ErrSimNotAllowed
		}
		return nil
	}
	kinds := p.AllowedKinds
	if len(kinds) == 0 {
		kinds = []Kind{KindTDX, KindSNP}
	}
	if !slices.Contains(kinds, k) {
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
func (p Policy) checkMeasurement(k Kind, parts [][]byte) (pinned bool, err error) {
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
func parseMeasurement(k Kind, s string) ([][]byte, error) {
	fields := strings.Split(strings.TrimSpace(s), ":")
	switch {
	case k == KindTDX && len(fields) != 1 && len(fields) != 5:
		return nil, fmt.Errorf("tdx measurement %q: want MRTD or MRTD:RTMR0:RTMR1:RTMR2:RTMR3", s)
	case k != KindTDX && len(fields) != 1:
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
