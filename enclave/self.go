package enclave

import (
	"context"
	"crypto/rand"
	"fmt"

	"github.com/cocoon-network/cocoon/enclave/tee"
)

// SelfMeasurement asks a hardware attester for a report and returns the
// measurement it carries, as the ads announce it: the TD's MRTD for TDX, the
// launch MEASUREMENT for SEV-SNP. A worker uses it so that what it advertises is
// what its own hardware reports, not what a config file claims. The report is
// parsed, not verified: it comes from this machine's own kernel.
func SelfMeasurement(ctx context.Context, a Attester) ([]byte, error) {
	var rd [ReportDataSize]byte
	rand.Read(rd[:]) // crypto/rand.Read never fails
	ev, err := a.Attest(ctx, rd)
	if err != nil {
		return nil, fmt.Errorf("read this machine's %s report: %w", a.Kind(), err)
	}
	switch ev.Kind {
	case tee.TDX:
		q, err := parseTDXQuote(ev.Report)
		if err != nil {
			return nil, fmt.Errorf("this machine's tdx quote: %w", err)
		}
		if m := q.GetTdQuoteBody().GetMrTd(); len(m) > 0 {
			return m, nil
		}
		return nil, fmt.Errorf("this machine's tdx quote has no MRTD: %w", ErrMalformed)
	case tee.SEVSNP:
		att, err := parseSNP(ev)
		if err != nil {
			return nil, fmt.Errorf("this machine's snp report: %w", err)
		}
		if m := att.GetReport().GetMeasurement(); len(m) > 0 {
			return m, nil
		}
		return nil, fmt.Errorf("this machine's snp report has no measurement: %w", ErrMalformed)
	}
	return nil, fmt.Errorf("self measurement: %s evidence carries no hardware measurement", ev.Kind)
}
