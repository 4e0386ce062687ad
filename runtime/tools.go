package runtime

import (
	"encoding/json"
	"fmt"
	"strings"
)

// Tool is a function the model may call (OpenAI's tools[i].function).
type Tool struct {
	Name        string          // [a-zA-Z0-9_-]{1,64}
	Description string          `json:",omitempty"`
	Parameters  json.RawMessage `json:",omitempty"` // JSON Schema of the arguments; empty: none
	Strict      bool            `json:",omitempty"` // OpenAI's strict; the embedded backend is always strict
}

// Tool choices, as OpenAI's tool_choice.
const (
	ToolChoiceAuto     = "auto"     // text or calls, as the model decides (the default with tools)
	ToolChoiceNone     = "none"     // text only (the default without tools)
	ToolChoiceRequired = "required" // at least one call
	ToolChoiceFunction = "function" // a call of the function Name
)

// ToolChoice is OpenAI's tool_choice; the zero value is the default: auto
// when tools are given, else none.
type ToolChoice struct {
	Mode string `json:",omitempty"` // a ToolChoice constant, or "" for the default
	Name string `json:",omitempty"` // ToolChoiceFunction: the function to call
}

// EffectiveToolChoice is the choice that applies to req: the default resolved.
func (req Request) EffectiveToolChoice() ToolChoice {
	if req.ToolChoice.Mode != "" {
		return req.ToolChoice
	}
	if len(req.Tools) > 0 {
		return ToolChoice{Mode: ToolChoiceAuto}
	}
	return ToolChoice{Mode: ToolChoiceNone}
}

// ToolCall is one call an assistant message made.
type ToolCall struct {
	ID        string // the caller's handle on the call, echoed by the tool message answering it
	Name      string // the function called
	Arguments string // JSON, as the model wrote it
}

// ToolCallDelta is a piece of a streamed tool call (see Delta.ToolCalls).
type ToolCallDelta struct {
	Index     int    // which call of the answer, from 0
	ID        string `json:",omitempty"` // first piece only
	Name      string `json:",omitempty"` // first piece only
	Arguments string `json:",omitempty"` // appended to the call's arguments
}

// TokenLogprob is one generated token's log probability (OpenAI's
// logprobs.content[i]) and, if asked, the likeliest alternatives there.
type TokenLogprob struct {
	Token   string
	Logprob float64
	Bytes   []byte       `json:",omitempty"` // the token's bytes, which may be part of a UTF-8 character
	Top     []TopLogprob `json:",omitempty"`
}

// TopLogprob is one of TokenLogprob.Top.
type TopLogprob struct {
	Token   string
	Logprob float64
	Bytes   []byte `json:",omitempty"`
}

// Image is an image in a message's content: a data: URL (workers fetch
// nothing from the internet), at byte offset At of the message's Content,
// where its part stood among the text parts.
type Image struct {
	URL    string // "data:image/<type>;base64,..."
	Detail string `json:",omitempty"` // OpenAI's detail: "", auto, low or high
	At     int    `json:",omitempty"`
}

// Limits on the capabilities' fields, checked by Request.Check.
const (
	// MaxToolBytes caps the tools' names, descriptions and parameter
	// schemas together (each schema is also held to MaxSchemaBytes).
	MaxToolBytes = 256 << 10
	// MaxToolDescriptionBytes caps one tool's description.
	MaxToolDescriptionBytes = 8 << 10
	// MaxToolCallIDBytes caps a tool call's id.
	MaxToolCallIDBytes = 256
	// MaxToolCalls caps the calls one assistant message may hold.
	MaxToolCalls = 128
	// MaxTopLogprobs is the most alternatives a request may ask for per
	// token (as OpenAI).
	MaxTopLogprobs = 20
	// MaxLogitBias is the most entries of logit_bias (as OpenAI).
	MaxLogitBias = 300
	// MaxImageBytes caps all images' data: URLs together; with MaxTextBytes
	// it stays below the gateway's 4 MiB body and inside the job protocol's
	// prompt frame.
	MaxImageBytes = 3 << 20
	// MaxImages caps the images of one request.
	MaxImages = 32
	// MaxEmbedInputs caps the inputs of one embeddings request (as OpenAI).
	MaxEmbedInputs = 2048
)

// Serves reports what of req the model does not offer, as a *FieldError
// naming the request's field (nil: the model serves all of it). It is the
// rule for what reaches a backend: the client selects only workers whose
// ads say they serve req, the worker checks again, and every backend's
// Generate applies it, so that no upstream is sent a field it did not
// declare and no request is answered as if it had asked for less.
func (m Model) Serves(req Request) error {
	lacks := func(field, what string) error {
		return &FieldError{Field: field, Msg: fmt.Sprintf("model %q does not offer %s", truncate(m.ID), what)}
	}
	if req.Format != nil && !m.StructuredOutput {
		return ErrNoStructuredOutput
	}
	if !m.Tools {
		if len(req.Tools) > 0 {
			return lacks("tools", "tool calls")
		}
		if req.ToolChoice.Mode != "" && req.ToolChoice.Mode != ToolChoiceNone {
			return lacks("tool_choice", "tool calls")
		}
	}
	if req.Logprobs && !m.Logprobs {
		return lacks("logprobs", "logprobs")
	}
	if len(req.LogitBias) > 0 && !m.LogitBias {
		return lacks("logit_bias", "logit_bias")
	}
	for i, msg := range req.Messages {
		if !m.Tools && len(msg.ToolCalls) > 0 {
			return lacks(fmt.Sprintf("messages[%d].tool_calls", i), "tool calls")
		}
		if !m.Tools && msg.Role == "tool" {
			return lacks(fmt.Sprintf("messages[%d].role", i), "tool calls (a tool message answers one)")
		}
		if !m.Images && len(msg.Images) > 0 {
			return lacks(fmt.Sprintf("messages[%d].content", i), "image input (image_url parts)")
		}
	}
	return nil
}

// ServesEmbeddings reports whether the model serves embeddings, as Serves.
func (m Model) ServesEmbeddings() error {
	if !m.Embeddings {
		return &FieldError{Field: "model", Msg: fmt.Sprintf("model %q does not offer embeddings", truncate(m.ID))}
	}
	return nil
}

// checkTools holds the tool fields to their limits.
func (req Request) checkTools() error {
	bad := func(field, format string, args ...any) error {
		return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	if len(req.Tools) > MaxTools {
		return bad("tools", "%d tools, at most %d", len(req.Tools), MaxTools)
	}
	size := 0
	seen := map[string]bool{}
	for i, t := range req.Tools {
		f := fmt.Sprintf("tools[%d].function", i)
		if !ToolName(t.Name) {
			return bad(f+".name", "%q is not [a-zA-Z0-9_-]{1,64}", truncate(t.Name))
		}
		if seen[t.Name] {
			return bad(f+".name", "%q given twice", t.Name)
		}
		seen[t.Name] = true
		if len(t.Description) > MaxToolDescriptionBytes {
			return bad(f+".description", "%d bytes, at most %d", len(t.Description), MaxToolDescriptionBytes)
		}
		if err := checkText(t.Description); err != nil {
			return bad(f+".description", "%v", err)
		}
		if len(t.Parameters) > MaxSchemaBytes {
			return bad(f+".parameters", "%d bytes, at most %d", len(t.Parameters), MaxSchemaBytes)
		}
		if len(t.Parameters) > 0 {
			if err := checkSchema(f+".parameters", t.Parameters); err != nil {
				return err
			}
		}
		size += len(t.Name) + len(t.Description) + len(t.Parameters)
		if size > MaxToolBytes {
			return bad("tools", "over %d bytes", MaxToolBytes)
		}
	}
	if size > MaxToolBytes {
		return bad("tools", "%d bytes, at most %d", size, MaxToolBytes)
	}
	switch c := req.ToolChoice; c.Mode {
	case "", ToolChoiceAuto, ToolChoiceNone, ToolChoiceRequired:
		if c.Name != "" {
			return bad("tool_choice", "a function named with mode %q", c.Mode)
		}
		if (c.Mode == ToolChoiceAuto || c.Mode == ToolChoiceRequired) && len(req.Tools) == 0 {
			return bad("tool_choice", "%q without tools", c.Mode)
		}
	case ToolChoiceFunction:
		if !seen[c.Name] {
			return bad("tool_choice.function.name", "%q is not one of the tools", truncate(c.Name))
		}
	default:
		return bad("tool_choice", "%q is not none, auto, required or a function", truncate(c.Mode))
	}
	return nil
}

// MaxTools bounds a request's tools (OpenAI's own limit).
const MaxTools = 128

// ToolName reports whether s is an OpenAI function name: [a-zA-Z0-9_-]{1,64}.
func ToolName(s string) bool {
	return len(s) > 0 && len(s) <= 64 && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-')
	}) < 0
}

// checkMessageExtras holds message i's tool calls, tool call id and
// images to their limits; it returns the text bytes they add and the image
// bytes.
func checkMessageExtras(i int, m Message) (text, image int, err error) {
	bad := func(field, format string, args ...any) error {
		return &FieldError{Field: fmt.Sprintf("messages[%d].%s", i, field), Msg: fmt.Sprintf(format, args...)}
	}
	if len(m.ToolCalls) > 0 && m.Role != "assistant" {
		return 0, 0, bad("tool_calls", "given on a %s message; only an assistant message makes calls", m.Role)
	}
	if len(m.ToolCalls) > MaxToolCalls {
		return 0, 0, bad("tool_calls", "%d calls, at most %d", len(m.ToolCalls), MaxToolCalls)
	}
	for j, c := range m.ToolCalls {
		f := fmt.Sprintf("tool_calls[%d]", j)
		switch {
		case c.ID == "" || len(c.ID) > MaxToolCallIDBytes:
			return 0, 0, bad(f+".id", "must be 1 to %d bytes", MaxToolCallIDBytes)
		case !ToolName(c.Name):
			return 0, 0, bad(f+".function.name", "%q is not [a-zA-Z0-9_-]{1,64}", truncate(c.Name))
		case !json.Valid([]byte(c.Arguments)):
			return 0, 0, bad(f+".function.arguments", "not JSON")
		}
		if err := checkText(c.ID); err != nil {
			return 0, 0, bad(f+".id", "%v", err)
		}
		if err := checkText(c.Arguments); err != nil {
			return 0, 0, bad(f+".function.arguments", "%v", err)
		}
		text += len(c.ID) + len(c.Name) + len(c.Arguments)
	}
	switch {
	case m.Role == "tool" && (m.ToolCallID == "" || len(m.ToolCallID) > MaxToolCallIDBytes):
		return 0, 0, bad("tool_call_id", "a tool message needs the id of the call it answers, 1 to %d bytes", MaxToolCallIDBytes)
	case m.Role != "tool" && m.ToolCallID != "":
		return 0, 0, bad("tool_call_id", "given on a %s message; only a tool message answers a call", m.Role)
	}
	if err := checkText(m.ToolCallID); err != nil {
		return 0, 0, bad("tool_call_id", "%v", err)
	}
	text += len(m.ToolCallID)
	if len(m.Images) > 0 && m.Role != "user" {
		return 0, 0, bad("content", "images in a %s message; only a user message holds images", m.Role)
	}
	last := 0
	for j, im := range m.Images {
		f := fmt.Sprintf("content.images[%d]", j)
		if !strings.HasPrefix(im.URL, "data:image/") || !strings.Contains(im.URL, ";base64,") {
			return 0, 0, bad(f, "not a data:image/...;base64 URL")
		}
		if err := checkText(im.URL); err != nil {
			return 0, 0, bad(f, "%v", err)
		}
		switch im.Detail {
		case "", "auto", "low", "high":
		default:
			return 0, 0, bad(f+".detail", "%q is not auto, low or high", truncate(im.Detail))
		}
		if im.At < last || im.At > len(m.Content) {
			return 0, 0, bad(f, "offset %d outside the content or before the previous image", im.At)
		}
		last = im.At
		image += len(im.URL)
	}
	return text, image, nil
}
