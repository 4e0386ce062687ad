package runtime

import "fmt"

// Check reports the first thing wrong with an embeddings request as a
// *FieldError naming the OpenAI field ("model", "input", "input[3]"), by
// the rules Request.Check applies to text: every edge a stranger's request
// crosses applies it.
func (req EmbedRequest) Check() error {
	bad := func(field, format string, args ...any) error {
		return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	if err := (Request{Model: req.Model}).CheckParams(); err != nil {
		return err
	}
	switch {
	case len(req.Inputs) == 0:
		return bad("input", "empty: give a string or an array of strings")
	case len(req.Inputs) > MaxEmbedInputs:
		return bad("input", "%d inputs, at most %d", len(req.Inputs), MaxEmbedInputs)
	}
	size := 0
	for i, in := range req.Inputs {
		if in == "" {
			return bad(fmt.Sprintf("input[%d]", i), "empty")
		}
		if err := checkText(in); err != nil {
			return bad(fmt.Sprintf("input[%d]", i), "%v", err)
		}
		size += len(in)
	}
	if size > MaxTextBytes {
		return bad("input", "%d bytes of text, at most %d", size, MaxTextBytes)
	}
	return nil
}
