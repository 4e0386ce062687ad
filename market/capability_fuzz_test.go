package market

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/cocoon-network/cocoon/market/pb"
	"github.com/cocoon-network/cocoon/runtime"
)

// TestChunksOfLongLogprobsFitFrame: 64 logprobs (one chunk's worth) of
// 100-byte tokens, each with 20 alternatives, are legal (checkChunk takes
// tokens of up to 256 bytes and 20 alternatives), but chunksOf splits
// logprobs by count alone: the chunk is 290310 bytes, over MaxWorkerFrame,
// and the client drops the worker for a protocol violation.
func TestChunksOfLongLogprobsFitFrame(t *testing.T) {
	d := fuzzDelta("", "", "", 0, 0, 64, 100, 20, 1)
	for i, c := range chunksOf(d, 1) {
		if err := checkChunk(c); err != nil {
			t.Fatalf("chunk %d: %v", i, err)
		}
		if n := proto.Size(&pb.Frame{Msg: &pb.Frame_Chunk{Chunk: c}}); n > MaxWorkerFrame {
			t.Errorf("chunk %d: %d bytes framed, over MaxWorkerFrame %d", i, n, MaxWorkerFrame)
		}
	}
}

// fuzzDelta builds a delta from fuzzed contents: text, refusal and each
// call's arguments are the fuzzer's strings (made valid UTF-8, as every
// backend's are) repeated up to 64 KiB, so that they cross chunk
// boundaries; calls and logprobs are counted, and a logprob's token is
// tokLen bytes with nTop alternatives.
func fuzzDelta(text, refusal, args string, rep uint16, nCalls uint8, nLps uint16, tokLen, nTop uint8, tokens uint16) runtime.Delta {
	grow := func(s string) string {
		s = strings.ToValidUTF8(s, "?")
		if s == "" {
			return ""
		}
		n := min(1+int(rep), (64<<10)/len(s))
		return strings.Repeat(s, max(n, 1))
	}
	d := runtime.Delta{Text: grow(text), Refusal: grow(refusal), Tokens: int(tokens)}
	for i := range int(nCalls % 5) {
		d.ToolCalls = append(d.ToolCalls, runtime.ToolCallDelta{Index: i, ID: fmt.Sprintf("call_%d", i), Name: fmt.Sprintf("fn_%d", i), Arguments: grow(args)})
	}
	tok := strings.Repeat("t", int(tokLen))
	for i := range int(nLps % 300) {
		lp := runtime.TokenLogprob{Token: tok, Logprob: -float64(i) / 3}
		if tok != "" {
			lp.Bytes = []byte(tok)
		}
		for j := range int(nTop) % (runtime.MaxTopLogprobs + 1) {
			lp.Top = append(lp.Top, runtime.TopLogprob{Token: tok, Logprob: -float64(i+j) / 3, Bytes: lp.Bytes})
		}
		d.Logprobs = append(d.Logprobs, lp)
	}
	return d
}

// FuzzChunksOf: whatever a backend's delta holds, chunksOf's chunks each
// pass the client's checks and fit MaxWorkerFrame on the wire, only the
// last carries the delta's tokens (the others carry content), and what the
// client rebuilds from them (deltaFromPB after the wire) adds up to the
// delta: its text, its refusal, each call's id, name and arguments, its
// logprobs in order.
func FuzzChunksOf(f *testing.F) {
	f.Add("once upon a time", "", "", uint16(0), uint8(0), uint16(0), uint8(0), uint8(0), uint16(4), uint32(10))
	f.Add("é", "", `{"q":"ü"}`, uint16(20000), uint8(2), uint16(70), uint8(3), uint8(2), uint16(9), uint32(0))
	f.Add("", "I can't", "", uint16(9000), uint8(0), uint16(0), uint8(0), uint8(0), uint16(0), uint32(5))
	f.Add("", "", "", uint16(0), uint8(1), uint16(0), uint8(0), uint8(0), uint16(1), uint32(1))
	f.Add("", "", "", uint16(0), uint8(0), uint16(0), uint8(0), uint8(0), uint16(3), uint32(3)) // tokens alone
	f.Add("a€", "no", "{}", uint16(30000), uint8(4), uint16(299), uint8(16), uint8(5), uint16(500), uint32(1<<20))
	f.Fuzz(func(t *testing.T, text, refusal, args string, rep uint16, nCalls uint8, nLps uint16, tokLen, nTop uint8, tokens uint16, prev uint32) {
		// Tokens of up to 255 bytes (the wire allows 256), logprobs grouped
		// by bytes as well as count (TestChunksOfLongLogprobsFitFrame).
		d := fuzzDelta(text, refusal, args, rep, nCalls, nLps, tokLen, nTop, tokens)
		prev %= 1 << 24
		next := prev + uint32(d.Tokens)
		chunks := chunksOf(d, next)
		if len(chunks) == 0 {
			t.Fatal("no chunk")
		}
		var got []runtime.Delta
		for i, c := range chunks {
			b, err := proto.Marshal(&pb.Frame{Msg: &pb.Frame_Chunk{Chunk: c}})
			if err != nil {
				t.Fatalf("chunk %d: marshal: %v", i, err)
			}
			if len(b) > MaxWorkerFrame {
				t.Fatalf("chunk %d of %d: %d bytes framed, over MaxWorkerFrame %d (%d text, %d refusal, %d calls, %d logprobs of %d-byte tokens with %d top)",
					i, len(chunks), len(b), MaxWorkerFrame, len(c.GetDelta()), len(c.GetRefusal()), len(c.GetToolCalls()), len(c.GetLogprobs()), len(tokLenOf(d)), nTopOf(d))
			}
			fr, err := decodeChecked(b, new(pb.Frame), checkWorkerFrame)
			if err != nil {
				t.Fatalf("chunk %d of %d: the client's check: %v", i, len(chunks), err)
			}
			m := fr.GetChunk()
			want := next - uint32(d.Tokens)
			if i == len(chunks)-1 {
				want = next
			}
			if m.GetTokensSoFar() != want {
				t.Fatalf("chunk %d of %d: tokens_so_far %d; want %d", i, len(chunks), m.GetTokensSoFar(), want)
			}
			if (i < len(chunks)-1 || d.Tokens == 0) && !chunkHasContent(m) && len(chunks) > 1 {
				t.Fatalf("chunk %d of %d carries neither tokens nor content", i, len(chunks))
			}
			calls, lps := deltaFromPB(m)
			got = append(got, runtime.Delta{Text: m.GetDelta(), Refusal: m.GetRefusal(), ToolCalls: calls, Logprobs: lps})
		}
		g, w := foldDeltas(got), foldDeltas([]runtime.Delta{d})
		w.tokens, g.tokens = 0, 0
		if !reflect.DeepEqual(g, w) {
			t.Fatalf("%d chunks rebuild to a different delta: text %d/%d bytes, refusal %d/%d, calls %d/%d, logprobs %d/%d",
				len(chunks), len(g.text), len(w.text), len(g.refusal), len(w.refusal), len(g.calls), len(w.calls), len(g.logprobs), len(w.logprobs))
		}
	})
}

func tokLenOf(d runtime.Delta) string {
	if len(d.Logprobs) == 0 {
		return ""
	}
	return d.Logprobs[0].Token
}

func nTopOf(d runtime.Delta) int {
	if len(d.Logprobs) == 0 {
		return 0
	}
	return len(d.Logprobs[0].Top)
}

// deltaSum is what deltas add up to for a caller: calls assembled per index.
type deltaSum struct {
	text, refusal string
	tokens        int
	calls         map[int]runtime.ToolCall
	logprobs      []runtime.TokenLogprob
}

func foldDeltas(ds []runtime.Delta) deltaSum {
	s := deltaSum{calls: map[int]runtime.ToolCall{}}
	for _, d := range ds {
		s.text += d.Text
		s.refusal += d.Refusal
		s.tokens += d.Tokens
		for _, c := range d.ToolCalls {
			call := s.calls[c.Index]
			call.ID += c.ID
			call.Name += c.Name
			call.Arguments += c.Arguments
			s.calls[c.Index] = call
		}
		s.logprobs = append(s.logprobs, d.Logprobs...)
	}
	return s
}
