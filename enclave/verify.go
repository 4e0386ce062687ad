package enclave

import (
	"context"
	"fmt"
	"time"

	"github.com/cocoon-network/cocoon/enclave/tee"
)

// Verifier checks evidence against a Policy. The zero value (with a valid Policy)
// verifies offline: hardware signature chains against the embedded vendor roots,
// with no TCB collateral, and says so in each Verdict's NotChecked.
// A Verifier is safe for concurrent use once its fields are set.
type Verifier struct {
	Policy Policy
	// Collateral supplies vendor collateral (Intel PCS TCB info, QE identity and CRLs;
	// AMD KDS certificates and CRLs). Nil: offline, nothing cached.
	Collateral *CollateralCache
	// Now is the verifier's clock, used for certificate and collateral validity and
	// evidence age (nil: time.Now).
	Now func() time.Time
}

// NewVerifier validates p and returns a verifier for it with the given collateral
// cache (nil: offline).
func NewVerifier(p Policy, c *CollateralCache) (*Verifier, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &Verifier{Policy: p, Collateral: c}, nil
}

// Verify checks ev against the policy and the expected report data want (from
// ReportData(prover peer ID, nonce)). The steps run in order: kind allowed, signature
// chain (and vendor collateral where available), debug, measurement allow-list, report
// data, evidence age. On refusal it returns the verdict so far (whose Checked lists
// the steps that passed) and an error wrapping one of the Err values.
func (v *Verifier) Verify(ctx context.Context, ev Evidence, want [ReportDataSize]byte) (Verdict, error) {
	now := time.Now
	if v.Now != nil {
		now = v.Now
	}
	vd := Verdict{Kind: ev.Kind, Tier: ev.Kind.Tier(), Time: now()}
	if err := v.Policy.allows(ev.Kind); err != nil {
		return vd, fmt.Errorf("verify %s evidence: %w", ev.Kind, err)
	}
	vd.checked(fmt.Sprintf("kind %s allowed by policy", ev.Kind))
	if err := v.verifyKind(ctx, ev, want, &vd); err != nil {
		return vd, fmt.Errorf("verify %s evidence: %w", ev.Kind, err)
	}
	return vd, nil
}

func (v *Verifier) verifyKind(ctx context.Context, ev Evidence, want [ReportDataSize]byte, vd *Verdict) (err error) {
	defer recoverMalformed("decode", &err)
	switch ev.Kind {
	case tee.TDX:
		return v.verifyTDX(ctx, ev, want, vd)
	case tee.SEVSNP:
		return v.verifySNP(ctx, ev, want, vd)
	case tee.Sim:
		return v.verifySim(ev, want, vd)
	case tee.None:
		vd.notChecked("everything: kind none attests nothing")
		if len(ev.Report) != 0 || len(ev.Aux) != 0 {
			return fmt.Errorf("kind none carries data: %w", ErrMalformed)
		}
		return nil
	}
	return fmt.Errorf("unknown kind %q: %w", ev.Kind, ErrMalformed)
}

// recoverMalformed turns a panic in a vendor library's decoder into ErrMalformed.
// Deferred around every call that parses peer-supplied bytes with those libraries.
func recoverMalformed(what string, err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("%s: decoder panic: %v: %w", what, r, ErrMalformed)
	}
}

// measurement checks parts against the allow-list and records the result.
func (v *Verifier) measurement(k tee.Kind, parts [][]byte, vd *Verdict) error {
	vd.Measurement = formatMeasurement(parts)
	pinned, err := v.Policy.checkMeasurement(k, parts)
	if err != nil {
		return err
	}
	if pinned {
		vd.checked("measurement in allowed_measurements")
	} else {
		vd.notChecked(fmt.Sprintf("measurement: no allowed_measurements for %s, any accepted", k))
	}
	return nil
}
