package enclave

import (
	"context"
	"crypto/sha512"
	"errors"
	"fmt"
	"time"

	"github.com/cocoon-network/cocoon/enclave/tee"
)

// ReportDataSize is the size of the report data field of TDX quotes and SNP reports.
const ReportDataSize = 64

// NonceSize is the size of the verifier's fresh nonce.
const NonceSize = 32

// reportDataContext separates cocoon's report data from any other use of the field.
const reportDataContext = "cocoon-attest-v1"

// ReportData returns the report data that binds evidence to a libp2p identity and a
// verifier's nonce: SHA-512("cocoon-attest-v1" ‖ peerID ‖ nonce). peerID is the raw
// bytes of the peer ID (the multihash of the host's public key).
func ReportData(peerID []byte, nonce [NonceSize]byte) [ReportDataSize]byte {
	h := sha512.New()
	h.Write([]byte(reportDataContext))
	h.Write(peerID)
	h.Write(nonce[:])
	var out [ReportDataSize]byte
	h.Sum(out[:0])
	return out
}

// Evidence is what an Attester produces and a Verifier checks. Its wire form is
// drawn in the package documentation (see MarshalBinary / DecodeEvidence).
type Evidence struct {
	Kind tee.Kind
	// Report is the kind's signed structure: the raw TDX quote, the raw SNP report
	// (1184 bytes), or the sim report. Empty for tee.None.
	Report []byte
	// Aux is the kind's auxiliary data: the SNP certificate table (the configfs-tsm
	// auxblob: VCEK/VLEK, ASK, ARK). Empty for the other kinds.
	Aux []byte
}

// Attester produces evidence whose report data is the given 64 bytes.
// Implementations are safe for concurrent use; real quotes may take a second or more.
type Attester interface {
	// Kind is the kind of evidence this attester produces.
	Kind() tee.Kind
	// Attest returns evidence carrying reportData, made now.
	Attest(ctx context.Context, reportData [ReportDataSize]byte) (Evidence, error)
}

// NoneAttester is the attester of a node that runs outside any TEE: it produces
// tee.None evidence, which a verifier accepts only when its policy allows "none".
type NoneAttester struct{}

// Kind returns tee.None.
func (NoneAttester) Kind() tee.Kind { return tee.None }

// Attest returns empty tee.None evidence.
func (NoneAttester) Attest(context.Context, [ReportDataSize]byte) (Evidence, error) {
	return Evidence{Kind: tee.None}, nil
}

// Verdict is the outcome of verifying one piece of evidence. On refusal the verifier
// returns the verdict so far, whose Checked lists the steps that passed.
type Verdict struct {
	Kind tee.Kind
	// Measurement is the hex launch measurement: SNP MEASUREMENT; TDX
	// MRTD:RTMR0:RTMR1:RTMR2:RTMR3; sim its fake measurement. Empty for tee.None.
	Measurement string
	// Tier is Kind.Tier(): "sim (not confidential)" for simulated evidence.
	Tier string
	// Time is when the verification ran (the verifier's clock).
	Time time.Time
	// EvidenceTime is the time signed into the evidence; zero for hardware kinds,
	// whose freshness comes from the nonce in the report data alone.
	EvidenceTime time.Time
	// TCBStatus is the vendor TCB outcome when collateral was checked ("UpToDate",
	// "reported TCB matches VCEK"), else empty.
	TCBStatus string
	// Checked lists what was verified, in order.
	Checked []string
	// NotChecked lists what could not be or was not verified, and why.
	NotChecked []string
}

func (v *Verdict) checked(what string)    { v.Checked = append(v.Checked, what) }
func (v *Verdict) notChecked(what string) { v.NotChecked = append(v.NotChecked, what) }

// Errors returned (wrapped) by verification and the attest protocol.
var (
	ErrKindNotAllowed        = errors.New("enclave: evidence kind not allowed by policy")
	ErrSimNotAllowed         = errors.New("enclave: simulated evidence refused: policy allow_sim is off")
	ErrSignature             = errors.New("enclave: evidence signature or certificate chain invalid")
	ErrCollateral            = errors.New("enclave: vendor collateral check failed")
	ErrDebug                 = errors.New("enclave: evidence is from a debuggable guest")
	ErrMeasurementNotAllowed = errors.New("enclave: measurement not in the policy allow-list")
	ErrReportDataMismatch    = errors.New("enclave: report data does not bind this peer and nonce")
	ErrEvidenceTooOld        = errors.New("enclave: evidence older than max_evidence_age")
	ErrEvidenceFromFuture    = errors.New("enclave: evidence time is in the future")
	ErrMalformed             = errors.New("enclave: malformed message")
	ErrTooLarge              = errors.New("enclave: message larger than its cap")
)

// CheckReportData compares the report data carried by evidence with the expected value.
// It is the binding step of every kind, exported so it can be exercised on its own.
func CheckReportData(got []byte, want [ReportDataSize]byte) error {
	if len(got) != ReportDataSize {
		return fmt.Errorf("report data is %d bytes, want %d: %w", len(got), ReportDataSize, ErrReportDataMismatch)
	}
	var diff byte
	for i := range want {
		diff |= got[i] ^ want[i]
	}
	if diff != 0 {
		return ErrReportDataMismatch
	}
	return nil
}
