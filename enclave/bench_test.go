package enclave

import (
	"context"
	"errors"
	"testing"
	"time"
)

// Verification time per kind. Hardware kinds verify real vendor evidence (the
// genuine samples in testdata); their report data is their own.

func BenchmarkVerifyTDXOffline(b *testing.B) {
	ev, want := genuineTDX(b), mustHex64(b, genuineTDXReportData)
	v := &Verifier{}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(context.Background(), ev, want); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyTDXCachedCollateral runs the full check with cached Intel PCS
// collateral (TCB info, QE identity, both CRLs), at a time inside the sample
// collateral's validity. It ends in the library's own negative case ("no matching
// TCB level") after all signatures are checked; the refusal path then re-checks the
// bare chain to classify the error, so this is an upper bound of the accept path.
func BenchmarkVerifyTDXCachedCollateral(b *testing.B) {
	ev, want := genuineTDX(b), mustHex64(b, genuineTDXReportData)
	v := &Verifier{Collateral: sampleTDXCollateral(b), Now: func() time.Time { return tdxSampleTime }}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(context.Background(), ev, want); !errors.Is(err, ErrCollateral) {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifySNP verifies the genuine Milan report with its VCEK carried in the
// evidence (ASK/ARK are the library's embedded roots); the AMD CRL is not cached,
// so revocation is skipped and named in the verdict.
func BenchmarkVerifySNP(b *testing.B) {
	ev, want := genuineSNP(b), genuineSNPReportData()
	v := &Verifier{Policy: Policy{AllowDebug: true}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(context.Background(), ev, want); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifySNPCachedVCEK verifies the genuine report whose evidence carries no
// certificates: the VCEK and the ASK/ARK chain come from the collateral cache.
func BenchmarkVerifySNPCachedVCEK(b *testing.B) {
	ev, want := snpWithoutCerts(b), genuineSNPReportData()
	v := &Verifier{Policy: Policy{AllowDebug: true}, Collateral: snpKDSCache(b)}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(context.Background(), ev, want); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifySim(b *testing.B) {
	a := NewSimAttester(nil, [MeasurementSize]byte{}, nil)
	want := ReportData([]byte("peer"), NewNonce())
	ev, _ := a.Attest(context.Background(), want)
	v := &Verifier{Policy: simPolicy}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(context.Background(), ev, want); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSimAttest(b *testing.B) {
	a := NewSimAttester(nil, [MeasurementSize]byte{}, nil)
	want := ReportData([]byte("peer"), NewNonce())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Attest(context.Background(), want); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeEvidenceTDX(b *testing.B) {
	wire, _ := genuineTDX(b).MarshalBinary()
	b.SetBytes(int64(len(wire)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeEvidence(wire); err != nil {
			b.Fatal(err)
		}
	}
}
