package openaiapi_test

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

type sseEvent struct {
	data string
	done bool
}

var goldenSSE = []struct {
	name   string
	wire   string
	events []sseEvent
	err    error // after the events
}{
	{"one event", "data: {\"a\":1}\n\n", []sseEvent{{data: `{"a":1}`}}, io.EOF},
	{"done", "data: x\n\ndata: [DONE]\n\n", []sseEvent{{data: "x"}, {done: true}}, io.EOF},
	{"no space after colon", "data:x\n\n", []sseEvent{{data: "x"}}, io.EOF},
	{"crlf", "data: x\r\n\r\n", []sseEvent{{data: "x"}}, io.EOF},
	{"multi-line data", "data: a\ndata: b\n\n", []sseEvent{{data: "a\nb"}}, io.EOF},
	{"comments and fields", ": ping\n\nevent: message\nid: 7\nretry: 100\ndata: y\n\n", []sseEvent{{data: "y"}}, io.EOF},
	{"blank lines only", "\n\n\n", nil, io.EOF},
	{"empty", "", nil, io.EOF},
	{"cut inside event", "data: x\n\ndata: {\"a\"", []sseEvent{{data: "x"}}, io.ErrUnexpectedEOF},
	{"cut before blank line", "data: x\n", nil, io.ErrUnexpectedEOF},
	{"not a field", "data: x\n\nhello\n\n", []sseEvent{{data: "x"}}, openaiapi.ErrMalformedEvent},
	{"too large", "data: " + strings.Repeat("x", 100) + "\n\n", nil, openaiapi.ErrEventTooLarge},
}

func TestEventReaderGolden(t *testing.T) {
	for _, g := range goldenSSE {
		r := openaiapi.NewEventReader(strings.NewReader(g.wire), 64)
		for i, want := range g.events {
			data, done, err := r.Next()
			if err != nil || string(data) != want.data || done != want.done {
				t.Fatalf("%s: event %d = %q, %v, %v; want %q, %v", g.name, i, data, done, err, want.data, want.done)
			}
		}
		if _, _, err := r.Next(); !errors.Is(err, g.err) {
			t.Fatalf("%s: end = %v; want %v", g.name, err, g.err)
		}
	}
}

// FuzzEventReader: any input ends in events then one error, never a panic or
// an event over the cap; events written with WriteEvent read back the same.
func FuzzEventReader(f *testing.F) {
	for _, g := range goldenSSE {
		f.Add([]byte(g.wire))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		const max = 256
		r := openaiapi.NewEventReader(bytes.NewReader(b), max)
		var got [][]byte
		for range len(b) + 1 {
			data, done, err := r.Next()
			if err != nil {
				break
			}
			if len(data) > max {
				t.Fatalf("event of %d bytes over the cap %d", len(data), max)
			}
			if !done {
				got = append(got, append([]byte(nil), data...))
			}
		}
		// Round trip: single-line payloads that are not [DONE] come back whole.
		var wire bytes.Buffer
		var sent [][]byte
		for _, d := range got {
			if bytes.ContainsAny(d, "\r\n") || string(d) == "[DONE]" {
				continue
			}
			openaiapi.WriteEvent(&wire, d)
			sent = append(sent, d)
		}
		openaiapi.WriteDone(&wire)
		r = openaiapi.NewEventReader(&wire, max+16)
		for i, want := range sent {
			data, done, err := r.Next()
			if err != nil || done || !bytes.Equal(data, want) {
				t.Fatalf("round trip event %d: %q %v %v; want %q", i, data, done, err, want)
			}
		}
		if _, done, err := r.Next(); !done || err != nil {
			t.Fatalf("round trip end: done %v err %v", done, err)
		}
	})
}
