package batch

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

// Input limits. A line over maxLine is refused (the gateway itself takes
// bodies up to openaiapi.MaxBodyBytes); an answer over maxAnswer is a failure,
// not written.
const (
	maxLine   = 1 << 20
	maxAnswer = 16 << 20
	// maxOutLine bounds one line of OUT when resuming: an answer plus the
	// envelope.
	maxOutLine = maxAnswer + maxLine
)

// endpoints are the URLs a batch line may name.
var endpoints = map[string]bool{"/v1/chat/completions": true, "/v1/completions": true}

// request is one validated line of a batch input file.
type request struct {
	Line     int             // 1-based line number in IN
	CustomID string          // unique in IN
	Method   string          // POST
	URL      string          // one of endpoints
	Body     json.RawMessage // a JSON object, compact
	Model    string          // body.model
}

// lineError is a bad input line: its number, the field at fault and why.
type lineError struct {
	Line  int
	Field string // "" for the line as a whole
	Msg   string
}

func (e *lineError) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("line %d: %s", e.Line, e.Msg)
	}
	return fmt.Sprintf("line %d: %s: %s", e.Line, e.Field, e.Msg)
}

// decodeLine decodes and checks one line of the OpenAI batch input format:
// {"custom_id", "method": "POST", "url": "/v1/chat/completions" or
// "/v1/completions", "body": {...}}, the body being a request the gateway
// would accept, not streaming. Errors are *lineError with Line 0.
func decodeLine(line []byte) (request, error) {
	bad := func(field, format string, args ...any) (request, error) {
		return request{}, &lineError{Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	if len(line) > maxLine {
		return bad("", "longer than %d bytes", maxLine)
	}
	var raw map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(line))
	if err := dec.Decode(&raw); err != nil {
		return bad("", "not a JSON object: %v", err)
	}
	if dec.More() {
		return bad("", "more than one JSON value on the line")
	}
	if raw == nil {
		return bad("", "not a JSON object")
	}
	for k := range raw {
		switch k {
		case "custom_id", "method", "url", "body":
		default:
			return bad(k, "unknown field (a line has custom_id, method, url and body)")
		}
	}
	str := func(field string) (string, error) {
		v, ok := raw[field]
		if !ok || bytes.Equal(bytes.TrimSpace(v), []byte("null")) {
			return "", &lineError{Field: field, Msg: "missing"}
		}
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return "", &lineError{Field: field, Msg: "must be a string"}
		}
		return s, nil
	}
	var r request
	var err error
	if r.CustomID, err = str("custom_id"); err != nil {
		return request{}, err
	}
	if r.CustomID == "" {
		return bad("custom_id", "must not be empty")
	}
	if r.Method, err = str("method"); err != nil {
		return request{}, err
	}
	if r.Method != http.MethodPost {
		return bad("method", "%q is not supported; use \"POST\"", r.Method)
	}
	if r.URL, err = str("url"); err != nil {
		return request{}, err
	}
	if !endpoints[r.URL] {
		return bad("url", "%q is not supported; use \"/v1/chat/completions\" or \"/v1/completions\"", r.URL)
	}
	body, ok := raw["body"]
	if !ok {
		return bad("body", "missing")
	}
	body = bytes.TrimSpace(body)
	if len(body) == 0 || body[0] != '{' {
		return bad("body", "must be a JSON object (the request the endpoint takes)")
	}
	var probe struct {
		Stream json.RawMessage `json:"stream"`
	}
	if json.Unmarshal(body, &probe) == nil && len(probe.Stream) > 0 &&
		!bytes.Equal(probe.Stream, []byte("false")) && !bytes.Equal(probe.Stream, []byte("null")) {
		return bad("body.stream", "streaming is not supported in a batch (each answer is written whole); remove \"stream\"")
	}
	var model string
	if r.URL == "/v1/chat/completions" {
		req, _, derr := openaiapi.DecodeChatRequest(bytes.NewReader(body))
		model, err = req.Model, derr
	} else {
		req, _, derr := openaiapi.DecodeCompletionRequest(bytes.NewReader(body))
		model, err = req.Model, derr
	}
	if err != nil {
		var ae *openaiapi.Error
		if errors.As(err, &ae) && ae.Param != "" {
			return bad("body."+ae.Param, "%s", ae.Message)
		}
		return bad("body", "%v", err)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, body); err != nil {
		return bad("body", "%v", err)
	}
	r.Body, r.Model = compact.Bytes(), model
	return r, nil
}

// marshal encodes r as a batch input line (without the newline), the body
// byte for byte (no HTML escaping).
func (r request) marshal() []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(struct {
		CustomID string          `json:"custom_id"`
		Method   string          `json:"method"`
		URL      string          `json:"url"`
		Body     json.RawMessage `json:"body"`
	}{r.CustomID, r.Method, r.URL, r.Body})
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}

// readInput reads and checks every line of a batch input file; blank lines
// are skipped. The first bad line is returned as a *lineError naming its
// number and field; nothing is sent before the whole file passed.
func readInput(r io.Reader) ([]request, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxLine+1)
	var out []request
	seen := map[string]int{}
	n := 0
	for sc.Scan() {
		n++
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		req, err := decodeLine(line)
		if err != nil {
			var le *lineError
			if errors.As(err, &le) {
				le.Line = n
			}
			return nil, err
		}
		if first, dup := seen[req.CustomID]; dup {
			return nil, &lineError{Line: n, Field: "custom_id", Msg: fmt.Sprintf("%q was already used on line %d; each request needs its own", req.CustomID, first)}
		}
		seen[req.CustomID] = n
		req.Line = n
		out = append(out, req)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, &lineError{Line: n + 1, Msg: fmt.Sprintf("longer than %d bytes", maxLine)}
		}
		return nil, err
	}
	if len(out) == 0 {
		return nil, errors.New("no requests in the input (one JSON object per line: custom_id, method, url, body)")
	}
	return out, nil
}
