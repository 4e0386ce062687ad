package enclave

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"io"
	"runtime"
	"testing"

	"github.com/cocoon-network/cocoon/enclave/tee"
)

var goldenEvidence = []struct {
	name string
	ev   Evidence
	wire string // hex
}{
	{"none", Evidence{Kind: tee.None}, "01000000"},
	{"tdx", Evidence{Kind: tee.TDX, Report: []byte{0xaa, 0xbb}}, "010102aabb00"},
	{"sev-snp", Evidence{Kind: tee.SEVSNP, Report: []byte{1}, Aux: []byte{2, 3}}, "0102010102" + "0203"},
	{"sim", Evidence{Kind: tee.Sim, Report: bytes.Repeat([]byte{9}, 130)}, "01038201" + hex.EncodeToString(bytes.Repeat([]byte{9}, 130)) + "00"},
}

func TestEvidenceGolden(t *testing.T) {
	for _, g := range goldenEvidence {
		b, err := g.ev.MarshalBinary()
		if err != nil || hex.EncodeToString(b) != g.wire {
			t.Errorf("%s: MarshalBinary = %x, %v; want %s", g.name, b, err, g.wire)
		}
		wire, _ := hex.DecodeString(g.wire)
		got, err := DecodeEvidence(wire)
		if err != nil || !evidenceEqual(got, g.ev) {
			t.Errorf("DecodeEvidence(%s) = %+v, %v; want %+v", g.wire, got, err, g.ev)
		}
	}
}

func evidenceEqual(a, b Evidence) bool {
	return a.Kind == b.Kind && bytes.Equal(a.Report, b.Report) && bytes.Equal(a.Aux, b.Aux)
}

func TestDecodeEvidenceRefuses(t *testing.T) {
	for _, c := range []struct {
		name string
		wire []byte
		err  error
	}{
		{"empty", nil, ErrMalformed},
		{"version 2", []byte{2, 1, 0, 0}, ErrMalformed},
		{"kind 9", []byte{1, 9, 0, 0}, ErrMalformed},
		{"length past end", []byte{1, 1, 5, 1, 2}, ErrMalformed},
		{"huge length", []byte{1, 1, 0xff, 0xff, 0xff, 0xff, 0x0f}, ErrMalformed},
		{"trailing", []byte{1, 1, 0, 0, 7}, ErrMalformed},
		{"none with data", []byte{1, 0, 1, 5, 0}, ErrMalformed},
		{"over cap", make([]byte, MaxEvidenceSize+1), ErrTooLarge},
	} {
		if _, err := DecodeEvidence(c.wire); !errors.Is(err, c.err) {
			t.Errorf("%s: DecodeEvidence = %v; want %v", c.name, err, c.err)
		}
	}
	if _, err := (Evidence{Kind: tee.TDX, Report: make([]byte, MaxEvidenceSize)}).MarshalBinary(); !errors.Is(err, ErrTooLarge) {
		t.Errorf("MarshalBinary(oversized) = %v; want ErrTooLarge", err)
	}
}

// countingReader serves a length prefix then endless bytes, counting what is read.
type countingReader struct {
	prefix []byte
	n      int
}

func (r *countingReader) Read(p []byte) (int, error) {
	for i := range p {
		if r.n < len(r.prefix) {
			p[i] = r.prefix[r.n]
		} else {
			p[i] = 0x42
		}
		r.n++
	}
	return len(p), nil
}

func TestReadFrameRefusesOversizeBeforeAllocating(t *testing.T) {
	for _, length := range []uint64{maxResponseSize + 1, 1 << 31, 1<<63 + 5} {
		var prefix []byte
		for v := length; ; v >>= 7 {
			if v < 0x80 {
				prefix = append(prefix, byte(v))
				break
			}
			prefix = append(prefix, byte(v)|0x80)
		}
		r := &countingReader{prefix: prefix}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range 10 {
			r.n = 0
			// A length whose low 35 bits are small is refused as an overlong prefix.
			if _, err := ReadFrame(r, maxResponseSize); !errors.Is(err, ErrTooLarge) && !errors.Is(err, ErrMalformed) {
				t.Fatalf("ReadFrame(length %d) = %v; want ErrTooLarge or ErrMalformed", length, err)
			}
		}
		runtime.ReadMemStats(&after)
		// Only the length prefix was read (never the body), and what was allocated is
		// the error's, not a buffer of the announced size (≥ 64 KiB).
		if r.n > len(prefix) {
			t.Errorf("ReadFrame(length %d) read %d bytes; want at most the %d-byte prefix", length, r.n, len(prefix))
		}
		if per := (after.TotalAlloc - before.TotalAlloc) / 10; per > 8<<10 {
			t.Errorf("ReadFrame(length %d) allocated %d bytes per call", length, per)
		}
	}
	// A truncated body is an unexpected EOF, not a hang or a short frame.
	if _, err := ReadFrame(bytes.NewReader([]byte{5, 1, 2}), 64); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("ReadFrame(truncated) = %v; want io.ErrUnexpectedEOF", err)
	}
}

func TestRequestResponseGolden(t *testing.T) {
	var nonce [NonceSize]byte
	nonce[0], nonce[31] = 0xaa, 0xbb
	req := EncodeRequest(nonce)
	if want := "01aa" + hex.EncodeToString(make([]byte, 30)) + "bb"; hex.EncodeToString(req) != want {
		t.Errorf("EncodeRequest = %x; want %s", req, want)
	}
	if got, err := DecodeRequest(req); err != nil || got != nonce {
		t.Errorf("DecodeRequest = %x, %v", got, err)
	}
	resp, err := EncodeResponse(StatusRateLimited, nil)
	if err != nil || hex.EncodeToString(resp) != "0101" {
		t.Errorf("EncodeResponse(rate limited) = %x, %v; want 0101", resp, err)
	}
	var refused *RefusedError
	if _, err := DecodeResponse(resp); !errors.As(err, &refused) || refused.Status != StatusRateLimited || !errors.Is(err, ErrRefused) {
		t.Errorf("DecodeResponse(0101) = %v; want RefusedError{rate limited}", err)
	}
}

// Fuzz targets: every decoder of evidence and protocol messages. The golden tables
// and the genuine evidence seed them; plain `go test` runs the seeds.

func FuzzDecodeEvidence(f *testing.F) {
	for _, g := range goldenEvidence {
		b, _ := hex.DecodeString(g.wire)
		f.Add(b)
	}
	for _, ev := range []Evidence{genuineTDX(f), genuineSNP(f)} {
		b, _ := ev.MarshalBinary()
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := DecodeEvidence(b)
		if err != nil {
			return
		}
		again, err := ev.MarshalBinary()
		if err != nil {
			t.Fatalf("re-encode %+v: %v", ev, err)
		}
		ev2, err := DecodeEvidence(again)
		if err != nil || !evidenceEqual(ev, ev2) {
			t.Fatalf("round trip: got %+v, %v; want %+v", ev2, err, ev)
		}
	})
}

func FuzzDecodeRequest(f *testing.F) {
	f.Add(EncodeRequest([NonceSize]byte{1, 2, 3}))
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, b []byte) {
		nonce, err := DecodeRequest(b)
		if err != nil {
			return
		}
		if !bytes.Equal(EncodeRequest(nonce), b) {
			t.Fatalf("round trip of %x", b)
		}
	})
}

func FuzzDecodeResponse(f *testing.F) {
	for _, st := range []byte{StatusOK, StatusRateLimited, StatusUnavailable, StatusBadRequest} {
		ev := goldenEvidence[1].ev
		b, _ := EncodeResponse(st, &ev)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := DecodeResponse(b)
		if err != nil {
			return
		}
		again, err := EncodeResponse(StatusOK, &ev)
		if err != nil {
			t.Fatal(err)
		}
		if ev2, err := DecodeResponse(again); err != nil || !evidenceEqual(ev, ev2) {
			t.Fatalf("round trip: %+v, %v; want %+v", ev2, err, ev)
		}
	})
}

func FuzzReadFrame(f *testing.F) {
	var buf bytes.Buffer
	_ = WriteFrame(&buf, EncodeRequest([NonceSize]byte{}))
	f.Add(buf.Bytes())
	f.Add([]byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x01})
	f.Add([]byte{0xff, 0xff, 0x03})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ReadFrame(bytes.NewReader(b), maxRequestSize)
		if err != nil {
			return
		}
		if len(p) > maxRequestSize {
			t.Fatalf("frame of %d bytes passed a cap of %d", len(p), maxRequestSize)
		}
	})
}

func FuzzDecodeSimReport(f *testing.F) {
	ev, _ := NewSimAttester(nil, [MeasurementSize]byte{}, nil).Attest(context.Background(), [ReportDataSize]byte{3})
	f.Add(ev.Report)
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeSimReport(b)
		if err != nil {
			return
		}
		if again := r.Marshal(); !bytes.Equal(again, b) {
			t.Fatalf("round trip: %x; want %x", again, b)
		}
	})
}

func FuzzParseSNP(f *testing.F) {
	g := genuineSNP(f)
	f.Add(g.Report, g.Aux)
	f.Add(g.Report, []byte{})
	f.Add(g.Report, append(make([]byte, 16), 0xff, 0xff, 0xff, 0xff, 0x10, 0, 0, 0))
	f.Fuzz(func(t *testing.T, report, aux []byte) {
		_, _ = parseSNP(Evidence{Kind: tee.SEVSNP, Report: report, Aux: aux})
	})
}

func FuzzParseTDXQuote(f *testing.F) {
	f.Add(genuineTDX(f).Report)
	f.Add(genuineTDX(f).Report[:700])
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = parseTDXQuote(b)
	})
}

// FuzzVerify runs whole verification on decoded evidence: it must refuse, never
// panic, and never accept anything but the seeds' own report data.
func FuzzVerify(f *testing.F) {
	for _, ev := range []Evidence{genuineTDX(f), genuineSNP(f)} {
		b, _ := ev.MarshalBinary()
		f.Add(b)
	}
	simEv, _ := NewSimAttester(nil, [MeasurementSize]byte{}, nil).Attest(context.Background(), [ReportDataSize]byte{})
	b, _ := simEv.MarshalBinary()
	f.Add(b)
	v := &Verifier{Policy: Policy{AllowSim: true, AllowDebug: true, AllowedKinds: []tee.Kind{tee.TDX, tee.SEVSNP, tee.Sim}}}
	var want [ReportDataSize]byte
	want[0] = 0xfe // no seed carries this report data
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := DecodeEvidence(b)
		if err != nil {
			return
		}
		if vd, err := v.Verify(context.Background(), ev, want); err == nil {
			t.Fatalf("Verify accepted fuzzed evidence for foreign report data: %+v", vd)
		}
	})
}

func TestKindsMatchWireCodes(t *testing.T) {
	for i, k := range kindsByCode {
		if kindCodes[k] != byte(i) {
			t.Errorf("kind %s: code %d at index %d", k, kindCodes[k], i)
		}
	}
	if len(kindCodes) != len(kindsByCode) {
		t.Error("kindCodes and kindsByCode differ in length")
	}
}
