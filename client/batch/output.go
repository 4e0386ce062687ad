package batch

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
)

// outputLine is one line of the OpenAI batch output format.
// Response.Headers is cocoon's addition, ignored by OpenAI's clients.
type outputLine struct {
	ID       string          `json:"id"`
	CustomID string          `json:"custom_id"`
	Response *response       `json:"response"`
	Error    json.RawMessage `json:"error"`
}

type response struct {
	StatusCode int               `json:"status_code"`
	RequestID  string            `json:"request_id"`
	Body       json.RawMessage   `json:"body"`
	Headers    map[string]string `json:"headers,omitempty"`
}

// resumeOutput reads the finished custom_ids of an output file opened for
// reading and writing, positioned at its start. A last line without its
// newline (a write torn by a crash) is cut off: torn says how many bytes went.
// Any other line that is not a batch output line is an error: f is not the
// output of a batch.
func resumeOutput(f *os.File) (done map[string]bool, torn int64, err error) {
	done = map[string]bool{}
	br := bufio.NewReaderSize(f, 64<<10)
	var off int64
	for n := 1; ; n++ {
		line, err := readLine(br, maxOutLine)
		if errors.Is(err, io.EOF) && len(line) == 0 {
			return done, 0, nil
		}
		if errors.Is(err, io.EOF) { // no newline: torn by a crash
			if err := f.Truncate(off); err != nil {
				return nil, 0, fmt.Errorf("cut the torn last line of %s: %w", f.Name(), err)
			}
			if err := f.Sync(); err != nil {
				return nil, 0, fmt.Errorf("sync %s: %w", f.Name(), err)
			}
			return done, int64(len(line)), nil
		}
		if err != nil {
			return nil, 0, fmt.Errorf("read %s line %d: %w", f.Name(), n, err)
		}
		off += int64(len(line))
		var o struct {
			CustomID string          `json:"custom_id"`
			Response json.RawMessage `json:"response"`
		}
		if json.Unmarshal(line, &o) != nil || o.CustomID == "" || len(o.Response) == 0 {
			return nil, 0, fmt.Errorf("%s line %d is not a batch output line; is -o the right file? (give a new file or the output of an earlier run of this batch)", f.Name(), n)
		}
		done[o.CustomID] = true
	}
}

// readLine reads one line with its newline, refusing lines over max bytes.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > max {
			return nil, fmt.Errorf("line longer than %d bytes", max)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return line, err
	}
}
