package enclave

import (
	"bytes"
	"context"
	"errors"
	sabi "github.com/google/go-sev-guest/abi"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/verify/trust"
	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/enclave/tee"
)

func hasStep(list []string, prefix string) bool {
	return slices.ContainsFunc(list, func(s string) bool { return strings.HasPrefix(s, prefix) })
}

const tdxChainStep = "quote signature, QE report and PCK chain to Intel SGX Root CA"

func TestTDXGenuineQuoteVerifiesOffline(t *testing.T) {
	v := &Verifier{}
	vd, err := v.Verify(context.Background(), genuineTDX(t), mustHex64(t, genuineTDXReportData))
	if err != nil {
		t.Fatalf("Verify(genuine TDX quote) = %v; want nil", err)
	}
	if vd.Kind != tee.TDX || vd.Tier != "tdx (confidential)" {
		t.Errorf("verdict kind/tier = %s/%q", vd.Kind, vd.Tier)
	}
	if want := genuineTDXMRTD + ":" + genuineTDXRTMRs; vd.Measurement != want {
		t.Errorf("measurement = %s; want %s", vd.Measurement, want)
	}
	if !hasStep(vd.Checked, tdxChainStep) || !hasStep(vd.Checked, "report data binds") {
		t.Errorf("checked = %q; want chain and report data", vd.Checked)
	}
	// Offline with nothing cached: the verdict must say what it could not check.
	if !hasStep(vd.NotChecked, "TCB status") || !hasStep(vd.NotChecked, "PCK and root CA revocation") {
		t.Errorf("not checked = %q; want TCB status and revocation named", vd.NotChecked)
	}
}

func TestTDXGenuineChainButWrongReportData(t *testing.T) {
	v := &Verifier{}
	var nonce [NonceSize]byte
	want := ReportData([]byte("some peer"), nonce)
	vd, err := v.Verify(context.Background(), genuineTDX(t), want)
	if !errors.Is(err, ErrReportDataMismatch) {
		t.Fatalf("Verify(genuine quote, our report data) = %v; want ErrReportDataMismatch", err)
	}
	// The chain step ran and passed before the binding step refused.
	if !hasStep(vd.Checked, tdxChainStep) {
		t.Errorf("checked = %q; want the chain step passed", vd.Checked)
	}
}

func TestTDXFlippedByteRefused(t *testing.T) {
	ev := genuineTDX(t)
	want := mustHex64(t, genuineTDXReportData)
	v := &Verifier{}
	// Signed fields: in the TD quote body (header is 48 bytes; body: MRTD at 48+136,
	// report data at 48+520) and the ECDSA signature right after the 584-byte body.
	for _, c := range []struct {
		name string
		off  int
	}{
		{"header qe vendor id", 12},
		{"mrtd", 48 + 136 + 5},
		{"rtmr1", 48 + 376 + 7},
		{"report data", 48 + 520 + 3},
		{"quote signature", 48 + 584 + 4 + 10},
		{"attestation key", 48 + 584 + 4 + 64 + 10},
		{"qe report", 48 + 584 + 4 + 128 + 6 + 60},
	} {
		t.Run(c.name, func(t *testing.T) {
			bad := Evidence{Kind: tee.TDX, Report: slices.Clone(ev.Report)}
			bad.Report[c.off] ^= 0x01
			if _, err := v.Verify(context.Background(), bad, want); !errors.Is(err, ErrSignature) {
				t.Fatalf("Verify(quote with byte %d flipped) = %v; want ErrSignature", c.off, err)
			}
		})
	}
	// Every 37th byte of the quote up to the end of its PCK chain: always refused,
	// whatever the reason. The sample quote carries 38 bytes after the PEM chain
	// ("extra bytes(only for testing purpose)") inside its certification data; the
	// library ignores bytes after the chain, and so they are outside this sweep.
	end := bytes.LastIndex(ev.Report, []byte("-----END CERTIFICATE-----")) + len("-----END CERTIFICATE-----")
	for off := 0; off < end; off += 37 {
		bad := Evidence{Kind: tee.TDX, Report: slices.Clone(ev.Report)}
		bad.Report[off] ^= 0x80
		if _, err := v.Verify(context.Background(), bad, want); err == nil {
			t.Fatalf("Verify(quote with byte %d flipped) = nil; want refusal", off)
		}
	}
}

func TestTDXMeasurementAllowList(t *testing.T) {
	other := strings.Repeat("ab", MeasurementSize)
	rtmrs := strings.Split(genuineTDXRTMRs, ":")
	for _, c := range []struct {
		name  string
		allow []string
		ok    bool
	}{
		{"mrtd listed", []string{other, genuineTDXMRTD}, true},
		{"mrtd and rtmrs listed", []string{genuineTDXMRTD + ":" + genuineTDXRTMRs}, true},
		{"other mrtd only", []string{other}, false},
		{"rtmr2 differs", []string{genuineTDXMRTD + ":" + rtmrs[0] + ":" + rtmrs[1] + ":" + other + ":" + rtmrs[3]}, false},
		{"empty list", []string{}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := Policy{AllowedMeasurements: map[tee.Kind][]string{tee.TDX: c.allow}}
			if err := p.Validate(); err != nil {
				t.Fatal(err)
			}
			v := &Verifier{Policy: p}
			vd, err := v.Verify(context.Background(), genuineTDX(t), mustHex64(t, genuineTDXReportData))
			if c.ok && err != nil {
				t.Fatalf("Verify = %v; want accepted", err)
			}
			if !c.ok {
				if !errors.Is(err, ErrMeasurementNotAllowed) {
					t.Fatalf("Verify = %v; want ErrMeasurementNotAllowed", err)
				}
				if !hasStep(vd.Checked, tdxChainStep) {
					t.Errorf("checked = %q; want the chain step passed first", vd.Checked)
				}
			}
		})
	}
}

func TestTDXCachedCollateral(t *testing.T) {
	cache := sampleTDXCollateral(t)
	// At a time inside the sample collateral's validity, the full TCB check runs and
	// ends in the library's own negative case: the sample TCB info has no level
	// matching this quote.
	v := &Verifier{Collateral: cache, Now: func() time.Time { return tdxSampleTime }}
	vd, err := v.Verify(context.Background(), genuineTDX(t), mustHex64(t, genuineTDXReportData))
	if !errors.Is(err, ErrCollateral) || !strings.Contains(err.Error(), "no matching TCB level") {
		t.Fatalf("Verify with sample collateral = %v; want ErrCollateral with no matching TCB level", err)
	}
	if !hasStep(vd.Checked, tdxChainStep) {
		t.Errorf("checked = %q; want chain passed before the TCB refusal", vd.Checked)
	}
	// Today the sample TCB info has expired: refused, never silently skipped.
	v.Now = nil
	if _, err := v.Verify(context.Background(), genuineTDX(t), mustHex64(t, genuineTDXReportData)); !errors.Is(err, ErrCollateral) {
		t.Fatalf("Verify with expired collateral = %v; want ErrCollateral", err)
	}
}

func TestTDXPartialCollateralNamesWhatIsMissing(t *testing.T) {
	// Only the CRLs missing: collateral is checked without revocation, and the verdict
	// says so. The sample collateral still refuses the TCB, so use the error path's
	// verdict: the retry without CRLs reached the TCB check.
	full := sampleTDXCollateral(t)
	cache := NewCollateralCache(nil)
	for _, u := range []string{
		"https://api.trustedservices.intel.com/tdx/certification/v4/tcb?fmspc=50806f000000",
		"https://api.trustedservices.intel.com/tdx/certification/v4/qe/identity",
	} {
		h, b, err := full.Get(context.Background(), u)
		if err != nil {
			t.Fatal(err)
		}
		cache.Put(u, h, b)
	}
	v := &Verifier{Collateral: cache, Now: func() time.Time { return tdxSampleTime }}
	_, err := v.Verify(context.Background(), genuineTDX(t), mustHex64(t, genuineTDXReportData))
	if !errors.Is(err, ErrCollateral) || !strings.Contains(err.Error(), "no matching TCB level") {
		t.Fatalf("Verify without CRLs = %v; want the TCB check reached (no matching TCB level)", err)
	}
}

func TestSNPGenuineReport(t *testing.T) {
	ev := genuineSNP(t)
	want := genuineSNPReportData()

	// The sample guest's policy allows DEBUG: a default policy refuses it, after the
	// signature chain has passed.
	vd, err := (&Verifier{}).Verify(context.Background(), ev, want)
	if !errors.Is(err, ErrDebug) {
		t.Fatalf("Verify(debug guest, default policy) = %v; want ErrDebug", err)
	}
	if !hasStep(vd.Checked, "report signature by VCEK/VLEK") {
		t.Errorf("checked = %q; want signature chain passed", vd.Checked)
	}

	v := &Verifier{Policy: Policy{AllowDebug: true}}
	vd, err = v.Verify(context.Background(), ev, want)
	if err != nil {
		t.Fatalf("Verify(genuine SNP report, allow_debug) = %v; want nil", err)
	}
	if vd.Measurement != genuineSNPMeasurement || vd.Tier != "sev-snp (confidential)" || vd.TCBStatus == "" {
		t.Errorf("verdict = %+v", vd)
	}
	if !hasStep(vd.NotChecked, "ASK/VCEK revocation") || !hasStep(vd.NotChecked, "confidentiality: guest policy allows DEBUG") {
		t.Errorf("not checked = %q; want revocation and debug named", vd.NotChecked)
	}
}

func TestSNPRefusals(t *testing.T) {
	ev := genuineSNP(t)
	want := genuineSNPReportData()
	v := &Verifier{Policy: Policy{AllowDebug: true}}

	t.Run("flipped byte", func(t *testing.T) {
		// Signed part of the report is bytes 0..0x2A0; the signature follows.
		for _, off := range []int{0x50 + 3 /* report data */, 0x90 + 7 /* measurement */, 0x1A0 + 1 /* chip id */, 0x2A0 + 5 /* signature r */} {
			bad := Evidence{Kind: tee.SEVSNP, Report: slices.Clone(ev.Report), Aux: ev.Aux}
			bad.Report[off] ^= 0x01
			if _, err := v.Verify(context.Background(), bad, want); err == nil {
				t.Errorf("Verify(report with byte %#x flipped) = nil; want refusal", off)
			} else if !errors.Is(err, ErrSignature) {
				t.Errorf("Verify(report with byte %#x flipped) = %v; want ErrSignature", off, err)
			}
		}
	})
	t.Run("flipped vcek byte", func(t *testing.T) {
		bad := Evidence{Kind: tee.SEVSNP, Report: ev.Report, Aux: slices.Clone(ev.Aux)}
		bad.Aux[len(bad.Aux)-20] ^= 0x01 // inside the VCEK's signature
		if _, err := v.Verify(context.Background(), bad, want); !errors.Is(err, ErrSignature) {
			t.Errorf("Verify(VCEK with a flipped byte) = %v; want ErrSignature", err)
		}
	})
	t.Run("measurement not allowed", func(t *testing.T) {
		p := Policy{AllowDebug: true, AllowedMeasurements: map[tee.Kind][]string{tee.SEVSNP: {strings.Repeat("00", MeasurementSize)}}}
		if _, err := (&Verifier{Policy: p}).Verify(context.Background(), ev, want); !errors.Is(err, ErrMeasurementNotAllowed) {
			t.Errorf("Verify = %v; want ErrMeasurementNotAllowed", err)
		}
		p.AllowedMeasurements[tee.SEVSNP] = append(p.AllowedMeasurements[tee.SEVSNP], genuineSNPMeasurement)
		if _, err := (&Verifier{Policy: p}).Verify(context.Background(), ev, want); err != nil {
			t.Errorf("Verify with the measurement listed = %v; want nil", err)
		}
	})
	t.Run("wrong report data", func(t *testing.T) {
		var nonce [NonceSize]byte
		vd, err := v.Verify(context.Background(), ev, ReportData([]byte("peer"), nonce))
		if !errors.Is(err, ErrReportDataMismatch) {
			t.Fatalf("Verify = %v; want ErrReportDataMismatch", err)
		}
		if !hasStep(vd.Checked, "report signature by VCEK/VLEK") {
			t.Errorf("checked = %q; want signature chain passed", vd.Checked)
		}
	})
	t.Run("kind not allowed", func(t *testing.T) {
		p := Policy{AllowDebug: true, AllowedKinds: []tee.Kind{tee.TDX}}
		if _, err := (&Verifier{Policy: p}).Verify(context.Background(), ev, want); !errors.Is(err, ErrKindNotAllowed) {
			t.Errorf("Verify = %v; want ErrKindNotAllowed", err)
		}
	})
}

func milanCertChain(t testing.TB) []byte { return trust.AskArkMilanVcekBytes }

func TestSNPVCEKFromCollateralCache(t *testing.T) {
	ev := snpWithoutCerts(t)
	want := genuineSNPReportData()
	p := Policy{AllowDebug: true}

	// Offline, not cached: cannot verify at all.
	if _, err := (&Verifier{Policy: p}).Verify(context.Background(), ev, want); !errors.Is(err, ErrCollateralUnavailable) {
		t.Fatalf("Verify without VCEK, offline = %v; want ErrCollateralUnavailable", err)
	}
	// With the VCEK cached under its KDS URL (and the ASK/ARK chain, which the library
	// asks for when it must fetch), it verifies.
	vd, err := (&Verifier{Policy: p, Collateral: snpKDSCache(t)}).Verify(context.Background(), ev, want)
	if err != nil {
		t.Fatalf("Verify with cached VCEK = %v; want nil", err)
	}
	if !hasStep(vd.Checked, "report signature by VCEK from AMD KDS collateral") {
		t.Errorf("checked = %q", vd.Checked)
	}
}

// snpWithoutCerts is the sample report from a host that provisions no certificates:
// the table carries only the platform info entry (CPUID of the Milan B0 chip) that
// go-sev-guest's configfs provider adds for v2 reports, which lack the product.
func snpWithoutCerts(t testing.TB) Evidence {
	ev := genuineSNP(t)
	info, err := (&sabi.ExtraPlatformInfo{
		Size:      sabi.ExtraPlatformInfoV0Size,
		Cpuid1Eax: sabi.MaskedCpuid1EaxFromSevProduct(&spb.SevProduct{Name: spb.SevProduct_SEV_PRODUCT_MILAN, MachineStepping: wrapperspb.UInt32(0)}),
	}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	ev.Aux = (&sabi.CertTable{Entries: []sabi.CertTableEntry{{GUID: uuid.MustParse(sabi.ExtraPlatformInfoGUID), RawCert: info}}}).Marshal()
	return ev
}

// snpKDSCache holds the sample VCEK and the Milan ASK/ARK chain under their AMD KDS
// URLs, as a cache filled earlier (or shipped) would.
func snpKDSCache(t testing.TB) *CollateralCache {
	cache := NewCollateralCache(nil)
	cache.Put(genuineSNPVCEKURL, nil, readTestdata(t, "vcek.testcer"))
	cache.Put("https://kdsintf.amd.com/vcek/v1/Milan/cert_chain", nil, milanCertChain(t))
	return cache
}
