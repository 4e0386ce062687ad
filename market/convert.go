package market

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/cocoon-network/cocoon/market/pb"
	"github.com/cocoon-network/cocoon/runtime"
)

// The job protocol carries every field of a runtime.Request, typed: what
// the worker needs to decide and price a job travels in Open's Params, the
// input (messages with their tool calls, tool results and images; a raw
// prompt; an embeddings job's inputs) in the Prompt, after the client has
// checked the worker's attestation. The worker rebuilds the runtime.Request
// and applies runtime.Request.Check and the model's Serves before its
// backend sees anything. The decoders here check only what the conversion
// needs (sizes, counts, finite numbers); the field-by-field rules are
// runtime's.

// Limits of the conversions beyond runtime's own.
const (
	maxToolChoice   = 16
	maxToolNameLen  = 64
	maxLogprobChunk = 64       // logprob entries in one Chunk
	maxLogprobBytes = 64 << 10 // their encoded size (one entry of the largest size passes alone)
	// maxEmbeddingDims bounds an embedding vector (so that one fits a
	// worker frame).
	maxEmbeddingDims = 16 << 10
)

// paramsToPB carries req's parameters (no input) in an Open.
func paramsToPB(r runtime.Request) *pb.Params {
	p := &pb.Params{
		MaxTokens:        uint32(r.MaxTokens), // the caller checked the range
		Temperature:      r.Temperature,
		TopP:             r.TopP,
		Stop:             r.Stop,
		Seed:             r.Seed,
		Format:           formatToPB(r.Format),
		ToolChoice:       r.ToolChoice.Mode,
		ToolChoiceName:   r.ToolChoice.Name,
		SingleToolCall:   r.SingleToolCall,
		Logprobs:         r.Logprobs,
		TopLogprobs:      uint32(max(r.TopLogprobs, 0)),
		PresencePenalty:  r.PresencePenalty,
		FrequencyPenalty: r.FrequencyPenalty,
	}
	for _, t := range r.Tools {
		p.Tools = append(p.Tools, &pb.Tool{Name: t.Name, Description: t.Description, Parameters: t.Parameters, Strict: t.Strict})
	}
	if len(r.LogitBias) > 0 {
		p.LogitBias = make(map[int32]float64, len(r.LogitBias))
		for k, v := range r.LogitBias {
			p.LogitBias[k] = v
		}
	}
	return p
}

// paramsFromPB rebuilds the parameters of an Open that checkOpen passed.
func paramsFromPB(model string, p *pb.Params) runtime.Request {
	r := runtime.Request{
		Model:            model,
		MaxTokens:        int(p.GetMaxTokens()),
		Temperature:      p.GetTemperature(),
		TopP:             p.GetTopP(),
		Stop:             p.GetStop(),
		Format:           formatFromPB(p.GetFormat()),
		ToolChoice:       runtime.ToolChoice{Mode: p.GetToolChoice(), Name: p.GetToolChoiceName()},
		SingleToolCall:   p.GetSingleToolCall(),
		Logprobs:         p.GetLogprobs(),
		TopLogprobs:      int(p.GetTopLogprobs()),
		PresencePenalty:  p.GetPresencePenalty(),
		FrequencyPenalty: p.GetFrequencyPenalty(),
	}
	if p != nil && p.Seed != nil {
		seed := p.GetSeed()
		r.Seed = &seed
	}
	for _, t := range p.GetTools() {
		r.Tools = append(r.Tools, runtime.Tool{Name: t.GetName(), Description: t.GetDescription(), Parameters: t.GetParameters(), Strict: t.GetStrict()})
	}
	if lb := p.GetLogitBias(); len(lb) > 0 {
		r.LogitBias = make(map[int32]float64, len(lb))
		for k, v := range lb {
			r.LogitBias[k] = v
		}
	}
	return r
}

// checkParams holds an Open's Params to what the conversion needs.
func checkParams(p *pb.Params) error {
	if t := p.GetTemperature(); math.IsNaN(t) || t < 0 || t > 10 {
		return fmt.Errorf("open: temperature %v", t)
	}
	if t := p.GetTopP(); math.IsNaN(t) || t < 0 || t > 1 {
		return fmt.Errorf("open: top_p %v", t)
	}
	if len(p.GetStop()) > maxStops {
		return fmt.Errorf("open: %d stop strings", len(p.GetStop()))
	}
	for _, s := range p.GetStop() {
		if s == "" || len(s) > maxStopLen {
			return fmt.Errorf("open: stop string of %d bytes", len(s))
		}
	}
	if f := p.GetFormat(); f != nil {
		switch {
		case f.GetType() == "" || len(f.GetType()) > maxFormatType:
			return fmt.Errorf("open: response format type of %d bytes", len(f.GetType()))
		case len(f.GetName()) > maxFormatName:
			return fmt.Errorf("open: response format name of %d bytes", len(f.GetName()))
		case len(f.GetSchema()) > maxSchemaLen:
			return fmt.Errorf("open: response format schema of %d bytes", len(f.GetSchema()))
		}
	}
	if n := len(p.GetTools()); n > runtime.MaxTools {
		return fmt.Errorf("open: %d tools", n)
	}
	size := 0
	for _, t := range p.GetTools() {
		if len(t.GetName()) > maxToolNameLen || len(t.GetParameters()) > maxSchemaLen || len(t.GetDescription()) > runtime.MaxToolDescriptionBytes {
			return fmt.Errorf("open: a tool of %d+%d+%d bytes", len(t.GetName()), len(t.GetDescription()), len(t.GetParameters()))
		}
		size += len(t.GetName()) + len(t.GetDescription()) + len(t.GetParameters())
	}
	if size > runtime.MaxToolBytes {
		return fmt.Errorf("open: %d bytes of tools", size)
	}
	if len(p.GetToolChoice()) > maxToolChoice || len(p.GetToolChoiceName()) > maxToolNameLen {
		return errors.New("open: tool choice too long")
	}
	if p.GetTopLogprobs() > runtime.MaxTopLogprobs {
		return fmt.Errorf("open: top_logprobs %d", p.GetTopLogprobs())
	}
	for _, v := range []float64{p.GetPresencePenalty(), p.GetFrequencyPenalty()} {
		if !(v >= -2 && v <= 2) {
			return fmt.Errorf("open: penalty %v", v)
		}
	}
	if len(p.GetLogitBias()) > runtime.MaxLogitBias {
		return fmt.Errorf("open: %d logit_bias entries", len(p.GetLogitBias()))
	}
	for _, v := range p.GetLogitBias() {
		if !(v >= -100 && v <= 100) {
			return fmt.Errorf("open: logit bias %v", v)
		}
	}
	return nil
}

// messagesToPB carries a chat's messages in a Prompt.
func messagesToPB(ms []runtime.Message) []*pb.ChatMessage {
	out := make([]*pb.ChatMessage, 0, len(ms))
	for _, m := range ms {
		pm := &pb.ChatMessage{Role: m.Role, Content: m.Content, ToolCallId: m.ToolCallID}
		for _, c := range m.ToolCalls {
			pm.ToolCalls = append(pm.ToolCalls, &pb.ToolCall{Id: c.ID, Name: c.Name, Arguments: c.Arguments})
		}
		for _, im := range m.Images {
			pm.Images = append(pm.Images, &pb.Image{Url: im.URL, Detail: im.Detail, At: uint32(im.At)}) // At ≤ len(Content), checked
		}
		out = append(out, pm)
	}
	return out
}

// messagesFromPB rebuilds the messages of a Prompt that checkPrompt passed.
func messagesFromPB(ms []*pb.ChatMessage) []runtime.Message {
	out := make([]runtime.Message, 0, len(ms))
	for _, pm := range ms {
		m := runtime.Message{Role: pm.GetRole(), Content: pm.GetContent(), ToolCallID: pm.GetToolCallId()}
		for _, c := range pm.GetToolCalls() {
			m.ToolCalls = append(m.ToolCalls, runtime.ToolCall{ID: c.GetId(), Name: c.GetName(), Arguments: c.GetArguments()})
		}
		for _, im := range pm.GetImages() {
			m.Images = append(m.Images, runtime.Image{URL: im.GetUrl(), Detail: im.GetDetail(), At: int(im.GetAt())})
		}
		out = append(out, m)
	}
	return out
}

// chunksOf turns one delta into the Chunks that carry it, each within
// MaxWorkerFrame: text, a refusal and tool call arguments longer than
// maxChunkText are cut (at a character boundary where there is one within
// a character's length), logprobs are grouped by count and by bytes, and the
// delta's tokens ride on the last chunk, whose tokens_so_far is next. The
// last chunk holds at most maxChunkText of text, as much of refusal and
// maxLogprobBytes of logprobs, well inside a frame.
func chunksOf(d runtime.Delta, next uint32) []*pb.Chunk {
	var out []*pb.Chunk
	text := d.Text
	for len(text) > maxChunkText {
		n := cutAt(text, maxChunkText)
		out = append(out, &pb.Chunk{Delta: text[:n]})
		text = text[n:]
	}
	refusal := d.Refusal
	for len(refusal) > maxChunkText {
		n := cutAt(refusal, maxChunkText)
		out = append(out, &pb.Chunk{Refusal: refusal[:n]})
		refusal = refusal[n:]
	}
	last := &pb.Chunk{Delta: text, Refusal: refusal}
	for _, c := range d.ToolCalls {
		args := c.Arguments
		first := true
		for first || args != "" {
			n := cutAt(args, maxChunkText)
			tc := &pb.ToolCallDelta{Index: uint32(c.Index), Arguments: args[:n]}
			if first {
				tc.Id, tc.Name = c.ID, c.Name
			}
			out = append(out, &pb.Chunk{ToolCalls: []*pb.ToolCallDelta{tc}})
			args, first = args[n:], false
		}
	}
	lps := logprobsToPB(d.Logprobs)
	for len(lps) > 0 {
		n, size := 0, 0
		for n < len(lps) && n < maxLogprobChunk {
			sz := proto.Size(lps[n])
			if n > 0 && size+sz > maxLogprobBytes {
				break
			}
			size += sz
			n++
		}
		if n == len(lps) {
			last.Logprobs = lps
			break
		}
		out = append(out, &pb.Chunk{Logprobs: lps[:n]})
		lps = lps[n:]
	}
	if chunkHasContent(last) || len(out) == 0 {
		out = append(out, last)
	}
	// The tokens go on the last chunk; the pieces before it carry none.
	for _, c := range out {
		c.TokensSoFar = next - uint32(d.Tokens)
	}
	out[len(out)-1].TokensSoFar = next
	return out
}

// cutAt is where to cut s to at most n bytes: n, moved back to the start of
// a character when one starts within the 3 bytes before it (invalid UTF-8
// is cut at n, so the cut always advances).
func cutAt(s string, n int) int {
	if len(s) <= n {
		return len(s)
	}
	for i := n; i > n-utf8.UTFMax && i > 0; i-- {
		if utf8.RuneStart(s[i]) {
			return i
		}
	}
	return n
}

// chunkHasContent: the chunk carries something besides its token count.
func chunkHasContent(m *pb.Chunk) bool {
	return m.GetDelta() != "" || m.GetRefusal() != "" || len(m.GetToolCalls()) > 0 || len(m.GetLogprobs()) > 0
}

func logprobsToPB(lps []runtime.TokenLogprob) []*pb.TokenLogprob {
	if len(lps) == 0 {
		return nil
	}
	out := make([]*pb.TokenLogprob, len(lps))
	for i, l := range lps {
		// A token may be part of a character (its Bytes are exact); the
		// wire's strings are UTF-8.
		t := &pb.TokenLogprob{Token: strings.ToValidUTF8(l.Token, "\uFFFD"), Logprob: l.Logprob, Bytes: l.Bytes}
		for _, tp := range l.Top {
			t.Top = append(t.Top, &pb.TopLogprob{Token: strings.ToValidUTF8(tp.Token, "\uFFFD"), Logprob: tp.Logprob, Bytes: tp.Bytes})
		}
		out[i] = t
	}
	return out
}

// deltaFromPB rebuilds what a Chunk that checkChunk passed carries.
func deltaFromPB(m *pb.Chunk) (calls []runtime.ToolCallDelta, lps []runtime.TokenLogprob) {
	for _, c := range m.GetToolCalls() {
		calls = append(calls, runtime.ToolCallDelta{Index: int(c.GetIndex()), ID: c.GetId(), Name: c.GetName(), Arguments: c.GetArguments()})
	}
	for _, l := range m.GetLogprobs() {
		t := runtime.TokenLogprob{Token: l.GetToken(), Logprob: l.GetLogprob(), Bytes: l.GetBytes()}
		for _, tp := range l.GetTop() {
			t.Top = append(t.Top, runtime.TopLogprob{Token: tp.GetToken(), Logprob: tp.GetLogprob(), Bytes: tp.GetBytes()})
		}
		lps = append(lps, t)
	}
	return calls, lps
}

// checkChunkExtras holds a Chunk's tool calls and logprobs to what the
// caller's answer may hold.
func checkChunkExtras(m *pb.Chunk) error {
	if len(m.GetRefusal()) > maxChunkText {
		return fmt.Errorf("chunk: %d bytes of refusal", len(m.GetRefusal()))
	}
	if len(m.GetToolCalls()) > runtime.MaxToolCalls {
		return fmt.Errorf("chunk: %d tool call pieces", len(m.GetToolCalls()))
	}
	for _, c := range m.GetToolCalls() {
		switch {
		case c.GetIndex() >= runtime.MaxToolCalls:
			return fmt.Errorf("chunk: tool call index %d", c.GetIndex())
		case len(c.GetId()) > runtime.MaxToolCallIDBytes || len(c.GetName()) > maxToolNameLen || len(c.GetArguments()) > maxChunkText:
			return errors.New("chunk: tool call piece too long")
		}
	}
	if len(m.GetLogprobs()) > maxLogprobChunk {
		return fmt.Errorf("chunk: %d logprobs", len(m.GetLogprobs()))
	}
	for _, l := range m.GetLogprobs() {
		if !(l.GetLogprob() <= 0) || len(l.GetTop()) > runtime.MaxTopLogprobs || len(l.GetToken()) > maxStopLen || len(l.GetBytes()) > maxStopLen {
			return errors.New("chunk: bad logprob entry")
		}
		for _, t := range l.GetTop() {
			if !(t.GetLogprob() <= 0) || len(t.GetToken()) > maxStopLen || len(t.GetBytes()) > maxStopLen {
				return errors.New("chunk: bad top logprob entry")
			}
		}
	}
	return nil
}

// vectorToPB encodes an embedding as float32 little-endian.
func vectorToPB(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, f := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
	}
	return b
}

// vectorFromPB decodes an Embedding's vector; dims is the length the
// worker's ad promised.
func vectorFromPB(b []byte, dims int) ([]float32, error) {
	if len(b) != 4*dims {
		return nil, fmt.Errorf("embedding: %d bytes, want %d floats", len(b), dims)
	}
	v := make([]float32, dims)
	for i := range v {
		f := math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
			return nil, errors.New("embedding: not a finite number")
		}
		v[i] = f
	}
	return v, nil
}
