package llamacpp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/grammar"
)

// toolsActive says whether req may answer with a call: it has tools and its
// tool_choice is not "none".
func toolsActive(req runtime.Request) bool {
	return len(req.Tools) > 0 && req.EffectiveToolChoice().Mode != runtime.ToolChoiceNone
}

// checkTools refuses, by field, what the embedded backend does not combine
// with tools: a response format (the text branch of "auto" could not follow
// it) and a continuation (resuming half a call).
func checkTools(req runtime.Request) error {
	if !toolsActive(req) {
		return nil
	}
	if req.Format != nil {
		return &runtime.FieldError{Field: "response_format", Msg: "not offered together with tools (tool_choice none excepted) by the embedded backend"}
	}
	if req.Continuation != "" {
		return &runtime.FieldError{Field: "continuation", Msg: "a generation with tools cannot be resumed by the embedded backend"}
	}
	return nil
}

// toolMessages renders the tool parts of the conversation into plain
// messages every chat template knows (see the package doc): the tools'
// section joins the first system message (or becomes one), an assistant's
// calls are appended to its content as call objects, and a tool result
// becomes a user message naming the call it answers.
func toolMessages(req runtime.Request) []runtime.Message {
	msgs := make([]runtime.Message, 0, len(req.Messages)+1)
	if toolsActive(req) {
		section := toolSection(req.Tools, req.EffectiveToolChoice())
		if len(req.Messages) > 0 && req.Messages[0].Role == "system" {
			first := req.Messages[0]
			first.Content = strings.TrimRight(first.Content, "\n") + "\n\n" + section
			msgs = append(msgs, first)
			req.Messages = req.Messages[1:]
		} else {
			msgs = append(msgs, runtime.Message{Role: "system", Content: section})
		}
	}
	names := map[string]string{} // call id → function name
	for _, msg := range req.Messages {
		switch {
		case len(msg.ToolCalls) > 0:
			var sb strings.Builder
			sb.WriteString(msg.Content)
			for _, c := range msg.ToolCalls {
				names[c.ID] = c.Name
				if sb.Len() > 0 {
					sb.WriteString("\n")
				}
				sb.WriteString(formatCall(c.Name, c.Arguments))
			}
			msgs = append(msgs, runtime.Message{Role: "assistant", Content: sb.String()})
		case msg.Role == "tool":
			head := "Result of call " + strconv.Quote(msg.ToolCallID)
			if name := names[msg.ToolCallID]; name != "" {
				head += " to " + name
			}
			msgs = append(msgs, runtime.Message{Role: "user", Content: head + ":\n" + msg.Content})
		default:
			msgs = append(msgs, msg)
		}
	}
	return msgs
}

// toolSection is the system text that describes the tools and how to call them.
func toolSection(tools []runtime.Tool, choice runtime.ToolChoice) string {
	var sb strings.Builder
	sb.WriteString("You can call these functions:\n")
	for _, t := range tools {
		params := t.Parameters
		if len(params) == 0 {
			params = json.RawMessage(`{"type":"object","properties":{}}`)
		}
		desc, _ := json.Marshal(t.Description)
		fmt.Fprintf(&sb, "\n{\"name\": %q, \"description\": %s, \"parameters\": %s}", t.Name, desc, compactJSON(params))
	}
	sb.WriteString("\n\nTo call a function, answer with only a JSON object: {\"name\": <function name>, \"arguments\": <arguments object>}.")
	switch choice.Mode {
	case runtime.ToolChoiceRequired:
		sb.WriteString(" You must call one of the functions.")
	case runtime.ToolChoiceFunction:
		sb.WriteString(" You must call " + choice.Name + ".")
	default:
		sb.WriteString(" Otherwise answer in plain text.")
	}
	return sb.String()
}

func compactJSON(raw []byte) string {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return string(raw)
	}
	return b.String()
}

// formatCall is a call as the model writes it (and grammar.ToolCall shapes it).
func formatCall(name, args string) string {
	if strings.TrimSpace(args) == "" {
		args = "{}"
	}
	n, _ := json.Marshal(name)
	return `{"name": ` + string(n) + `, "arguments": ` + args + `}`
}

// callGrammar is the GBNF for the tool choice of req, "" for free text.
func callGrammar(req runtime.Request) (string, error) {
	if !toolsActive(req) {
		return "", nil
	}
	choice := req.EffectiveToolChoice()
	var tools []grammar.Tool
	for _, t := range req.Tools {
		if choice.Mode == runtime.ToolChoiceFunction && t.Name != choice.Name {
			continue
		}
		tools = append(tools, grammar.Tool{Name: t.Name, Parameters: t.Parameters})
	}
	g, err := grammar.AnyToolCall(tools)
	if err != nil {
		return "", &runtime.FieldError{Field: "tools", Msg: err.Error()}
	}
	if choice.Mode == runtime.ToolChoiceAuto {
		g = orText(g)
	}
	return g, nil
}

// orText turns a call grammar into one that also allows plain text, which
// is told from a call by its first character: a call starts with "{", text
// never does.
func orText(g string) string {
	name := "call-or-text"
	for strings.Contains(g, name) {
		name += "-x"
	}
	lines := strings.Split(g, "\n")
	for i, l := range lines {
		if rest, ok := strings.CutPrefix(l, "root ::= "); ok {
			lines[i] = name + "-call ::= " + rest
		}
	}
	return strings.Join(lines, "\n") + "\nroot ::= " + name + "-call | " + name + "-text\n" +
		name + "-text ::= [^{] [^\\x00]*\n"
}

// callPrefix parses the head of a call, `{"name": "<name>", "arguments": `
// with any JSON whitespace, and returns the name and where the arguments
// start; ok is false while text does not hold all of the head yet, or
// does not start like a call.
func callPrefix(text string) (name string, argsAt int, ok bool) {
	p := 0
	ws := func() {
		for p < len(text) && strings.IndexByte(" \t\r\n", text[p]) >= 0 {
			p++
		}
	}
	lit := func(s string) bool {
		ws()
		if !strings.HasPrefix(text[p:], s) {
			return false
		}
		p += len(s)
		return true
	}
	if !lit("{") || !lit(`"name"`) || !lit(":") {
		return "", 0, false
	}
	ws()
	if p >= len(text) || text[p] != '"' {
		return "", 0, false
	}
	end := strings.IndexByte(text[p+1:], '"')
	if end < 0 {
		return "", 0, false
	}
	raw := text[p : p+end+2]
	if strings.Contains(raw, `\`) || json.Unmarshal([]byte(raw), &name) != nil || !runtime.ToolName(name) {
		return "", 0, false
	}
	p += end + 2
	if !lit(",") || !lit(`"arguments"`) || !lit(":") {
		return "", 0, false
	}
	ws()
	if p == len(text) { // whitespace may still grow: the arguments start at the first other byte
		return "", 0, false
	}
	return name, p, true
}

// parseCall splits a whole call into its name and arguments (the JSON text
// of the arguments, as written); ok is false unless text is one call.
func parseCall(text string) (name, args string, ok bool) {
	name, at, ok := callPrefix(text)
	if !ok {
		return "", "", false
	}
	rest := strings.TrimRight(text[at:], " \t\r\n")
	rest, closed := strings.CutSuffix(rest, "}")
	args = strings.TrimRight(rest, " \t\r\n")
	if !closed || args == "" || !json.Valid([]byte(args)) {
		return "", "", false
	}
	return name, args, true
}

// argsHoldBack is how many trailing bytes of a call's arguments so far may
// be the end of the call rather than arguments: whitespace, at most one
// "}", whitespace.
func argsHoldBack(s string) int {
	i := len(s)
	for i > 0 && strings.IndexByte(" \t\r\n", s[i-1]) >= 0 {
		i--
	}
	if i > 0 && s[i-1] == '}' {
		i--
		for i > 0 && strings.IndexByte(" \t\r\n", s[i-1]) >= 0 {
			i--
		}
	}
	return len(s) - i
}
