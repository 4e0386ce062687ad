package tee

import (
	"testing"
)

func TestParseAndNames(t *testing.T) {
	for _, tc := range []struct {
		name         string
		kind         Kind
		confidential bool
		tier         string
	}{
		{"tdx", TDX, true, "tdx (confidential)"},
		{"sev-snp", SEVSNP, true, "sev-snp (confidential)"},
		{"sim", Sim, false, "sim (not confidential)"},
		{"none", None, false, "none (not confidential)"},
	} {
		k, err := Parse(tc.name)
		if err != nil || k != tc.kind {
			t.Errorf("Parse(%q) = %q, %v; want %q", tc.name, k, err, tc.kind)
		}
		if k.String() != tc.name || k.Confidential() != tc.confidential || k.Tier() != tc.tier {
			t.Errorf("%q: String %q, Confidential %v, Tier %q; want %q, %v, %q", tc.name, k.String(), k.Confidential(), k.Tier(), tc.name, tc.confidential, tc.tier)
		}
	}
	for _, s := range []string{"", "sgx", "TDX", "sev_snp", "snp"} {
		if k, err := Parse(s); err == nil {
			t.Errorf("Parse(%q) = %q; want an error", s, k)
		}
	}
	var zero Kind
	if zero.Valid() || zero.Confidential() || zero.Tier() != "unknown (not confidential)" {
		t.Errorf("the zero Kind: Valid %v, Confidential %v, Tier %q", zero.Valid(), zero.Confidential(), zero.Tier())
	}
	if len(Kinds) != 4 {
		t.Errorf("Kinds = %v; want the four kinds", Kinds)
	}
	for _, k := range Kinds {
		if !k.Valid() {
			t.Errorf("Kinds holds %q, which is not Valid", k)
		}
	}
}
