package enclave

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/faketsm"

	"github.com/cocoon-network/cocoon/enclave/tee"
)

// fakeTSM is go-configfs-tsm's fake configfs backend (faketsm, report subsystem v7)
// with its provider and outblob hooks pointed at a TEE: the library's own fake keeps
// the configfs mechanics (entries, generations, inblob checks); only what the
// hardware would return is substituted.
func fakeTSM(t *testing.T, provider string, outblob func(inblob []byte) []byte, auxblob []byte) (configfsi.Client, *[][]byte) {
	t.Helper()
	sub := faketsm.ReportV7(0)
	stock := sub.ReadAttr
	var inblobs [][]byte
	sub.ReadAttr = func(e *faketsm.ReportEntry, attr string) ([]byte, error) {
		switch attr {
		case "provider":
			if provider == "" {
				return stock(e, attr)
			}
			return []byte(provider + "\n"), nil
		case "outblob":
			in := e.InAttrs["inblob"].Value
			inblobs = append(inblobs, bytes.Clone(in))
			if outblob == nil {
				return stock(e, attr)
			}
			return outblob(in), nil
		case "auxblob":
			return auxblob, nil
		}
		return stock(e, attr)
	}
	return &faketsm.Client{Subsystems: map[string]configfsi.Client{"report": sub}}, &inblobs
}

func TestTSMStockFakeBackend(t *testing.T) {
	// The unmodified fake reports provider "fake", which is no TEE we know.
	client := &faketsm.Client{Subsystems: map[string]configfsi.Client{"report": faketsm.ReportV7(0)}}
	if _, err := NewTSMAttester(client); err == nil || !strings.Contains(err.Error(), `"fake"`) {
		t.Fatalf("NewTSMAttester(stock fake) = %v; want unknown provider \"fake\"", err)
	}
	// With the provider named tdx_guest, the stock outblob renders the inblob it got:
	// the report data crossed configfs intact.
	client2, inblobs := fakeTSM(t, "tdx_guest", nil, nil)
	a, err := NewTSMAttester(client2)
	if err != nil {
		t.Fatal(err)
	}
	rd := ReportData([]byte("peer"), NewNonce())
	ev, err := a.Attest(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	if want := "privlevel: 0\ninblob: " + hex.EncodeToString(rd[:]); string(ev.Report) != want || ev.Kind != tee.TDX {
		t.Fatalf("evidence = %s %q; want tdx %q", ev.Kind, ev.Report, want)
	}
	if len(*inblobs) != 1 || !bytes.Equal((*inblobs)[0], rd[:]) {
		t.Fatalf("inblobs = %x; want one, %x", *inblobs, rd)
	}
	// The verifier refuses such a non-quote as malformed, never accepts it.
	if _, err := (&Verifier{}).Verify(context.Background(), ev, rd); !errors.Is(err, ErrMalformed) {
		t.Fatalf("Verify(fake outblob) = %v; want ErrMalformed", err)
	}
}

func TestTSMAttesterTDXGenuineQuote(t *testing.T) {
	quote := genuineTDX(t).Report
	client, inblobs := fakeTSM(t, "tdx_guest", func([]byte) []byte { return quote }, nil)
	a, err := NewTSMAttester(client)
	if err != nil || a.Kind() != tee.TDX {
		t.Fatalf("NewTSMAttester = %v, %v", a, err)
	}
	rd := ReportData([]byte("peer"), NewNonce())
	ev, err := a.Attest(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal((*inblobs)[0], rd[:]) {
		t.Fatalf("inblob = %x; want %x", (*inblobs)[0], rd)
	}
	// The quote's chain verifies, but a recorded quote cannot carry our report data.
	vd, err := (&Verifier{}).Verify(context.Background(), ev, rd)
	if !errors.Is(err, ErrReportDataMismatch) || !hasStep(vd.Checked, tdxChainStep) {
		t.Fatalf("Verify(recorded quote via configfs) = %v (checked %q); want chain ok, ErrReportDataMismatch", err, vd.Checked)
	}
	// Against the quote's own report data the evidence from configfs verifies.
	if _, err := (&Verifier{}).Verify(context.Background(), ev, mustHex64(t, genuineTDXReportData)); err != nil {
		t.Fatalf("Verify(quote from configfs, its own report data) = %v", err)
	}
}

func TestTSMAttesterSNPAuxblob(t *testing.T) {
	g := genuineSNP(t)
	client, _ := fakeTSM(t, "sev_guest", func([]byte) []byte { return g.Report }, g.Aux)
	a, err := NewTSMAttester(client)
	if err != nil || a.Kind() != tee.SEVSNP {
		t.Fatalf("NewTSMAttester = %v, %v", a, err)
	}
	ev, err := a.Attest(context.Background(), genuineSNPReportData())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ev.Aux, g.Aux) {
		t.Fatal("auxblob (certificate table) not carried into the evidence")
	}
	if _, err := (&Verifier{Policy: Policy{AllowDebug: true}}).Verify(context.Background(), ev, genuineSNPReportData()); err != nil {
		t.Fatalf("Verify(SNP report via configfs) = %v", err)
	}
}

func TestTSMAbsent(t *testing.T) {
	// This machine has no /sys/kernel/config/tsm (see FACTS.md); where it does, the
	// probe must find a known provider instead.
	a, err := NewTSMAttester(nil)
	if err != nil && !errors.Is(err, ErrNoTSM) && !strings.Contains(err.Error(), "provider") {
		t.Fatalf("NewTSMAttester(nil) = %v; want ErrNoTSM or a provider error", err)
	}
	if err == nil && !a.Kind().Confidential() {
		t.Fatalf("NewTSMAttester(nil) kind %s", a.Kind())
	}
}

// TestSelfMeasurement: a worker reads its own measurement from the report its
// configfs hands out (here the genuine samples behind the fake backend), equal
// to what a verifier of the same evidence reports; garbage is refused.
func TestSelfMeasurement(t *testing.T) {
	ctx := context.Background()
	tdx, snp := genuineTDX(t), genuineSNP(t)
	for _, tc := range []struct {
		provider string
		ev       Evidence
		rd       [ReportDataSize]byte
		policy   Policy
	}{
		{"tdx_guest", tdx, mustHex64(t, genuineTDXReportData), Policy{}},
		{"sev_guest", snp, genuineSNPReportData(), Policy{AllowDebug: true}},
	} {
		client, _ := fakeTSM(t, tc.provider, func([]byte) []byte { return tc.ev.Report }, tc.ev.Aux)
		a, err := NewTSMAttester(client)
		if err != nil {
			t.Fatal(err)
		}
		m, err := SelfMeasurement(ctx, a)
		if err != nil {
			t.Fatalf("%s: %v", tc.provider, err)
		}
		vd, err := (&Verifier{Policy: tc.policy}).Verify(ctx, tc.ev, tc.rd)
		if err != nil {
			t.Fatal(err)
		}
		first, _, _ := strings.Cut(vd.Measurement, ":")
		if hex.EncodeToString(m) != first || len(m) != 48 {
			t.Errorf("%s: self measurement %x; the verifier reports %s", tc.provider, m, vd.Measurement)
		}
	}
	client, _ := fakeTSM(t, "tdx_guest", func([]byte) []byte { return []byte("not a quote") }, nil)
	a, err := NewTSMAttester(client)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := SelfMeasurement(ctx, a); !errors.Is(err, ErrMalformed) {
		t.Fatalf("SelfMeasurement(garbage) = %v; want ErrMalformed", err)
	}
}
