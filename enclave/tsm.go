package enclave

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/linuxtsm"
	"github.com/google/go-configfs-tsm/report"

	"github.com/cocoon-network/cocoon/enclave/tee"
)

// TSM providers as the Linux configfs-tsm report interface names them.
const (
	tsmProviderTDX = "tdx_guest"
	tsmProviderSNP = "sev_guest"
)

// ErrNoTSM means the Linux configfs-tsm report interface (/sys/kernel/config/tsm/report)
// is absent: the node does not run in a TDX or SEV-SNP guest with a recent kernel.
var ErrNoTSM = errors.New("enclave: configfs-tsm report interface not available")

// TSMAttester produces TDX quotes and SEV-SNP reports through the Linux configfs-tsm
// report interface (github.com/google/go-configfs-tsm), which the kernel provides in
// both kinds of guest. Safe for concurrent use; requests are serialised because the
// hardware makes one quote at a time.
type TSMAttester struct {
	client configfsi.Client
	kind   tee.Kind
	mu     sync.Mutex
}

// NewTSMAttester probes client (nil: the kernel's /sys/kernel/config/tsm) for its
// provider and returns an attester of the matching kind. It fails with ErrNoTSM when
// the interface is absent, and on a provider it does not know.
func NewTSMAttester(client configfsi.Client) (*TSMAttester, error) {
	if client == nil {
		c, err := linuxtsm.MakeClient()
		if err != nil {
			return nil, fmt.Errorf("open configfs-tsm: %v: %w", err, ErrNoTSM)
		}
		client = c
	}
	r, err := report.Create(client, &report.Request{})
	if err != nil {
		return nil, fmt.Errorf("probe configfs-tsm provider: %w", err)
	}
	// Writing the inblob first makes the provider readable on every backend (the
	// fake one serves attributes only after a write); reading the provider does not
	// make a quote.
	var provider []byte
	if err = r.WriteOption("inblob", make([]byte, ReportDataSize)); err == nil {
		provider, err = r.ReadOption("provider")
	}
	_ = r.Destroy()
	if err != nil {
		return nil, fmt.Errorf("probe configfs-tsm provider: %w", err)
	}
	kind, err := tsmKind(string(provider))
	if err != nil {
		return nil, err
	}
	return &TSMAttester{client: client, kind: kind}, nil
}

func tsmKind(provider string) (tee.Kind, error) {
	switch p := strings.TrimSpace(provider); p {
	case tsmProviderTDX:
		return tee.TDX, nil
	case tsmProviderSNP:
		return tee.SEVSNP, nil
	default:
		return "", fmt.Errorf("configfs-tsm provider %q is neither %s nor %s", p, tsmProviderTDX, tsmProviderSNP)
	}
}

// Kind returns the kind found by NewTSMAttester.
func (a *TSMAttester) Kind() tee.Kind { return a.kind }

// Attest writes reportData as the report's inblob and reads back the quote (outblob)
// and, for SEV-SNP, the certificate table (auxblob).
func (a *TSMAttester) Attest(ctx context.Context, reportData [ReportDataSize]byte) (Evidence, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return Evidence{}, err
	}
	resp, err := report.Get(a.client, &report.Request{
		InBlob:     reportData[:],
		GetAuxBlob: a.kind == tee.SEVSNP,
	})
	if err != nil {
		return Evidence{}, fmt.Errorf("configfs-tsm %s report: %w", a.kind, err)
	}
	kind, err := tsmKind(resp.Provider)
	if err != nil {
		return Evidence{}, err
	}
	if kind != a.kind {
		return Evidence{}, fmt.Errorf("configfs-tsm provider changed from %s to %s", a.kind, kind)
	}
	ev := Evidence{Kind: kind, Report: resp.OutBlob}
	if kind == tee.SEVSNP {
		ev.Aux = resp.AuxBlob
	}
	if n := len(ev.Report) + len(ev.Aux); n > MaxEvidenceSize-32 {
		return Evidence{}, fmt.Errorf("configfs-tsm %s report of %d bytes: %w", kind, n, ErrTooLarge)
	}
	return ev, nil
}
