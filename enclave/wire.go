package enclave

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/cocoon-network/cocoon/enclave/tee"
)

// Size caps, checked before any allocation.
const (
	// MaxEvidenceSize caps encoded evidence. A TDX quote with its PCK chain is about
	// 5 KB, an SNP report 1184 bytes plus a certificate table of about 4 KB.
	MaxEvidenceSize = 64 << 10
	// maxRequestSize caps a request frame's payload.
	maxRequestSize = 64
	// maxResponseSize caps a response frame's payload.
	maxResponseSize = 2 + MaxEvidenceSize
	// maxFrameHeader is the longest uvarint length prefix read before refusing.
	maxFrameHeader = binary.MaxVarintLen32
)

// wireVersion is the first byte of evidence and of both protocol messages.
const wireVersion = 1

// kindsByCode is the evidence's kind byte: the index of each kind.
var kindsByCode = [...]tee.Kind{tee.None, tee.TDX, tee.SEVSNP, tee.Sim}

// kindCodes is kindsByCode inverted.
var kindCodes = map[tee.Kind]byte{tee.None: 0, tee.TDX: 1, tee.SEVSNP: 2, tee.Sim: 3}

func kindFromCode(c byte) (tee.Kind, bool) {
	if int(c) < len(kindsByCode) {
		return kindsByCode[c], true
	}
	return "", false
}

// MarshalBinary encodes evidence:
//
//	version:u8=1  kind:u8 (0 none, 1 tdx, 2 sev-snp, 3 sim)
//	uvarint len ‖ report   uvarint len ‖ aux
func (e Evidence) MarshalBinary() ([]byte, error) {
	code, ok := kindCodes[e.Kind]
	if !ok {
		return nil, fmt.Errorf("encode evidence: unknown kind %q", e.Kind)
	}
	n := 2 + 2*binary.MaxVarintLen64 + len(e.Report) + len(e.Aux)
	if n > MaxEvidenceSize+2*binary.MaxVarintLen64 {
		return nil, fmt.Errorf("encode evidence: %d bytes: %w", len(e.Report)+len(e.Aux), ErrTooLarge)
	}
	b := make([]byte, 0, n)
	b = append(b, wireVersion, code)
	b = binary.AppendUvarint(b, uint64(len(e.Report)))
	b = append(b, e.Report...)
	b = binary.AppendUvarint(b, uint64(len(e.Aux)))
	b = append(b, e.Aux...)
	if len(b) > MaxEvidenceSize {
		return nil, fmt.Errorf("encode evidence: %d bytes: %w", len(b), ErrTooLarge)
	}
	return b, nil
}

// DecodeEvidence decodes MarshalBinary's output. It refuses input over
// MaxEvidenceSize, unknown versions and kinds, and trailing bytes. The returned
// evidence aliases b.
func DecodeEvidence(b []byte) (Evidence, error) {
	if len(b) > MaxEvidenceSize {
		return Evidence{}, fmt.Errorf("decode evidence: %d bytes: %w", len(b), ErrTooLarge)
	}
	if len(b) < 2 {
		return Evidence{}, fmt.Errorf("decode evidence: %d bytes: %w", len(b), ErrMalformed)
	}
	if b[0] != wireVersion {
		return Evidence{}, fmt.Errorf("decode evidence: version %d: %w", b[0], ErrMalformed)
	}
	kind, ok := kindFromCode(b[1])
	if !ok {
		return Evidence{}, fmt.Errorf("decode evidence: kind code %d: %w", b[1], ErrMalformed)
	}
	rest := b[2:]
	report, rest, err := readBytes(rest)
	if err != nil {
		return Evidence{}, fmt.Errorf("decode evidence report: %w", err)
	}
	aux, rest, err := readBytes(rest)
	if err != nil {
		return Evidence{}, fmt.Errorf("decode evidence aux: %w", err)
	}
	if len(rest) != 0 {
		return Evidence{}, fmt.Errorf("decode evidence: %d trailing bytes: %w", len(rest), ErrMalformed)
	}
	if kind == tee.None && (len(report) != 0 || len(aux) != 0) {
		return Evidence{}, fmt.Errorf("decode evidence: kind none carries data: %w", ErrMalformed)
	}
	return Evidence{Kind: kind, Report: report, Aux: aux}, nil
}

// readBytes reads one uvarint-length-prefixed field, checking the length against
// what is left before slicing.
func readBytes(b []byte) (field, rest []byte, err error) {
	n, k := binary.Uvarint(b)
	if k <= 0 {
		return nil, nil, fmt.Errorf("bad length prefix: %w", ErrMalformed)
	}
	b = b[k:]
	if n > uint64(len(b)) {
		return nil, nil, fmt.Errorf("length %d exceeds the %d bytes left: %w", n, len(b), ErrMalformed)
	}
	if n == 0 {
		return nil, b, nil
	}
	return b[:n:n], b[n:], nil
}

// Response status codes on the wire; peers get a code, never an error string.
const (
	StatusOK          byte = 0 // evidence follows
	StatusRateLimited byte = 1 // too many requests from this peer; retry later
	StatusUnavailable byte = 2 // the attester failed to produce evidence
	StatusBadRequest  byte = 3 // the request was malformed
)

// ErrRefused is returned by RequestEvidence when the prover answers with a status
// other than StatusOK; errors.As to *RefusedError gives the code.
var ErrRefused = errors.New("enclave: prover refused the evidence request")

// RefusedError carries the prover's status code.
type RefusedError struct{ Status byte }

func (e *RefusedError) Error() string {
	switch e.Status {
	case StatusRateLimited:
		return "enclave: prover refused: rate limited"
	case StatusUnavailable:
		return "enclave: prover refused: evidence unavailable"
	case StatusBadRequest:
		return "enclave: prover refused: bad request"
	}
	return fmt.Sprintf("enclave: prover refused: status %d", e.Status)
}

func (e *RefusedError) Unwrap() error { return ErrRefused }

// EncodeRequest encodes the client's request: version:u8=1 ‖ nonce[32].
func EncodeRequest(nonce [NonceSize]byte) []byte {
	return append([]byte{wireVersion}, nonce[:]...)
}

// DecodeRequest decodes EncodeRequest's output.
func DecodeRequest(b []byte) ([NonceSize]byte, error) {
	var nonce [NonceSize]byte
	if len(b) != 1+NonceSize || b[0] != wireVersion {
		return nonce, fmt.Errorf("decode attest request of %d bytes: %w", len(b), ErrMalformed)
	}
	copy(nonce[:], b[1:])
	return nonce, nil
}

// EncodeResponse encodes the prover's answer: version:u8=1 ‖ status:u8 ‖ evidence
// (present only with StatusOK).
func EncodeResponse(status byte, ev *Evidence) ([]byte, error) {
	out := []byte{wireVersion, status}
	if status != StatusOK {
		return out, nil
	}
	if ev == nil {
		return nil, errors.New("encode attest response: status ok without evidence")
	}
	b, err := ev.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("encode attest response: %w", err)
	}
	return append(out, b...), nil
}

// DecodeResponse decodes EncodeResponse's output. A non-OK status comes back as a
// *RefusedError.
func DecodeResponse(b []byte) (Evidence, error) {
	if len(b) > maxResponseSize {
		return Evidence{}, fmt.Errorf("decode attest response: %d bytes: %w", len(b), ErrTooLarge)
	}
	if len(b) < 2 || b[0] != wireVersion {
		return Evidence{}, fmt.Errorf("decode attest response of %d bytes: %w", len(b), ErrMalformed)
	}
	if b[1] != StatusOK {
		if len(b) != 2 {
			return Evidence{}, fmt.Errorf("decode attest response: refusal with body: %w", ErrMalformed)
		}
		return Evidence{}, &RefusedError{Status: b[1]}
	}
	ev, err := DecodeEvidence(b[2:])
	if err != nil {
		return Evidence{}, fmt.Errorf("decode attest response: %w", err)
	}
	return ev, nil
}

// WriteFrame writes payload with a uvarint length prefix.
func WriteFrame(w io.Writer, payload []byte) error {
	b := binary.AppendUvarint(make([]byte, 0, binary.MaxVarintLen64+len(payload)), uint64(len(payload)))
	b = append(b, payload...)
	_, err := w.Write(b)
	return err
}

// ReadFrame reads one uvarint-length-prefixed frame, refusing a length over max
// before allocating anything for it.
func ReadFrame(r io.Reader, max int) ([]byte, error) {
	var (
		n     uint64
		shift uint
		one   [1]byte
	)
	for i := 0; ; i++ {
		if i == maxFrameHeader {
			return nil, fmt.Errorf("read frame: length prefix too long: %w", ErrMalformed)
		}
		if _, err := io.ReadFull(r, one[:]); err != nil {
			if i > 0 && errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("read frame length: %w", err)
		}
		n |= uint64(one[0]&0x7f) << shift
		if n > uint64(max) {
			return nil, fmt.Errorf("read frame: length over %d: %w", max, ErrTooLarge)
		}
		if one[0] < 0x80 {
			break
		}
		shift += 7
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("read frame body of %d bytes: %w", n, err)
	}
	return buf, nil
}
