package enclave

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/enclave/tee"
)

var simPolicy = Policy{AllowSim: true, AllowedKinds: []tee.Kind{tee.Sim}}

func TestSimRoundTrip(t *testing.T) {
	a := NewSimAttester(nil, [MeasurementSize]byte{}, nil)
	var nonce [NonceSize]byte
	nonce[0] = 7
	want := ReportData([]byte("peer-a"), nonce)
	ev, err := a.Attest(context.Background(), want)
	if err != nil {
		t.Fatal(err)
	}
	vd, err := (&Verifier{Policy: simPolicy}).Verify(context.Background(), ev, want)
	if err != nil {
		t.Fatalf("Verify(sim) = %v", err)
	}
	if vd.Tier != "sim (not confidential)" || vd.Kind != tee.Sim {
		t.Errorf("tier = %q kind = %s; want sim (not confidential)", vd.Tier, vd.Kind)
	}
	if !hasStep(vd.NotChecked, "hardware root of trust") {
		t.Errorf("not checked = %q; want hardware root of trust named", vd.NotChecked)
	}
	if vd.EvidenceTime.IsZero() || vd.Measurement != formatMeasurement([][]byte{DefaultSimMeasurement[:]}) {
		t.Errorf("verdict = %+v", vd)
	}
}

func TestSimRefusals(t *testing.T) {
	base := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	_, key, _ := ed25519.GenerateKey(nil)
	a := NewSimAttester(key, [MeasurementSize]byte{}, func() time.Time { return base })
	var nonce [NonceSize]byte
	want := ReportData([]byte("peer-a"), nonce)
	ev, err := a.Attest(context.Background(), want)
	if err != nil {
		t.Fatal(err)
	}
	at := func(d time.Duration) func() time.Time { return func() time.Time { return base.Add(d) } }
	for _, c := range []struct {
		name string
		v    Verifier
		ev   Evidence
		want [ReportDataSize]byte
		err  error
	}{
		{"allow_sim off", Verifier{Now: at(0)}, ev, want, ErrSimNotAllowed},
		{"allow_sim off, sim listed nowhere", Verifier{Policy: Policy{AllowedKinds: []tee.Kind{tee.TDX, tee.None}}, Now: at(0)}, ev, want, ErrSimNotAllowed},
		{"allow_sim on, sim not listed", Verifier{Policy: Policy{AllowSim: true, AllowedKinds: []tee.Kind{tee.TDX}}, Now: at(0)}, ev, want, ErrKindNotAllowed},
		{"allow_sim on, default kinds", Verifier{Policy: Policy{AllowSim: true}, Now: at(0)}, ev, want, ErrKindNotAllowed},
		{"wrong report data", Verifier{Policy: simPolicy, Now: at(0)}, ev, ReportData([]byte("peer-b"), nonce), ErrReportDataMismatch},
		{"too old", Verifier{Policy: simPolicy, Now: at(DefaultMaxEvidenceAge + time.Second)}, ev, want, ErrEvidenceTooOld},
		{"too old for a tight policy", Verifier{Policy: Policy{AllowSim: true, AllowedKinds: []tee.Kind{tee.Sim}, MaxEvidenceAge: time.Second}, Now: at(2 * time.Second)}, ev, want, ErrEvidenceTooOld},
		{"from the future", Verifier{Policy: simPolicy, Now: at(-time.Minute)}, ev, want, ErrEvidenceFromFuture},
		{"measurement not allowed", Verifier{Policy: Policy{AllowSim: true, AllowedKinds: []tee.Kind{tee.Sim}, AllowedMeasurements: map[tee.Kind][]string{tee.Sim: {strings.Repeat("11", MeasurementSize)}}}, Now: at(0)}, ev, want, ErrMeasurementNotAllowed},
		{"truncated", Verifier{Policy: simPolicy, Now: at(0)}, Evidence{Kind: tee.Sim, Report: ev.Report[:SimReportSize-1]}, want, ErrMalformed},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := c.v.Verify(context.Background(), c.ev, c.want); !errors.Is(err, c.err) {
				t.Fatalf("Verify = %v; want %v", err, c.err)
			}
		})
	}
	// Any flipped byte of the report breaks its signature.
	v := &Verifier{Policy: simPolicy, Now: at(0)}
	for off := range SimReportSize {
		bad := Evidence{Kind: tee.Sim, Report: slices.Clone(ev.Report)}
		bad.Report[off] ^= 0x04
		_, err := v.Verify(context.Background(), bad, want)
		if !errors.Is(err, ErrSignature) && !(off == 0 && errors.Is(err, ErrMalformed)) {
			t.Fatalf("Verify(sim report with byte %d flipped) = %v; want ErrSignature", off, err)
		}
	}
	if _, err := v.Verify(context.Background(), ev, want); err != nil {
		t.Fatalf("Verify(untouched) = %v", err)
	}
}

func TestNoneKind(t *testing.T) {
	ev, _ := NoneAttester{}.Attest(context.Background(), [ReportDataSize]byte{})
	if _, err := (&Verifier{}).Verify(context.Background(), ev, [ReportDataSize]byte{}); !errors.Is(err, ErrKindNotAllowed) {
		t.Fatalf("Verify(none, default policy) = %v; want ErrKindNotAllowed", err)
	}
	vd, err := (&Verifier{Policy: Policy{AllowedKinds: []tee.Kind{tee.None}}}).Verify(context.Background(), ev, [ReportDataSize]byte{})
	if err != nil || vd.Tier != "none (not confidential)" {
		t.Fatalf("Verify(none, allowed) = %+v, %v", vd, err)
	}
}

func TestReportData(t *testing.T) {
	var n1, n2 [NonceSize]byte
	n2[31] = 1
	a, b := ReportData([]byte("peer"), n1), ReportData([]byte("peer"), n2)
	if a == b || a == ReportData([]byte("peeR"), n1) {
		t.Fatal("report data does not depend on nonce and peer")
	}
	// Golden, computed independently (Python hashlib):
	// SHA-512("cocoon-attest-v1" ‖ "peer" ‖ 32 zero bytes).
	const golden = "89dc82ba679a9bf7539f3eca89ac86ecf59d7b1e6f874933dd0b8addc54773b2eb15288ad02b288d50783fcef63569ba71c9cc52d0fe82b2d7d62f603354fefa"
	if got := hex.EncodeToString(a[:]); got != golden {
		t.Fatalf("ReportData(peer, zero nonce) = %s; want %s", got, golden)
	}
}
