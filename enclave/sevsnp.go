package enclave

import (
	"context"
	"encoding/binary"
	"fmt"

	sabi "github.com/google/go-sev-guest/abi"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/validate"
	sverify "github.com/google/go-sev-guest/verify"
	"github.com/google/uuid"

	"github.com/cocoon-network/cocoon/enclave/tee"
)

// snpReportSize is the size of an SEV-SNP ATTESTATION_REPORT.
const snpReportSize = sabi.ReportSize

// snpCertEntrySize is the size of one GUID table entry: GUID, offset:u32, length:u32.
const snpCertEntrySize = 24

var (
	snpVCEKGUID = uuid.MustParse(sabi.VcekGUID)
	snpVLEKGUID = uuid.MustParse(sabi.VlekGUID)
	snpASKGUID  = uuid.MustParse(sabi.AskGUID)
	snpARKGUID  = uuid.MustParse(sabi.ArkGUID)
)

// parseSNPCertTable decodes the GHCB certificate table (the configfs-tsm auxblob),
// checking every entry's range itself: the library's decoder can overflow on
// hostile offsets.
func parseSNPCertTable(b []byte) (*spb.CertificateChain, error) {
	if len(b) == 0 {
		return &spb.CertificateChain{Extras: map[string][]byte{}}, nil
	}
	type entry struct {
		guid   uuid.UUID
		off, n uint64
	}
	var (
		entries []entry
		header  int
	)
	for {
		if len(b)-header < snpCertEntrySize {
			return nil, fmt.Errorf("snp certificate table: no terminating entry: %w", ErrMalformed)
		}
		h := b[header : header+snpCertEntrySize]
		header += snpCertEntrySize
		var e entry
		copy(e.guid[:], h[:16])
		e.off = uint64(binary.LittleEndian.Uint32(h[16:]))
		e.n = uint64(binary.LittleEndian.Uint32(h[20:]))
		if e.guid == (uuid.UUID{}) && e.off == 0 && e.n == 0 {
			break
		}
		entries = append(entries, e)
	}
	// Built here rather than with CertTable.Proto, which warns on stdout when the
	// endorsement key is absent (a normal case: the cache supplies it).
	chain := &spb.CertificateChain{Extras: map[string][]byte{}}
	for i, e := range entries {
		if e.off < uint64(header) || e.off+e.n > uint64(len(b)) {
			return nil, fmt.Errorf("snp certificate table entry %d: range %d+%d outside %d..%d: %w", i, e.off, e.n, header, len(b), ErrMalformed)
		}
		cert := b[e.off : e.off+e.n : e.off+e.n]
		switch e.guid {
		case snpVCEKGUID:
			chain.VcekCert = cert
		case snpVLEKGUID:
			chain.VlekCert = cert
		case snpASKGUID:
			chain.AskCert = cert
		case snpARKGUID:
			chain.ArkCert = cert
		default:
			chain.Extras[e.guid.String()] = cert
		}
	}
	return chain, nil
}

// parseSNP decodes an SNP report and its certificate table without verifying them.
func parseSNP(ev Evidence) (_ *spb.Attestation, err error) {
	defer recoverMalformed("parse snp report", &err)
	if len(ev.Report) != snpReportSize {
		return nil, fmt.Errorf("snp report of %d bytes, want %d: %w", len(ev.Report), snpReportSize, ErrMalformed)
	}
	report, err := sabi.ReportToProto(ev.Report)
	if err != nil {
		return nil, fmt.Errorf("parse snp report: %v: %w", err, ErrMalformed)
	}
	chain, err := parseSNPCertTable(ev.Aux)
	if err != nil {
		return nil, err
	}
	return &spb.Attestation{Report: report, CertificateChain: chain}, nil
}

// verifySNP checks an SEV-SNP report: VCEK/VLEK chain to AMD's ARK and report
// signature, revocation when AMD's CRL is available, reported TCB against the
// VCEK's TCB, guest policy (debug, migration agent), measurement allow-list and
// report data.
func (v *Verifier) verifySNP(ctx context.Context, ev Evidence, want [ReportDataSize]byte, vd *Verdict) error {
	att, err := parseSNP(ev)
	if err != nil {
		return err
	}
	chain := att.GetCertificateChain()
	hasEK := len(chain.GetVcekCert()) > 0 || len(chain.GetVlekCert()) > 0
	revocations := true
	for {
		g := snpGetter{&libGetter{ctx: ctx, cache: v.Collateral}}
		opts := &sverify.Options{
			// The endorsement key from the evidence needs no fetching: ASK and ARK are
			// the library's embedded AMD roots. Without it, the cache supplies it.
			DisableCertFetching: hasEK,
			CheckRevocations:    revocations,
			Getter:              g,
			Now:                 vd.Time,
		}
		err = sverify.SnpAttestationContext(ctx, att, opts)
		if err != nil && g.didMiss() && revocations {
			revocations = false
			continue
		}
		if err != nil && g.didMiss() {
			return fmt.Errorf("snp endorsement key certificate: %v: %w", err, ErrCollateralUnavailable)
		}
		break
	}
	if err != nil {
		return fmt.Errorf("snp report signature chain: %v: %w", err, ErrSignature)
	}
	if hasEK {
		vd.checked("report signature by VCEK/VLEK from the evidence, chained to AMD ARK")
	} else {
		vd.checked("report signature by VCEK from AMD KDS collateral, chained to AMD ARK")
	}
	if revocations {
		vd.checked("ASK/VCEK revocation (AMD CRL)")
	} else {
		vd.notChecked("ASK/VCEK revocation: AMD CRL unavailable (offline, not cached)")
	}

	report := att.GetReport()
	policy, err := sabi.ParseSnpPolicy(report.GetPolicy())
	if err != nil {
		return fmt.Errorf("snp guest policy: %v: %w", err, ErrMalformed)
	}
	if policy.Debug {
		if !v.Policy.AllowDebug {
			return fmt.Errorf("snp guest policy %#x allows DEBUG: %w", report.GetPolicy(), ErrDebug)
		}
		vd.notChecked("confidentiality: guest policy allows DEBUG (allow_debug is on)")
	} else {
		vd.checked("guest policy forbids DEBUG")
	}
	vopts := &validate.Options{
		GuestPolicy: sabi.SnpPolicy{
			ABIMajor: 0, ABIMinor: 0, // any ABI
			SMT:        true,
			Debug:      true, // decided above
			CXLAllowed: true,
			MigrateMA:  false,
		},
		PermitProvisionalFirmware: true,
	}
	if err := validate.SnpAttestation(att, vopts); err != nil {
		return fmt.Errorf("snp TCB and guest policy: %v: %w", err, ErrCollateral)
	}
	vd.TCBStatus = "reported TCB matches the VCEK's TCB"
	vd.checked("reported TCB matches the VCEK's TCB; no migration agent; chip ID matches VCEK")
	if err := v.measurement(tee.SEVSNP, [][]byte{report.GetMeasurement()}, vd); err != nil {
		return err
	}
	if err := CheckReportData(report.GetReportData(), want); err != nil {
		return err
	}
	vd.checked("report data binds peer ID and nonce")
	vd.notChecked("evidence age: a report carries no time; freshness is the nonce in the report data")
	return nil
}
