package market

import (
	"bytes"
	"encoding/hex"
	"net"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/libp2p/go-msgio/pbio"

	"google.golang.org/protobuf/proto"

	"github.com/cocoon-network/cocoon/market/pb"
)

// goldenChannel is the address 0:5c5c…5c in user-friendly form.
const goldenChannel = "EQBcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFRo"

type golden struct {
	name string
	msg  proto.Message
	hex  string // deterministic wire form; a change here is a wire format change
}

func goldenFrames() []golden {
	var seed uint64 = 42
	return []golden{
		{"open", &pb.Open{JobId: bytes.Repeat([]byte{0xab}, 16), Model: "stories260K",
			Params:         &pb.Params{MaxTokens: 64, Temperature: 0.7, TopP: 0.9, Stop: []string{"\n\n"}, Seed: &seed},
			MaxPricePrompt: 1_000, MaxPriceCompletion: 3_000, Nonce: []byte{1, 2, 3, 4}},
			"0a10abababababababababababababababab120b73746f726965733236304b1a1a084011666666666666e63f19cdccccccccccec3f22020a0a282a20e80728b817320401020304"},
		// The same Open naming the client's payment channel: field 7 (tag 0x3a),
		// 48 bytes of user-friendly address appended; the rest unchanged.
		{"open-channel", &pb.Open{JobId: bytes.Repeat([]byte{0xab}, 16), Model: "stories260K",
			Params:         &pb.Params{MaxTokens: 64, Temperature: 0.7, TopP: 0.9, Stop: []string{"\n\n"}, Seed: &seed},
			MaxPricePrompt: 1_000, MaxPriceCompletion: 3_000, Nonce: []byte{1, 2, 3, 4}, Channel: goldenChannel},
			"0a10abababababababababababababababab120b73746f726965733236304b1a1a084011666666666666e63f19cdccccccccccec3f22020a0a282a20e80728b8173204010203043a3045514263584678635846786358467863584678635846786358467863584678635846786358467863584678635846526f"},
		// The same Open asking for a response format: Params field 6 (tag
		// 0x32), a ResponseFormat of type, name, schema and strict.
		{"open-format", &pb.Open{JobId: bytes.Repeat([]byte{0xab}, 16), Model: "stories260K",
			Params: &pb.Params{MaxTokens: 64, Temperature: 0.7, TopP: 0.9, Stop: []string{"\n\n"}, Seed: &seed,
				Format: &pb.ResponseFormat{Type: "json_schema", Name: "pt", Schema: []byte(`{"type":"object"}`), Strict: true}},
			MaxPricePrompt: 1_000, MaxPriceCompletion: 3_000, Nonce: []byte{1, 2, 3, 4}},
			"0a10abababababababababababababababab120b73746f726965733236304b1a42084011666666666666e63f19cdccccccccccec3f22020a0a282a32260a0b6a736f6e5f736368656d61120270741a117b2274797065223a226f626a656374227d200120e80728b817320401020304"},
		{"accept", &pb.Accept{PricePrompt: 1_000, PriceCompletion: 3_000, CreditTokens: 64,
			Settlement: &pb.Settlement{WalletAddress: "EQD...", ChannelKey: bytes.Repeat([]byte{7}, 32), MinDeposit: 1_000_000_000}},
			"08e80710b817184022300a064551442e2e2e12200707070707070707070707070707070707070707070707070707070707070707188094ebdc03"},
		{"accept-with-state", &pb.Accept{PricePrompt: 1_000, PriceCompletion: 3_000, CreditTokens: 64, ChannelState: bytes.Repeat([]byte{0x22}, 8)}, "08e80710b81718402a082222222222222222"},
		{"reject", &pb.Reject{Code: pb.RejectCode_REJECT_BUSY}, "0801"},
		{"reject-no-channel", &pb.Reject{Code: pb.RejectCode_REJECT_NO_CHANNEL}, "0804"},
		{"prompt", &pb.Prompt{Messages: []*pb.ChatMessage{{Role: "system", Content: "be brief"}, {Role: "user", Content: "once upon a time"}}, Continuation: " there was"}, "0a120a0673797374656d120862652062726965660a180a047573657212106f6e63652075706f6e20612074696d651a0a20746865726520776173"},
		{"prompt-raw", &pb.Prompt{Prompt: "once upon a time"}, "12106f6e63652075706f6e20612074696d65"},
		{"voucher", &pb.Voucher{Voucher: bytes.Repeat([]byte{0x11}, 64), Cumulative: 123_456, JobId: bytes.Repeat([]byte{0xab}, 16)}, "0a401111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111110c0c4071a10abababababababababababababababab"},
		{"chunk", &pb.Chunk{Delta: " a little girl", TokensSoFar: 7}, "0a0e2061206c6974746c65206769726c1007"},
		{"done", &pb.Done{Usage: &pb.Usage{PromptTokens: 12, CompletionTokens: 40}, FinishReason: "stop", Receipt: []byte("signed")}, "0a04080c1028120473746f701a067369676e6564"},
		{"cancel", &pb.Cancel{Code: pb.CancelCode_CANCEL_NO_PAYMENT}, "0802"},
		// The capabilities: an Open with tools, tool choice, logprobs,
		// penalties and logit_bias (Params fields 7 to 14); an embeddings
		// Open (field 8, no Params); a Prompt whose messages hold an image,
		// a tool call and a tool result; an embeddings Prompt (inputs, field
		// 4); a Chunk with tool call pieces, logprobs and a refusal; an
		// Embedding frame (Frame field 9).
		{"open-tools", &pb.Open{JobId: bytes.Repeat([]byte{0xab}, 16), Model: "stories260K",
			Params: &pb.Params{MaxTokens: 64, Tools: []*pb.Tool{{Name: "lookup", Description: "looks up", Parameters: []byte(`{"type":"object"}`), Strict: true}},
				ToolChoice: "function", ToolChoiceName: "lookup", SingleToolCall: true, Logprobs: true, TopLogprobs: 2,
				PresencePenalty: 0.5, FrequencyPenalty: -1, LogitBias: map[int32]float64{5: 10, 17: -100}},
			MaxPricePrompt: 1_000, MaxPriceCompletion: 3_000},
			"0a10abababababababababababababababab120b73746f726965733236304b1a6f08403a270a066c6f6f6b757012086c6f6f6b732075701a117b2274797065223a226f626a656374227d2001420866756e6374696f6e4a066c6f6f6b757050015801600269000000000000e03f71000000000000f0bf7a0b08051100000000000024407a0b08111100000000000059c020e80728b817"},
		{"open-embed", &pb.Open{JobId: bytes.Repeat([]byte{0xab}, 16), Model: "stories260K", MaxPricePrompt: 1_000, Embed: true}, "0a10abababababababababababababababab120b73746f726965733236304b20e8074001"},
		{"prompt-tools-images", &pb.Prompt{Messages: []*pb.ChatMessage{
			{Role: "user", Content: "what is this?", Images: []*pb.Image{{Url: "data:image/gif;base64,R0lGODlhAQABAAAAACw=", Detail: "low", At: 8}}},
			{Role: "assistant", ToolCalls: []*pb.ToolCall{{Id: "call_0", Name: "lookup", Arguments: `{"q":"gif"}`}}},
			{Role: "tool", Content: `{"a":"a pixel"}`, ToolCallId: "call_0"},
		}}, "0a4a0a0475736572120d7768617420697320746869733f2a330a2a646174613a696d6167652f6769663b6261736536342c52306c474f446c6841514142414141414143773d12036c6f7718080a2a0a09617373697374616e741a1d0a0663616c6c5f3012066c6f6f6b75701a0b7b2271223a22676966227d0a1f0a04746f6f6c120f7b2261223a226120706978656c227d220663616c6c5f30"},
		{"prompt-inputs", &pb.Prompt{Inputs: []string{"the cat", "sat on the mat"}}, "220774686520636174220e736174206f6e20746865206d6174"},
		{"chunk-tools-logprobs", &pb.Chunk{Delta: " ok", TokensSoFar: 9, Refusal: "no",
			ToolCalls: []*pb.ToolCallDelta{{Index: 0, Id: "call_1", Name: "lookup"}, {Index: 0, Arguments: `{"q":`}, {Index: 1, Id: "call_2", Name: "w", Arguments: "{}"}},
			Logprobs:  []*pb.TokenLogprob{{Token: " ok", Logprob: -0.25, Bytes: []byte(" ok"), Top: []*pb.TopLogprob{{Token: " ok", Logprob: -0.25}, {Token: " no", Logprob: -3, Bytes: []byte(" no")}}}}},
			"0a03206f6b10091a10120663616c6c5f311a066c6f6f6b75701a0722057b2271223a1a110801120663616c6c5f321a017722027b7d22380a03206f6b11000000000000d0bf1a03206f6b220e0a03206f6b11000000000000d0bf22130a03206e6f1100000000000008c01a03206e6f2a026e6f"},
		{"frame-embedding", &pb.Frame{Msg: &pb.Frame_Embedding{Embedding: &pb.Embedding{Index: 3, Vector: []byte{0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0}}}}, "4a0c080312080000803f000000c0"},
	}
}

const goldenAdHex = "0a260024080112208139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394102a1880ecce94a134203c2a640a0b73746f726965733236304b12477368613235363a6162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616218800420e80728b817300f38a0062a1e0a0c6c6c616d612d332e312d386218804020d0860328f09309307838e05d32260a1e0a154e5649444941204831303020383047422048424d331080808080c0021008180520013a34080312305a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a425a0a30455144744670457763464145635265356d4c5668324e364330782d5f684a454d375736315f4a4c6e534637347034713212200707070707070707070707070707070707070707070707070707070707070707188094ebdc03"

// goldenAdStructuredHex is goldenAdHex with the first offer's
// structured_output set: field 8 (tag 0x40) = 1 ends that offer, 2 bytes longer.
const goldenAdStructuredHex = "0a260024080112208139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394102a1880ecce94a134203c2a660a0b73746f726965733236304b12477368613235363a6162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616218800420e80728b817300f38a00640012a1e0a0c6c6c616d612d332e312d386218804020d0860328f09309307838e05d32260a1e0a154e5649444941204831303020383047422048424d331080808080c0021008180520013a34080312305a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a425a0a30455144744670457763464145635265356d4c5668324e364330782d5f684a454d375736315f4a4c6e534637347034713212200707070707070707070707070707070707070707070707070707070707070707188094ebdc03"

func structuredAd(t testing.TB) *Ad {
	a := testAd(t, 1, 42)
	a.Models[0].StructuredOutput = true
	return a
}

func mustHex(t testing.TB, s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func goldenWire(t testing.TB, name string) []byte {
	for _, g := range goldenFrames() {
		if g.name == name {
			b, err := proto.MarshalOptions{Deterministic: true}.Marshal(g.msg)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
	t.Fatalf("no golden %q", name)
	return nil
}

// The wire forms are fixed: a change to any of these is a protocol change.
func TestGoldenWire(t *testing.T) {
	for _, g := range goldenFrames() {
		if got := hex.EncodeToString(goldenWire(t, g.name)); got != g.hex {
			t.Errorf("%s encodes to %s; golden %s", g.name, got, g.hex)
		}
	}
	b, err := testAd(t, 1, 42).Encode()
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(b); got != goldenAdHex {
		t.Errorf("ad encodes to %s; golden %s", got, goldenAdHex)
	}
	a, err := DecodeAd(mustHex(t, goldenAdHex))
	if err != nil || !a.Equal(testAd(t, 1, 42)) {
		t.Errorf("DecodeAd(golden) = %+v, %v", a, err)
	}
	if b, err = structuredAd(t).Encode(); err != nil || hex.EncodeToString(b) != goldenAdStructuredHex {
		t.Errorf("ad with structured output encodes to %x, %v; golden %s", b, err, goldenAdStructuredHex)
	}
	a, err = DecodeAd(mustHex(t, goldenAdStructuredHex))
	if err != nil || !a.Equal(structuredAd(t)) || a.Equal(testAd(t, 1, 42)) || !a.Models[0].StructuredOutput {
		t.Errorf("DecodeAd(golden with structured output) = %+v, %v", a, err)
	}
}

// fuzzMessage checks one job-protocol message decoder: whatever it accepts
// re-encodes to a message it accepts again, equal to the first.
func fuzzMessage[T proto.Message](f *testing.F, names []string, newT func() T, check func(T) error) {
	for _, n := range names {
		f.Add(goldenWire(f, n))
	}
	f.Add([]byte{})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeChecked(b, newT(), check)
		if err != nil {
			return
		}
		b2, err := proto.Marshal(m)
		if err != nil {
			t.Fatalf("re-encode %x: %v", b, err)
		}
		again, err := decodeChecked(b2, newT(), check)
		if err != nil || !proto.Equal(m, again) {
			t.Fatalf("decode(%x) = %v, then %v, %v", b, m, again, err)
		}
	})
}

// TestCheckOpenChannel: the channel an Open names must be a TON address of
// bounded length; absent is fine.
func TestCheckOpenChannel(t *testing.T) {
	for _, tc := range []struct {
		channel string
		ok      bool
	}{
		{"", true},
		{goldenChannel, true},
		{"0:" + strings.Repeat("5c", 32), true},
		{"EQBcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFRp", false}, // bad checksum
		{"not an address", false},
		{"0:" + strings.Repeat("5c", 32) + strings.Repeat(" ", 20), false}, // over the cap
	} {
		m := &pb.Open{JobId: bytes.Repeat([]byte{1}, 16), Model: "m", Channel: tc.channel}
		if err := checkOpen(m); (err == nil) != tc.ok {
			t.Errorf("channel %q: checkOpen = %v; want ok %v", tc.channel, err, tc.ok)
		}
	}
}

// TestCheckOpenFormat: a response format's fields are capped on the wire;
// what they hold is the worker's runtime.Request.Check's.
func TestCheckOpenFormat(t *testing.T) {
	for _, tc := range []struct {
		f  *pb.ResponseFormat
		ok bool
	}{
		{nil, true},
		{&pb.ResponseFormat{Type: "json_object"}, true},
		{&pb.ResponseFormat{Type: "json_schema", Name: strings.Repeat("n", 64), Schema: bytes.Repeat([]byte{' '}, 64<<10)}, true},
		{&pb.ResponseFormat{}, false},
		{&pb.ResponseFormat{Type: strings.Repeat("t", 17)}, false},
		{&pb.ResponseFormat{Type: "json_schema", Name: strings.Repeat("n", 65)}, false},
		{&pb.ResponseFormat{Type: "json_schema", Name: "n", Schema: bytes.Repeat([]byte{' '}, 64<<10+1)}, false},
	} {
		m := &pb.Open{JobId: bytes.Repeat([]byte{1}, 16), Model: "m", Params: &pb.Params{Format: tc.f}}
		if err := checkOpen(m); (err == nil) != tc.ok {
			t.Errorf("format %v: checkOpen = %v; want ok %v", tc.f, err, tc.ok)
		}
	}
}

func FuzzOpen(f *testing.F) {
	fuzzMessage(f, []string{"open", "open-channel", "open-format", "open-tools", "open-embed"}, func() *pb.Open { return new(pb.Open) }, checkOpen)
}
func FuzzAccept(f *testing.F) {
	fuzzMessage(f, []string{"accept"}, func() *pb.Accept { return new(pb.Accept) }, checkAccept)
}
func FuzzReject(f *testing.F) {
	fuzzMessage(f, []string{"reject", "reject-no-channel"}, func() *pb.Reject { return new(pb.Reject) }, checkReject)
}
func FuzzPrompt(f *testing.F) {
	fuzzMessage(f, []string{"prompt", "prompt-raw", "prompt-tools-images", "prompt-inputs"}, func() *pb.Prompt { return new(pb.Prompt) }, checkPrompt)
}
func FuzzVoucher(f *testing.F) {
	fuzzMessage(f, []string{"voucher"}, func() *pb.Voucher { return new(pb.Voucher) }, checkVoucher)
}
func FuzzChunk(f *testing.F) {
	fuzzMessage(f, []string{"chunk", "chunk-tools-logprobs"}, func() *pb.Chunk { return new(pb.Chunk) }, checkChunk)
}

// FuzzWorkerFrame: the frames a client reads, the Embedding among them,
// through the reader's check.
func FuzzWorkerFrame(f *testing.F) {
	fuzzMessage(f, []string{"frame-embedding"}, func() *pb.Frame { return new(pb.Frame) }, checkWorkerFrame)
}
func FuzzDone(f *testing.F) {
	fuzzMessage(f, []string{"done"}, func() *pb.Done { return new(pb.Done) }, checkDone)
}
func FuzzCancel(f *testing.F) {
	fuzzMessage(f, []string{"cancel"}, func() *pb.Cancel { return new(pb.Cancel) }, checkCancel)
}

func FuzzAd(f *testing.F) {
	f.Add(mustHex(f, goldenAdHex))
	f.Add(mustHex(f, goldenAdStructuredHex))
	f.Add([]byte{})
	f.Add(make([]byte, MaxAdSize+1))
	f.Fuzz(func(t *testing.T, b []byte) {
		ad, err := DecodeAd(b)
		if err != nil {
			return
		}
		enc, err := ad.Encode()
		if err != nil {
			t.Fatalf("DecodeAd(%x) accepted an ad Encode refuses: %v", b, err)
		}
		again, err := DecodeAd(enc)
		if err != nil || !ad.Equal(again) {
			t.Fatalf("round trip: got %+v, %v; want %+v", again, err, ad)
		}
		// The book must take it or drop it with a reason, never panic.
		book := NewBook(func() time.Time { return ad.IssuedAt })
		if _, r := book.Offer(ad.Peer, b); r != Kept {
			t.Fatalf("a valid ad issued now was dropped: %v", r)
		}
	})
}

// delimited joins frames into a varint-delimited stream.
func delimited(t testing.TB, frames ...*pb.Frame) []byte {
	var buf bytes.Buffer
	w := pbio.NewDelimitedWriter(&buf)
	for _, f := range frames {
		if err := w.WriteMsg(f); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

// FuzzClientStream feeds arbitrary bytes to a client as the worker's side of
// the stream: Run must end (no hang), never pay more than the delivered tokens
// cost at the accepted price, and never pay without a chunk.
func FuzzClientStream(f *testing.F) {
	price := Price{Prompt: 1_000, Completion: 2_000_000}
	f.Add(delimited(f, acceptFrame(price, 4), chunkFrame(" a", 1), chunkFrame(" b", 2), chunkFrame(" c", 3),
		&pb.Frame{Msg: &pb.Frame_Done{Done: &pb.Done{Usage: &pb.Usage{PromptTokens: 4, CompletionTokens: 3}, FinishReason: "stop"}}}))
	f.Add(delimited(f, acceptFrame(price, 1), chunkFrame(" a", 1), chunkFrame(" b", 5)))
	f.Add(delimited(f, &pb.Frame{Msg: &pb.Frame_Reject{Reject: &pb.Reject{Code: pb.RejectCode_REJECT_PRICE}}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		synctest.Test(t, func(t *testing.T) {
			ch := newMemChannel()
			cc, wc := net.Pipe()
			go func() {
				p := newRawPeer(t, wc)
				go func() { // drain the client
					for {
						if _, err := p.recv(); err != nil {
							return
						}
					}
				}()
				wc.Write(b)
				wc.Close()
			}()
			rc, _ := Run(t.Context(), cc, testJob("m", 0), ch.payer(), func(Chunk) error { return nil }, RunOptions{})
			cc.Close()
			if owed := wantCost(rc.Price, rc.PromptTokens, rc.CompletionTokens); rc.Paid > owed {
				t.Fatalf("paid %d for %d+%d tokens at %+v; owed %d", rc.Paid, rc.PromptTokens, rc.CompletionTokens, rc.Price, owed)
			}
			ch.checkMonotonic(t)
		})
	})
}

// FuzzWorkerStream feeds arbitrary bytes to a worker as the client's side: Serve
// must end, and never send more unpaid completion tokens than its credit window.
func FuzzWorkerStream(f *testing.F) {
	job := testJob("m", 0)
	f.Add(delimited(f, openFrame(job), promptFrame("hello")))
	f.Add(delimited(f, openFrame(job), promptFrame("hello"), &pb.Frame{Msg: &pb.Frame_Voucher{Voucher: &pb.Voucher{Voucher: []byte{1}, Cumulative: 1, JobId: job.ID[:]}}}))
	f.Add(delimited(f, openFrame(job), &pb.Frame{Msg: &pb.Frame_Cancel{Cancel: &pb.Cancel{Code: pb.CancelCode_CANCEL_CLIENT}}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		synctest.Test(t, func(t *testing.T) {
			const credit = 3
			ch := newMemChannel()
			w := &Worker{Backend: &textBackend{model: "m", textLen: 20}, Payee: ch.payee(), Prices: map[string]Price{"m": {Completion: 5_000_000}}, CreditTokens: credit}
			cc, wc := net.Pipe()
			served := make(chan error, 1)
			go func() { served <- w.Serve(t.Context(), wc); wc.Close() }()
			maxTokens := uint32(0)
			read := make(chan struct{})
			go func() {
				defer close(read)
				p := newRawPeer(t, cc)
				for {
					f, err := p.recv()
					if err != nil {
						return
					}
					if c, ok := f.Msg.(*pb.Frame_Chunk); ok {
						maxTokens = max(maxTokens, c.Chunk.TokensSoFar)
					}
				}
			}()
			cc.Write(b)
			<-served
			cc.Close()
			<-read
			// Random bytes cannot forge the payee's HMAC: nothing is ever paid.
			if maxTokens > credit {
				t.Fatalf("worker sent %d tokens unpaid; credit is %d", maxTokens, credit)
			}
		})
	})
}
