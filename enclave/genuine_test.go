package enclave

import (
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	sabi "github.com/google/go-sev-guest/abi"
	"github.com/google/uuid"

	"github.com/cocoon-network/cocoon/enclave/tee"
)

// The genuine evidence shipped in testdata (see testdata/README.md).

// tdxSampleTime is a time at which the sample TDX collateral is within its validity
// window (the time go-tdx-guest's own tests use).
var tdxSampleTime = time.Date(2023, time.July, 1, 1, 0, 0, 0, time.UTC)

// Genuine values read from the evidence with the libraries' parsers.
const (
	genuineTDXMRTD  = "6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f22fc00b8dcd404bc10d5e119d7215cbb"
	genuineTDXRTMRs = "2927da70461cd63266f43230cc1849c03ef25ebe490062a801d8fcc80af42976823adf08f833c1e50b51779c6593f32a" +
		":2c700b8ba9b85783f8be9fb9443647bdc0bb3c50747f06297cc6538c25a5f589c4b56d035c59107c6bc5800db2cacb61" +
		":8652f0caaba7e215ea442dc36a4499d8fec3362f3a0b2ca151cbe4b3e6466fe59c7368b3c2287fc7c3bf5c924eb4424e" +
		":000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
	genuineTDXReportData  = "6c62dec1b8191749a31dab490be532a35944dea47caef1f980863993d9899545eb7406a38d1eed313b987a467dacead6f0c87a6d766c66f6f29f8acb281f1113"
	genuineSNPMeasurement = "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01"
	// The KDS URL of the sample report's VCEK (from go-sev-guest's verify tests).
	genuineSNPVCEKURL = "https://kdsintf.amd.com/vcek/v1/Milan/3ac3fe21e13fb0990eb28a802e3fb6a29483a6b0753590c951bdd3b8e53786184ca39e359669a2b76a1936776b564ea464cdce40c05f63c9b610c5068b006b5d?blSPL=2&teeSPL=0&snpSPL=5&ucodeSPL=68"
)

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatalf("read testdata: %v", err)
	}
	return b
}

func genuineTDX(t testing.TB) Evidence {
	return Evidence{Kind: tee.TDX, Report: readTestdata(t, "tdx_prod_quote_SPR_E4.dat")}
}

// genuineSNP is the sample report with its VCEK in the certificate table, as the
// configfs-tsm auxblob delivers it on a host that provisions certificates.
func genuineSNP(t testing.TB) Evidence {
	table := sabi.CertTable{Entries: []sabi.CertTableEntry{
		{GUID: uuid.MustParse(sabi.VcekGUID), RawCert: readTestdata(t, "vcek.testcer")},
	}}
	return Evidence{Kind: tee.SEVSNP, Report: readTestdata(t, "attestation.bin"), Aux: table.Marshal()}
}

func genuineSNPReportData() (rd [ReportDataSize]byte) {
	copy(rd[:], []byte{1, 2, 3, 4, 5})
	return rd
}

func mustHex64(t testing.TB, s string) (out [ReportDataSize]byte) {
	t.Helper()
	parts, err := hex.DecodeString(s)
	if err != nil || len(parts) != ReportDataSize {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	copy(out[:], parts)
	return out
}

// sampleTDXCollateral is a cache holding go-tdx-guest's sample Intel PCS responses
// under the URLs the library asks for.
func sampleTDXCollateral(t testing.TB) *CollateralCache {
	c := NewCollateralCache(nil)
	chain := func(name string) []string {
		// Stored URL-encoded, exactly as the response header carries it.
		s := string(readTestdata(t, name))
		if _, err := url.QueryUnescape(s); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return []string{s}
	}
	c.Put("https://api.trustedservices.intel.com/tdx/certification/v4/tcb?fmspc=50806f000000",
		map[string][]string{"Tcb-Info-Issuer-Chain": chain("tcbinfo_issuer_chain.txt")}, readTestdata(t, "sample_tcbInfo_response"))
	c.Put("https://api.trustedservices.intel.com/tdx/certification/v4/qe/identity",
		map[string][]string{"Sgx-Enclave-Identity-Issuer-Chain": chain("qeidentity_issuer_chain.txt")}, readTestdata(t, "sample_qeIdentity_response"))
	c.Put("https://api.trustedservices.intel.com/sgx/certification/v4/pckcrl?ca=platform&encoding=der",
		map[string][]string{"Sgx-Pck-Crl-Issuer-Chain": chain("pckcrl_issuer_chain.txt")}, readTestdata(t, "pckcrl"))
	c.Put("https://certificates.trustedservices.intel.com/IntelSGXRootCA.der", nil, readTestdata(t, "rootcrl.der"))
	return c
}
