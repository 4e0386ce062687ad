package enclave

import (
	"context"
	"crypto/ed25519"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/cocoon-network/cocoon/enclave/tee"
)

// The simulated TEE. It is NOT confidential: anyone can run it and sign anything.
// It exists so testnets and development exercise the same binding (report data =
// peer ID and nonce), the same policy and the same protocol as real hardware.
//
// Sim report (fixed SimReportSize bytes, big-endian):
//
//	version:u8=1 ‖ report_data[64] ‖ measurement[48] ‖ time:i64 (unix ns) ‖
//	public_key[32] ‖ signature[64]
//
// The Ed25519 signature covers "cocoon-sim-report-v1" ‖ every byte before it.

// SimReportSize is the size of a sim report.
const SimReportSize = 1 + ReportDataSize + MeasurementSize + 8 + ed25519.PublicKeySize + ed25519.SignatureSize

const simSignContext = "cocoon-sim-report-v1"

// DefaultSimMeasurement is the fake measurement of SimAttester when none is set:
// SHA-384("cocoon-sim-measurement-v1").
var DefaultSimMeasurement = func() (m [MeasurementSize]byte) {
	sum := sha512.Sum384([]byte("cocoon-sim-measurement-v1"))
	copy(m[:], sum[:])
	return m
}()

// SimAttester is the simulated TEE's attester (trust tier "sim (not confidential)").
// It is safe for concurrent use.
type SimAttester struct {
	key         ed25519.PrivateKey
	measurement [MeasurementSize]byte
	now         func() time.Time
}

// NewSimAttester returns a sim attester signing with key (nil: a fresh key) and
// reporting measurement (zero: DefaultSimMeasurement). now is its clock (nil: time.Now).
func NewSimAttester(key ed25519.PrivateKey, measurement [MeasurementSize]byte, now func() time.Time) *SimAttester {
	if key == nil {
		_, key, _ = ed25519.GenerateKey(nil)
	}
	if measurement == ([MeasurementSize]byte{}) {
		measurement = DefaultSimMeasurement
	}
	if now == nil {
		now = time.Now
	}
	return &SimAttester{key: key, measurement: measurement, now: now}
}

// Kind returns tee.Sim.
func (a *SimAttester) Kind() tee.Kind { return tee.Sim }

// Attest signs a sim report for reportData at the attester's current time.
func (a *SimAttester) Attest(_ context.Context, reportData [ReportDataSize]byte) (Evidence, error) {
	r := SimReport{ReportData: reportData, Measurement: a.measurement, Time: a.now()}
	copy(r.PublicKey[:], a.key.Public().(ed25519.PublicKey))
	b := r.signedPart()
	sig := ed25519.Sign(a.key, append([]byte(simSignContext), b...))
	return Evidence{Kind: tee.Sim, Report: append(b, sig...)}, nil
}

// SimReport is a decoded sim report.
type SimReport struct {
	ReportData  [ReportDataSize]byte
	Measurement [MeasurementSize]byte
	Time        time.Time
	PublicKey   [ed25519.PublicKeySize]byte
	Signature   [ed25519.SignatureSize]byte
}

func (r *SimReport) signedPart() []byte {
	b := make([]byte, 0, SimReportSize)
	b = append(b, wireVersion)
	b = append(b, r.ReportData[:]...)
	b = append(b, r.Measurement[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(r.Time.UnixNano()))
	return append(b, r.PublicKey[:]...)
}

// Marshal encodes the report (signature included as stored).
func (r *SimReport) Marshal() []byte { return append(r.signedPart(), r.Signature[:]...) }

// DecodeSimReport decodes a sim report without checking its signature.
func DecodeSimReport(b []byte) (SimReport, error) {
	var r SimReport
	if len(b) != SimReportSize {
		return r, fmt.Errorf("decode sim report: %d bytes, want %d: %w", len(b), SimReportSize, ErrMalformed)
	}
	if b[0] != wireVersion {
		return r, fmt.Errorf("decode sim report: version %d: %w", b[0], ErrMalformed)
	}
	off := 1
	off += copy(r.ReportData[:], b[off:])
	off += copy(r.Measurement[:], b[off:])
	r.Time = time.Unix(0, int64(binary.BigEndian.Uint64(b[off:]))).UTC()
	off += 8
	off += copy(r.PublicKey[:], b[off:])
	copy(r.Signature[:], b[off:])
	return r, nil
}

// verifySim checks a sim report's signature, measurement, report data and age.
// The signing key is self-asserted: the verdict says so.
func (v *Verifier) verifySim(ev Evidence, want [ReportDataSize]byte, vd *Verdict) error {
	r, err := DecodeSimReport(ev.Report)
	if err != nil {
		return err
	}
	signed := ev.Report[:SimReportSize-ed25519.SignatureSize]
	if !ed25519.Verify(ed25519.PublicKey(r.PublicKey[:]), append([]byte(simSignContext), signed...), r.Signature[:]) {
		return fmt.Errorf("sim report signature: %w", ErrSignature)
	}
	vd.checked("sim report Ed25519 signature (key self-asserted: simulated, not confidential)")
	vd.notChecked("hardware root of trust: sim evidence is simulated, not confidential")
	vd.EvidenceTime = r.Time
	if err := v.measurement(tee.Sim, [][]byte{r.Measurement[:]}, vd); err != nil {
		return err
	}
	if err := CheckReportData(r.ReportData[:], want); err != nil {
		return err
	}
	vd.checked("report data binds peer ID and nonce")
	age := vd.Time.Sub(r.Time)
	if age < -maxFutureSkew {
		return fmt.Errorf("sim evidence time %s is %v ahead: %w", r.Time.Format(time.RFC3339Nano), -age, ErrEvidenceFromFuture)
	}
	if max := v.Policy.maxAge(); age > max {
		return fmt.Errorf("sim evidence is %v old, max %v: %w", age, max, ErrEvidenceTooOld)
	}
	vd.checked(fmt.Sprintf("evidence age %v within max_evidence_age %v", age.Round(time.Millisecond), v.Policy.maxAge()))
	return nil
}
