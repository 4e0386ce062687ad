package openaiapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// The allow-list: every key the decoders let through, per JSON object, and
// what becomes of it. A request is never answered as if it had asked for
// less, so a key is one of
//
//   - honoured: decoded into the request and acted on; its value is checked
//     where the request is converted (Runtime);
//   - inert: it changes no answer ("user", an end-user id for abuse
//     monitoring), so it is accepted; only its type is checked;
//   - refused: not implemented; accepted only with a neutral value, one that
//     asks for nothing beyond the default and so is honoured trivially (null,
//     false, 0, [] or {}, which SDKs send as defaults), refused by name with
//     code unsupported_parameter otherwise.
//
// A key in no table is refused by name with code unknown_parameter. The
// package doc lists the tables in words; implementing a feature moves its
// keys from refused to honoured here and there (tools, tool calls, images,
// logprobs, penalties and logit_bias moved so). A value of an honoured
// key is checked by runtime.Request.Check after conversion, and a model
// that does not declare what it asks for refuses it by name
// (runtime.Model.Serves), so honouring a key here promises nothing a
// backend cannot keep.

// use is what the decoders do with a key.
type use uint8

const (
	honoured use = iota
	inert
	refused
)

// rule is one key's entry in a table.
type rule struct {
	use     use
	ok      func(any) bool // inert and refused: the values accepted besides null (JSON decoded with UseNumber)
	accepts string         // those values (null included), in words
}

// fields is the table of one JSON object: its keys and their rules.
type fields map[string]rule

var (
	take = rule{use: honoured}
	// user: an end-user id for OpenAI's abuse monitoring, and its successor
	// safety_identifier; prompt_cache_key: a hint for OpenAI's prompt cache.
	// None changes what is generated.
	anyString = rule{inert, is(func(string) bool { return true }), "a string or null"}

	onlyNull = rule{refused, func(any) bool { return false }, "null"}
	noList   = rule{refused, is(func(a []any) bool { return len(a) == 0 }), "[] or null"}
	noObject = rule{refused, is(func(m map[string]any) bool { return len(m) == 0 }), "{} or null"}
	noText   = rule{refused, is(func(s string) bool { return s == "" }), `"" or null`}
	noFlag   = rule{refused, is(func(b bool) bool { return !b }), "false or null"}
	noTool   = rule{refused, oneOf("none", "auto"), `"none", "auto" or null (no tool can be called)`}
	textOnly = rule{refused, is(func(a []any) bool { return !slices.ContainsFunc(a, not(oneOf("text"))) }), `["text"], [] or null`}
)

// chatFields is POST /v1/chat/completions.
var chatFields = fields{
	"model":                 take,
	"messages":              take, // messageFields
	"max_tokens":            take,
	"max_completion_tokens": take,
	"temperature":           take,
	"top_p":                 take,
	"stop":                  take,
	"seed":                  take,
	"n":                     take, // 1 only
	"stream":                take,
	"stream_options":        take, // streamOptionFields
	"response_format":       take, // responseFormatFields; "text", "json_object" or "json_schema"
	// vLLM's extensions, which the openai backend sends to resume a generation.
	"continue_final_message": take,
	"add_generation_prompt":  take, // false only with continue_final_message

	"user":              anyString,
	"safety_identifier": anyString,
	"prompt_cache_key":  anyString,

	// Tools: a model that does not declare them refuses the request
	// (runtime.Model.Serves), naming the field.
	"tools":               take, // toolFields; type "function" only
	"tool_choice":         take, // "none", "auto", "required" or toolChoiceFields
	"parallel_tool_calls": take, // false: at most one call
	"logprobs":            take,
	"top_logprobs":        take,
	"presence_penalty":    take,
	"frequency_penalty":   take,
	"logit_bias":          take, // token ids in decimal → biases
	// The legacy forms of tools, replaced by tools and tool_choice.
	"functions":          noList,
	"function_call":      noTool,
	"store":              noFlag,
	"metadata":           noObject, // tags a stored completion; none is stored
	"modalities":         textOnly,
	"audio":              onlyNull,
	"prediction":         onlyNull,
	"reasoning_effort":   onlyNull,
	"verbosity":          onlyNull,
	"service_tier":       {refused, oneOf("auto", "default"), `"auto", "default" or null`},
	"web_search_options": onlyNull, // even {} turns the search on
}

// completionFields is POST /v1/completions.
var completionFields = fields{
	"model":          take,
	"prompt":         take,
	"max_tokens":     take,
	"temperature":    take,
	"top_p":          take,
	"stop":           take,
	"seed":           take,
	"n":              take, // 1 only
	"stream":         take,
	"stream_options": take, // streamOptionFields

	"user": anyString,

	"echo":     noFlag,
	"best_of":  {refused, number(1), "1 or null"},
	"suffix":   noText,
	"logprobs": onlyNull, // 0 still asks for the sampled tokens' logprobs

	"presence_penalty":  take,
	"frequency_penalty": take,
	"logit_bias":        take,
}

// embeddingFields is POST /v1/embeddings.
var embeddingFields = fields{
	"model":           take,
	"input":           take, // a string or an array of strings; token arrays refused
	"encoding_format": take, // "float" or "base64"
	"user":            anyString,
	"dimensions":      onlyNull, // no served model shortens its vectors
}

// streamOptionFields is "stream_options" of either endpoint.
var streamOptionFields = fields{
	"include_usage": take,
	// vLLM's usage in every chunk: the openai backend asks an upstream for it,
	// but this handler sends the usage only in the last chunk.
	"continuous_usage_stats": noFlag,
	"include_obfuscation":    noFlag, // OpenAI's padding of chunks
}

// responseFormatFields is "response_format" of a chat request.
var responseFormatFields = fields{
	"type":        take,
	"json_schema": take, // jsonSchemaFields
}

// jsonSchemaFields is "response_format.json_schema". The description guides
// an upstream model's answer, which the embedded engine cannot follow.
var jsonSchemaFields = fields{
	"name":        take,
	"schema":      take,
	"strict":      take,
	"description": noText,
}

// toolFields is one entry of "tools"; functionFields its function.
var (
	toolFields = fields{
		"type":     take, // "function" only
		"function": take,
	}
	functionFields = fields{
		"name":        take,
		"description": take,
		"parameters":  take, // a JSON Schema runtime/grammar converts
		"strict":      take,
	}
)

// toolChoiceFields is "tool_choice" as an object, naming a function.
var (
	toolChoiceFields = fields{
		"type":     take, // "function" only
		"function": take,
	}
	toolChoiceFunctionFields = fields{"name": take}
)

// messageFields is one message of a chat request. The prompt holds a
// message's role, content (text and images), the calls an assistant made
// and the id a tool result answers; anything else it says is refused.
var messageFields = fields{
	"role":          take,
	"content":       take, // a string, null, or parts (textPartFields, imagePartFields)
	"tool_calls":    take, // toolCallFields
	"tool_call_id":  take, // a tool message's
	"name":          noText,
	"function_call": onlyNull,
	"refusal":       noText,
	"audio":         onlyNull,
	"annotations":   noList,
}

// toolCallFields is one of an assistant message's tool_calls;
// toolCallFunctionFields its function.
var (
	toolCallFields = fields{
		"id":       take,
		"type":     take, // "function" only
		"function": take,
		// The openai npm SDK's stream helper leaves a streamed call's index
		// in the message it assembles, which clients send back.
		"index": {inert, is(func(json.Number) bool { return true }), "a number or null"},
	}
	toolCallFunctionFields = fields{
		"name":      take,
		"arguments": take, // a string holding JSON
	}
)

// The content parts: "text", and "image_url" with an inline image (a data:
// URL; workers fetch nothing from the internet). Other types (input_audio,
// file, ...) are refused.
var (
	textPartFields  = fields{"type": take, "text": take}
	imagePartFields = fields{"type": take, "image_url": take}
	imageURLFields  = fields{"url": take, "detail": take}
)

// maxNameBytes caps an unknown key as the refusal names it.
const maxNameBytes = 64

// check refuses by name the key of obj that fs does not let through, the
// least in sorted order if there are several. prefix names the object
// ("messages[0]."); it is called only for a refusal.
func (fs fields) check(obj map[string]any, prefix func() string) error {
	bad, found := "", false
	for k, v := range obj {
		if r, ok := fs[k]; ok && (r.use == honoured || v == nil || r.ok(v)) {
			continue
		}
		if !found || k < bad {
			bad, found = k, true
		}
	}
	if !found {
		return nil
	}
	name := bad
	if prefix != nil {
		name = prefix() + bad
	}
	r, ok := fs[bad]
	switch {
	case !ok:
		if len(name) > maxNameBytes { // a stranger's key, echoed back
			name = strings.ToValidUTF8(name[:maxNameBytes], "") + "…"
		}
		return refuse(name, "unknown_parameter", "%q is not a parameter this network knows: refused rather than ignored", name)
	case r.use == inert:
		return badRequest(name, "%s must be %s", name, r.accepts)
	default:
		return refuse(name, "unsupported_parameter",
			"%q is not supported by this network yet: refused rather than ignored (accepted only as %s)", name, r.accepts)
	}
}

func refuse(param, code, format string, args ...any) *Error {
	return &Error{Status: http.StatusBadRequest, Type: "invalid_request_error", Param: param, Code: code,
		Message: fmt.Sprintf(format, args...)}
}

// object decodes body as the tables see it; ok is false if it is not one
// JSON object, which the typed decoder then reports. Numbers stay text, so
// that one too large for a float64 is judged, not an error.
func object(body []byte) (obj map[string]any, ok bool) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	return obj, dec.Decode(&obj) == nil
}

// checkChatFields applies the tables to a chat request body. It judges only
// what has the right shape; the typed decoder says what is wrong with the
// rest.
func checkChatFields(body []byte) error {
	obj, ok := object(body)
	if !ok {
		return nil
	}
	if err := chatFields.check(obj, nil); err != nil {
		return err
	}
	if err := checkStreamOptions(obj); err != nil {
		return err
	}
	if rf, ok := obj["response_format"].(map[string]any); ok {
		if err := responseFormatFields.check(rf, func() string { return "response_format." }); err != nil {
			return err
		}
		if js, ok := rf["json_schema"].(map[string]any); ok {
			if err := jsonSchemaFields.check(js, func() string { return "response_format.json_schema." }); err != nil {
				return err
			}
		}
	}
	if err := checkTools(obj); err != nil {
		return err
	}
	msgs, _ := obj["messages"].([]any)
	for i, m := range msgs {
		mo, ok := m.(map[string]any)
		if !ok {
			continue
		}
		if err := checkMessage(i, mo); err != nil {
			return err
		}
	}
	return nil
}

// checkFunctionObject applies outer to o, an object {"type": "function",
// "function": {...}} (a tool, or a message's tool call), and inner to its
// function; prefix names o.
func checkFunctionObject(o map[string]any, prefix func() string, outer, inner fields) error {
	if err := functionType(o, prefix()+"type"); err != nil {
		return err
	}
	if err := outer.check(o, prefix); err != nil {
		return err
	}
	if fo, ok := o["function"].(map[string]any); ok {
		return inner.check(fo, func() string { return prefix() + "function." })
	}
	return nil
}

// checkTools applies the tables to tools and tool_choice.
func checkTools(obj map[string]any) error {
	tools, _ := obj["tools"].([]any)
	for i, t := range tools {
		to, ok := t.(map[string]any)
		if !ok {
			continue
		}
		prefix := func() string { return fmt.Sprintf("tools[%d].", i) }
		if err := checkFunctionObject(to, prefix, toolFields, functionFields); err != nil {
			return err
		}
	}
	switch c := obj["tool_choice"].(type) {
	case string:
		switch c {
		case "none", "auto", "required":
		default:
			return refuse("tool_choice", "unsupported_value",
				`tool_choice %.32q is not supported: refused rather than ignored ("none", "auto", "required" or {"type":"function","function":{"name":...}})`, c)
		}
	case map[string]any:
		if err := functionType(c, "tool_choice.type"); err != nil {
			return err
		}
		if err := toolChoiceFields.check(c, func() string { return "tool_choice." }); err != nil {
			return err
		}
		if fo, ok := c["function"].(map[string]any); ok {
			return toolChoiceFunctionFields.check(fo, func() string { return "tool_choice.function." })
		}
	}
	return nil
}

// functionType refuses an object (a tool, a tool choice, a tool call)
// whose "type" is not "function", naming param.
func functionType(obj map[string]any, param string) error {
	switch typ, _ := obj["type"].(string); typ {
	case "function":
		return nil
	case "":
		return badRequest(param, `%s must be "function"`, param)
	default:
		return refuse(param, "unsupported_value",
			"%s %.32q is not supported by this network: refused rather than ignored (only \"function\" is)", param, typ)
	}
}

// checkMessage applies the tables to message i.
func checkMessage(i int, mo map[string]any) error {
	prefix := func() string { return fmt.Sprintf("messages[%d].", i) }
	if err := messageFields.check(mo, prefix); err != nil {
		return err
	}
	calls, _ := mo["tool_calls"].([]any)
	for j, c := range calls {
		co, ok := c.(map[string]any)
		if !ok {
			continue
		}
		cp := func() string { return fmt.Sprintf("%stool_calls[%d].", prefix(), j) }
		if err := checkFunctionObject(co, cp, toolCallFields, toolCallFunctionFields); err != nil {
			return err
		}
	}
	parts, _ := mo["content"].([]any) // else a string or null
	for j, p := range parts {
		po, ok := p.(map[string]any)
		if !ok {
			continue
		}
		pp := func() string { return fmt.Sprintf("%scontent[%d].", prefix(), j) }
		switch typ, _ := po["type"].(string); typ {
		case "text":
			if err := textPartFields.check(po, pp); err != nil {
				return err
			}
		case "image_url":
			if err := imagePartFields.check(po, pp); err != nil {
				return err
			}
			io, ok := po["image_url"].(map[string]any)
			if !ok {
				return badRequest(pp()+"image_url", `%simage_url must be {"url": "data:image/...;base64,...", "detail": ...}`, pp())
			}
			ip := func() string { return pp() + "image_url." }
			if err := imageURLFields.check(io, ip); err != nil {
				return err
			}
			if err := imageURL(io["url"], ip()+"url"); err != nil {
				return err
			}
		case "":
			return badRequest(pp()+"type", `%stype must be "text" or "image_url"`, pp())
		default:
			return refuse(pp()+"type", "unsupported_value",
				"%stype %.32q is not supported by this network yet: refused rather than ignored (only \"text\" and \"image_url\" parts are)", pp(), typ)
		}
	}
	return nil
}

// imageURL refuses an image that is not inline: a worker fetches nothing
// from the internet, so an http(s) URL could not be honoured.
func imageURL(v any, param string) error {
	u, _ := v.(string)
	lower := strings.ToLower(u[:min(len(u), 16)])
	switch {
	case strings.HasPrefix(lower, "http://") || strings.HasPrefix(lower, "https://"):
		return refuse(param, "unsupported_value",
			"%s: send the image inline as a data: URL (data:image/png;base64,...): workers fetch nothing from the internet, so an http(s) URL is refused rather than ignored", param)
	case !strings.HasPrefix(lower, "data:image/") || !strings.Contains(u, ";base64,"):
		return badRequest(param, "%s must be a data:image/...;base64,... URL", param)
	}
	return nil
}

// checkCompletionFields applies the tables to a completion request body, as
// checkChatFields.
func checkCompletionFields(body []byte) error {
	obj, ok := object(body)
	if !ok {
		return nil
	}
	if err := completionFields.check(obj, nil); err != nil {
		return err
	}
	return checkStreamOptions(obj)
}

// checkEmbeddingFields applies the table to an embeddings request body, and
// refuses input as token ids (numbers, or arrays of them) by name.
func checkEmbeddingFields(body []byte) error {
	obj, ok := object(body)
	if !ok {
		return nil
	}
	if err := embeddingFields.check(obj, nil); err != nil {
		return err
	}
	in, _ := obj["input"].([]any)
	for i, v := range in {
		switch v.(type) {
		case string:
		case json.Number, []any:
			return refuse("input", "unsupported_value",
				"input holds token ids (input[%d]): only text is supported: refused rather than ignored", i)
		default:
			return badRequest(fmt.Sprintf("input[%d]", i), "input[%d] must be a string", i)
		}
	}
	return nil
}

func checkStreamOptions(obj map[string]any) error {
	so, ok := obj["stream_options"].(map[string]any)
	if !ok {
		return nil
	}
	return streamOptionFields.check(so, func() string { return "stream_options." })
}

// is accepts the values of type T for which pred holds.
func is[T any](pred func(T) bool) func(any) bool {
	return func(v any) bool {
		t, ok := v.(T)
		return ok && pred(t)
	}
}

func oneOf(values ...string) func(any) bool {
	return is(func(s string) bool { return slices.Contains(values, s) })
}

// number accepts the numbers equal to n, however written (0, 0.0, -0, 0e9).
func number(n float64) func(any) bool {
	return is(func(v json.Number) bool {
		f, err := strconv.ParseFloat(string(v), 64)
		return err == nil && f == n
	})
}

func not(pred func(any) bool) func(any) bool {
	return func(v any) bool { return !pred(v) }
}
