package batch

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// goldenLines are input lines and what decodeLine says of them: the
// field at fault ("" and ok: accepted). They seed FuzzLine.
var goldenLines = []struct {
	line  string
	ok    bool
	field string // the field an error names
}{
	{`{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"hi"}]}}`, true, ""},
	{`{"custom_id":"b","method":"POST","url":"/v1/completions","body":{"model":"m","prompt":"once","max_tokens":8,"temperature":0}}`, true, ""},
	{`{"custom_id":"c","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":false}}`, true, ""},
	{` {"body":{"model":"m","prompt":"x"},"url":"/v1/completions","method":"POST","custom_id":"d"} `, true, ""},
	{`{"custom_id":"e","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}}`, false, "body.stream"},
	{`{"method":"POST","url":"/v1/completions","body":{"model":"m","prompt":"x"}}`, false, "custom_id"},
	{`{"custom_id":"","method":"POST","url":"/v1/completions","body":{"model":"m","prompt":"x"}}`, false, "custom_id"},
	{`{"custom_id":7,"method":"POST","url":"/v1/completions","body":{"model":"m","prompt":"x"}}`, false, "custom_id"},
	{`{"custom_id":"f","method":"GET","url":"/v1/completions","body":{"model":"m","prompt":"x"}}`, false, "method"},
	{`{"custom_id":"g","url":"/v1/completions","body":{"model":"m","prompt":"x"}}`, false, "method"},
	{`{"custom_id":"h","method":"POST","url":"/v1/embeddings","body":{"model":"m","input":"x"}}`, false, "url"},
	{`{"custom_id":"i","method":"POST","url":"/v1/completions","body":"{\"model\":\"m\"}"}`, false, "body"},
	{`{"custom_id":"j","method":"POST","url":"/v1/completions"}`, false, "body"},
	{`{"custom_id":"k","method":"POST","url":"/v1/completions","body":[1]}`, false, "body"},
	{`{"custom_id":"l","method":"POST","url":"/v1/completions","body":{"prompt":"x"}}`, false, "body.model"},
	{`{"custom_id":"m","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[]}}`, false, "body.messages"},
	{`{"custom_id":"n","method":"POST","url":"/v1/completions","body":{"model":"m","prompt":"x","temperature":3}}`, false, "body.temperature"},
	{`{"custom_id":"o","method":"POST","url":"/v1/completions","body":{"model":"m","prompt":"x"},"extra":1}`, false, "extra"},
	{`{"custom_id":"p","method":"POST","url":"/v1/completions","body":{"model":"m","prompt":"x"}} {}`, false, ""},
	{`{"custom_id":"q",`, false, ""},
	{`[]`, false, ""},
	{`null`, false, ""},
	{`"text"`, false, ""},
}

func TestDecodeLine(t *testing.T) {
	for _, g := range goldenLines {
		r, err := decodeLine([]byte(g.line))
		if g.ok {
			if err != nil {
				t.Errorf("decodeLine(%s) = %v; want accepted", g.line, err)
				continue
			}
			if r.Model != "m" || r.Method != "POST" || !json.Valid(r.Body) {
				t.Errorf("decodeLine(%s) = %+v", g.line, r)
			}
			continue
		}
		var le *lineError
		if !errors.As(err, &le) {
			t.Errorf("decodeLine(%s) = %+v, %v; want a *lineError on %q", g.line, r, err, g.field)
			continue
		}
		if le.Field != g.field {
			t.Errorf("decodeLine(%s): error %q names field %q; want %q", g.line, err, le.Field, g.field)
		}
	}
	long := `{"custom_id":"x","method":"POST","url":"/v1/completions","body":{"model":"m","prompt":"` + strings.Repeat("a", maxLine) + `"}}`
	if _, err := decodeLine([]byte(long)); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Errorf("a line over %d bytes: %v; want refused", maxLine, err)
	}
}

// TestReadInput checks the whole-file validator: blank lines are skipped,
// and the first bad line is named by its number and field.
func TestReadInput(t *testing.T) {
	ok1, ok2 := goldenLines[0].line, goldenLines[1].line
	reqs, err := readInput(strings.NewReader(ok1 + "\n\n" + ok2 + "\r\n"))
	if err != nil || len(reqs) != 2 || reqs[0].Line != 1 || reqs[1].Line != 3 || reqs[1].CustomID != "b" {
		t.Fatalf("readInput(two good lines) = %+v, %v", reqs, err)
	}
	long := `{"custom_id":"x","method":"POST","url":"/v1/completions","body":{"model":"m","prompt":"` + strings.Repeat("a", maxLine) + `"}}`
	for _, c := range []struct{ in, want string }{
		{ok1 + "\n" + ok1 + "\n", `line 2: custom_id: "a" was already used on line 1`},
		{ok1 + "\n" + goldenLines[4].line + "\n", "line 2: body.stream: streaming is not supported"},
		{ok1 + "\n" + ok2 + "\n{\n", "line 3: not a JSON object"},
		{ok1 + "\n" + long + "\n" + ok2, "line 2: longer than 1048576 bytes"},
		{"\n \n", "no requests in the input"},
	} {
		_, err := readInput(strings.NewReader(c.in))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("readInput(%.60q…) = %v; want %q", c.in, err, c.want)
		}
	}
}

// FuzzLine: no input crashes the decoder, and an accepted line encodes to
// one that decodes to the same request.
func FuzzLine(f *testing.F) {
	for _, g := range goldenLines {
		f.Add([]byte(g.line))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		r, err := decodeLine(line)
		if err != nil {
			var le *lineError
			if !errors.As(err, &le) {
				t.Fatalf("decodeLine(%q) = %v; want a *lineError", line, err)
			}
			return
		}
		again, err := decodeLine(r.marshal())
		if err != nil || again.CustomID != r.CustomID || again.Method != r.Method || again.URL != r.URL ||
			again.Model != r.Model || !bytes.Equal(again.Body, r.Body) {
			t.Fatalf("round trip of %q: got %+v, %v; want %+v", line, again, err, r)
		}
	})
}
