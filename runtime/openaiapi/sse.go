package openaiapi

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
)

// Server-sent events as the OpenAI API uses them: each event is one or more
// "data: <json>" lines ended by a blank line, and the stream ends with
// "data: [DONE]". Comment lines (":" keep-alives) and the fields event, id and
// retry are read and ignored.

// MaxEventBytes caps one event (all its data lines), refused before it is buffered whole.
const MaxEventBytes = 1 << 20

// ErrEventTooLarge is returned for an event over the reader's cap.
var ErrEventTooLarge = errors.New("openaiapi: server-sent event too large")

// ErrMalformedEvent is returned for a line that is not an SSE field.
var ErrMalformedEvent = errors.New("openaiapi: malformed server-sent event")

// EventReader splits an SSE stream into the data of its events.
// It is used by one goroutine.
type EventReader struct {
	r    *bufio.Reader
	max  int
	data bytes.Buffer
}

// NewEventReader reads events of at most max bytes (0: MaxEventBytes) from r.
func NewEventReader(r io.Reader, max int) *EventReader {
	if max <= 0 {
		max = MaxEventBytes
	}
	return &EventReader{r: bufio.NewReaderSize(r, 4096), max: max}
}

// Next returns the data of the next event that has data. done is true for the
// "[DONE]" sentinel. At the end of the input it returns io.EOF, or
// io.ErrUnexpectedEOF when the input stops inside an event.
func (e *EventReader) Next() (data []byte, done bool, err error) {
	e.data.Reset()
	hasData := false
	for {
		line, err := e.readLine()
		if err == io.EOF {
			if hasData {
				// An event not closed by a blank line: the stream was cut.
				return nil, false, io.ErrUnexpectedEOF
			}
			return nil, false, io.EOF
		}
		if err != nil {
			return nil, false, err
		}
		if len(line) == 0 { // blank line: dispatch
			if !hasData {
				continue
			}
			d := e.data.Bytes()
			if bytes.Equal(d, []byte("[DONE]")) {
				return nil, true, nil
			}
			return d, false, nil
		}
		if line[0] == ':' {
			continue // comment, used as keep-alive
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(field) {
		case "data":
			if hasData {
				e.data.WriteByte('\n')
			}
			if e.data.Len()+len(value) > e.max {
				return nil, false, fmt.Errorf("%w: over %d bytes", ErrEventTooLarge, e.max)
			}
			e.data.Write(value)
			hasData = true
		case "event", "id", "retry":
		default:
			return nil, false, fmt.Errorf("%w: line %.40q", ErrMalformedEvent, line)
		}
	}
}

// readLine returns one line without its ending (\n, \r\n or \r is not
// split: OpenAI servers end lines with \n), refusing lines over the cap.
func (e *EventReader) readLine() ([]byte, error) {
	var line []byte
	for {
		chunk, err := e.r.ReadSlice('\n')
		if len(line)+len(chunk) > e.max+16 {
			return nil, fmt.Errorf("%w: line over %d bytes", ErrEventTooLarge, e.max)
		}
		line = append(line, chunk...)
		if err == bufio.ErrBufferFull {
			continue
		}
		if err == io.EOF && len(line) > 0 {
			// Last line without a newline: the stream was cut inside an event.
			return nil, io.ErrUnexpectedEOF
		}
		if err != nil {
			return nil, err
		}
		line = bytes.TrimSuffix(line[:len(line)-1], []byte("\r"))
		return line, nil
	}
}

// WriteEvent writes one "data: <payload>\n\n" event.
func WriteEvent(w io.Writer, payload []byte) error {
	buf := make([]byte, 0, len(payload)+8)
	buf = append(buf, "data: "...)
	buf = append(buf, payload...)
	buf = append(buf, "\n\n"...)
	_, err := w.Write(buf)
	return err
}

// WriteDone writes the "data: [DONE]" event that ends a stream.
func WriteDone(w io.Writer) error {
	_, err := io.WriteString(w, "data: [DONE]\n\n")
	return err
}
