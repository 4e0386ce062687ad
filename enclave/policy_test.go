package enclave

import (
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
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
		p.AllowedMeasurements[KindSNP][0] != genuineSNPMeasurement || p.AllowedMeasurements[KindTDX][0] != genuineTDXMRTD {
		t.Fatalf("decoded policy = %+v", p)
	}
}

func TestPolicyValidateNamesField(t *testing.T) {
	m48 := strings.Repeat("ab", MeasurementSize)
	for _, c := range []struct {
		p     Policy
		field string
	}{
		{Policy{AllowedKinds: []Kind{"sgx"}}, "allowed_kinds[0]"},
		{Policy{AllowedKinds: []Kind{KindTDX, KindSim}}, "allowed_kinds[1]"},
		{Policy{MaxEvidenceAge: -time.Second}, "max_evidence_age"},
		{Policy{AllowedMeasurements: map[Kind][]string{"sgx": {m48}}}, "allowed_measurements"},
		{Policy{AllowedMeasurements: map[Kind][]string{KindNone: {m48}}}, `allowed_measurements["none"]`},
		{Policy{AllowedMeasurements: map[Kind][]string{KindSNP: {m48, "zz"}}}, `allowed_measurements["sev-snp"][1]`},
		{Policy{AllowedMeasurements: map[Kind][]string{KindSNP: {m48 + ":" + m48}}}, `allowed_measurements["sev-snp"][0]`},
		{Policy{AllowedMeasurements: map[Kind][]string{KindTDX: {m48 + ":" + m48}}}, `allowed_measurements["tdx"][0]`},
		{Policy{AllowedMeasurements: map[Kind][]string{KindSim: {"abcd"}}}, `allowed_measurements["sim"][0]`},
	} {
		err := c.p.Validate()
		if err == nil || !strings.Contains(err.Error(), c.field) {
			t.Errorf("Validate(%+v) = %v; want an error naming %s", c.p, err, c.field)
		}
	}
	good := Policy{AllowSim: true, AllowedKinds: []Kind{KindSim, KindNone}, AllowedMeasurements: map[Kind][]string{KindTDX: {m48 + ":" + m48 + ":" + m48 + ":" + m48 + ":" + m48}}}
	if err := good.Validate(); err != nil {
		t.Errorf("Validate(%+v) = %v; want nil", good, err)
	}
	if _, err := NewVerifier(Policy{AllowedKinds: []Kind{"x"}}, nil); err == nil {
		t.Error("NewVerifier accepted an invalid policy")
	}
}
