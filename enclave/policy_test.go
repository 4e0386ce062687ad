package enclave

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/cocoon-network/cocoon/enclave/tee"
)

func TestPolicyFromTOML(t *testing.T) {
	const conf = `
[enclave]
allowed_kinds = ["tdx", "sev-snp", "sim"]
allow_sim = true
max_evidence_age = "90s"
[enclave.allowed_measurements]
tdx = ["` + genuineTDXMRTD + `"]
"sev-snp" = ["` + genuineSNPMeasurement + `"]
`
	var cfg struct {
		Enclave Policy `toml:"enclave"`
	}
	if _, err := toml.Decode(conf, &cfg); err != nil {
		t.Fatal(err)
	}
	p := cfg.Enclave
	if err := p.Validate(); err != nil {
		t.Fatalf("Validate = %v", err)
	}
	if !p.AllowSim || p.MaxEvidenceAge != 90*time.Second || len(p.AllowedKinds) != 3 ||
		p.AllowedMeasurements[tee.SEVSNP][0] != genuineSNPMeasurement || p.AllowedMeasurements[tee.TDX][0] != genuineTDXMRTD {
		t.Fatalf("decoded policy = %+v", p)
	}
}

func TestPolicyValidateNamesField(t *testing.T) {
	m48 := strings.Repeat("ab", MeasurementSize)
	for _, c := range []struct {
		p     Policy
		field string
	}{
		{Policy{AllowedKinds: []tee.Kind{"sgx"}}, "allowed_kinds[0]"},
		{Policy{AllowedKinds: []tee.Kind{tee.TDX, tee.Sim}}, "allowed_kinds[1]"},
		{Policy{MaxEvidenceAge: -time.Second}, "max_evidence_age"},
		{Policy{AllowedMeasurements: map[tee.Kind][]string{"sgx": {m48}}}, "allowed_measurements"},
		{Policy{AllowedMeasurements: map[tee.Kind][]string{tee.None: {m48}}}, `allowed_measurements["none"]`},
		{Policy{AllowedMeasurements: map[tee.Kind][]string{tee.SEVSNP: {m48, "zz"}}}, `allowed_measurements["sev-snp"][1]`},
		{Policy{AllowedMeasurements: map[tee.Kind][]string{tee.SEVSNP: {m48 + ":" + m48}}}, `allowed_measurements["sev-snp"][0]`},
		{Policy{AllowedMeasurements: map[tee.Kind][]string{tee.TDX: {m48 + ":" + m48}}}, `allowed_measurements["tdx"][0]`},
		{Policy{AllowedMeasurements: map[tee.Kind][]string{tee.Sim: {"abcd"}}}, `allowed_measurements["sim"][0]`},
	} {
		err := c.p.Validate()
		if err == nil || !strings.Contains(err.Error(), c.field) {
			t.Errorf("Validate(%+v) = %v; want an error naming %s", c.p, err, c.field)
		}
	}
	good := Policy{AllowSim: true, AllowedKinds: []tee.Kind{tee.Sim, tee.None}, AllowedMeasurements: map[tee.Kind][]string{tee.TDX: {m48 + ":" + m48 + ":" + m48 + ":" + m48 + ":" + m48}}}
	if err := good.Validate(); err != nil {
		t.Errorf("Validate(%+v) = %v; want nil", good, err)
	}
	if _, err := NewVerifier(Policy{AllowedKinds: []tee.Kind{"x"}}, nil); err == nil {
		t.Error("NewVerifier accepted an invalid policy")
	}
}

// Accepts is what a client selects workers by, and Verify what it checks their
// evidence against: one list decides both, allow_sim only guards it.
func TestPolicyAccepts(t *testing.T) {
	for _, c := range []struct {
		name string
		p    Policy
		want []tee.Kind
	}{
		{"zero value", Policy{}, []tee.Kind{tee.TDX, tee.SEVSNP}},
		{"allow_sim alone", Policy{AllowSim: true}, []tee.Kind{tee.TDX, tee.SEVSNP}},
		{"sim listed", Policy{AllowSim: true, AllowedKinds: []tee.Kind{tee.Sim}}, []tee.Kind{tee.Sim}},
		{"none listed", Policy{AllowedKinds: []tee.Kind{tee.TDX, tee.None}}, []tee.Kind{tee.TDX, tee.None}},
	} {
		for _, k := range tee.Kinds {
			want := false
			for _, w := range c.want {
				want = want || w == k
			}
			if got := c.p.Accepts(k); got != want {
				t.Errorf("%s: Accepts(%s) = %v; want %v", c.name, k, got, want)
			}
			_, err := (&Verifier{Policy: c.p}).Verify(context.Background(), Evidence{Kind: k}, [ReportDataSize]byte{})
			if refusedByKind := errors.Is(err, ErrKindNotAllowed) || errors.Is(err, ErrSimNotAllowed); refusedByKind == want {
				t.Errorf("%s: Verify(%s evidence) = %v; the kind check disagrees with Accepts = %v", c.name, k, err, want)
			}
		}
		if got := c.p.Kinds(); !slices.Equal(got, c.want) {
			t.Errorf("%s: Kinds() = %v; want %v", c.name, got, c.want)
		}
	}
}
