package enclave

import (
	"context"
	"crypto/x509"
	_ "embed"
	"fmt"

	tabi "github.com/google/go-tdx-guest/abi"
	tpb "github.com/google/go-tdx-guest/proto/tdx"
	tverify "github.com/google/go-tdx-guest/verify"

	"github.com/cocoon-network/cocoon/enclave/tee"
)

// intelRootPEM is Intel's SGX Root CA, the root of every TDX PCK chain (copied from
// go-tdx-guest v0.3.1 verify/trusted_root.pem). Passing it explicitly keeps the
// library from warning on stdout that it falls back to its embedded copy.
//
//go:embed intel_sgx_root_ca.pem
var intelRootPEM []byte

var intelRoots = func() *x509.CertPool {
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(intelRootPEM) {
		panic("enclave: embedded Intel SGX root CA does not parse")
	}
	return p
}()

// tdAttributesDebug is TD_ATTRIBUTES.TUD.DEBUG (bit 0): the host can read the TD.
const tdAttributesDebug = 0x01

// parseTDXQuote decodes a raw TDX quote (v4) without verifying it.
func parseTDXQuote(raw []byte) (q4 *tpb.QuoteV4, err error) {
	if len(raw) > MaxEvidenceSize {
		return nil, fmt.Errorf("tdx quote of %d bytes: %w", len(raw), ErrTooLarge)
	}
	// go-tdx-guest v0.3.1's parser trusts inner length fields (the QE auth data size)
	// and panics on a hostile quote; FuzzParseTDXQuote found it. Contain it here.
	defer recoverMalformed("parse tdx quote", &err)
	q, err := tabi.QuoteToProto(raw)
	if err != nil {
		return nil, fmt.Errorf("parse tdx quote: %v: %w", err, ErrMalformed)
	}
	v4, ok := q.(*tpb.QuoteV4)
	if !ok {
		return nil, fmt.Errorf("parse tdx quote: unsupported type %T: %w", q, ErrMalformed)
	}
	if err := tabi.CheckQuoteV4(v4); err != nil {
		return nil, fmt.Errorf("parse tdx quote: %v: %w", err, ErrMalformed)
	}
	return v4, nil
}

// verifyTDX checks a TDX quote: PCK chain to Intel's root and quote signature, TCB
// info and QE identity when collateral is available (with CRLs when those are too),
// debug attribute, MRTD/RTMR allow-list and report data.
func (v *Verifier) verifyTDX(ctx context.Context, ev Evidence, want [ReportDataSize]byte, vd *Verdict) error {
	if len(ev.Aux) != 0 {
		return fmt.Errorf("tdx evidence carries %d aux bytes: %w", len(ev.Aux), ErrMalformed)
	}
	quote, err := parseTDXQuote(ev.Report)
	if err != nil {
		return err
	}
	// Collateral first, with revocation lists; on a cache miss (offline) retry with
	// less and name what was skipped. Fetching happens before any signature check, so
	// a retry costs little.
	collateral, revocations := v.Collateral != nil, v.Collateral != nil
	for {
		g := tdxGetter{&libGetter{ctx: ctx, cache: v.Collateral}}
		opts := &tverify.Options{
			GetCollateral:    collateral,
			CheckRevocations: collateral && revocations,
			Getter:           g,
			Now:              vd.Time,
			TrustedRoots:     intelRoots,
		}
		err = tverify.TdxQuote(quote, opts)
		if err != nil && g.didMiss() {
			if revocations {
				revocations = false
				continue
			}
			if collateral {
				collateral = false
				continue
			}
		}
		break
	}
	if err != nil && collateral {
		// Tell a bad quote from failed collateral: does the bare chain verify?
		if bare := tverify.TdxQuote(quote, &tverify.Options{Now: vd.Time, TrustedRoots: intelRoots}); bare != nil {
			return fmt.Errorf("tdx quote signature chain: %v: %w", bare, ErrSignature)
		}
		vd.checked("quote signature, QE report and PCK chain to Intel SGX Root CA")
		return fmt.Errorf("tdx collateral: %v: %w", err, ErrCollateral)
	}
	if err != nil {
		return fmt.Errorf("tdx quote signature chain: %v: %w", err, ErrSignature)
	}
	vd.checked("quote signature, QE report and PCK chain to Intel SGX Root CA")
	if collateral {
		vd.TCBStatus = "UpToDate"
		vd.checked("TDX TCB info and QE identity (Intel PCS collateral): TCB UpToDate")
		if revocations {
			vd.checked("PCK and root CA revocation lists")
		} else {
			vd.notChecked("PCK and root CA revocation: CRLs unavailable (offline, not cached)")
		}
	} else {
		vd.notChecked("TCB status and QE identity: Intel PCS collateral unavailable (offline, not cached)")
		vd.notChecked("PCK and root CA revocation: CRLs unavailable (offline, not cached)")
	}

	body := quote.GetTdQuoteBody()
	if attrs := body.GetTdAttributes(); len(attrs) > 0 && attrs[0]&tdAttributesDebug != 0 {
		if !v.Policy.AllowDebug {
			return fmt.Errorf("tdx TD_ATTRIBUTES %x has DEBUG: %w", attrs, ErrDebug)
		}
		vd.notChecked("confidentiality: TD is debuggable (allow_debug is on)")
	} else {
		vd.checked("TD is not debuggable")
	}
	parts := append([][]byte{body.GetMrTd()}, body.GetRtmrs()...)
	if err := v.measurement(tee.TDX, parts, vd); err != nil {
		return err
	}
	if err := CheckReportData(body.GetReportData(), want); err != nil {
		return err
	}
	vd.checked("report data binds peer ID and nonce")
	vd.notChecked("evidence age: a quote carries no time; freshness is the nonce in the report data")
	return nil
}
