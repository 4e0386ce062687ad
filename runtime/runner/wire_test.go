package runner

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/cocoon-network/cocoon/runtime"
)

func encode(t testing.TB, fs ...frame) []byte {
	var buf bytes.Buffer
	w := newFrameWriter(&buf)
	for _, f := range fs {
		if err := w.send(f); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

var seedFrames = []frame{
	{Op: opLoad, Config: &childConfig{LibDir: "/lib", Models: []runtime.ModelConfig{{Path: "m.gguf"}}, Parallel: 2}},
	{Op: opLoad, Config: &childConfig{LibDir: "/cuda", Lib: "cuda", GPULayers: -1, Models: []runtime.ModelConfig{{Path: "m.gguf"}}}},
	{Op: opReady, Models: []runtime.Model{{ID: "m", ContextLength: 512}}, PID: 42},
	{Op: opReady, Models: []runtime.Model{{ID: "m"}}, PID: 43,
		Offloads: map[string]runtime.Offload{"m": {Lib: "cuda", LibDir: "/cuda", Layers: 33, GPULayers: 33}}},
	{Op: opGenerate, ID: 1, Req: &runtime.Request{Model: "m", Prompt: "hi", MaxTokens: 8, Stop: []string{"."}}},
	{Op: opDelta, ID: 1, Text: "héllo", Tokens: 2},
	{Op: opCredit, ID: 1, N: 4},
	{Op: opEnd, ID: 1, Usage: &runtime.Usage{PromptTokens: 3, CompletionTokens: 2}, Finish: "stop"},
	{Op: opError, ID: 1, Kind: "invalid", Msg: "no"},
}

func TestFramesRoundTrip(t *testing.T) {
	r := bufio.NewReader(bytes.NewReader(encode(t, seedFrames...)))
	for i, want := range seedFrames {
		got, err := readFrame(r)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if a, b := encode(t, got), encode(t, want); !bytes.Equal(a, b) {
			t.Errorf("frame %d: %s, want %s", i, a, b)
		}
	}
	if _, err := readFrame(r); !errors.Is(err, io.EOF) {
		t.Errorf("after the last frame: %v", err)
	}
}

func TestFrameLimits(t *testing.T) {
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], MaxFrame+1)
	if _, err := readFrame(bufio.NewReader(bytes.NewReader(hdr[:]))); !errors.Is(err, errFrameTooLarge) {
		t.Errorf("oversized frame: %v", err)
	}
	for _, body := range []string{`{}`, `{"op":"credit","n":9}`, `{"op":"delta","tokens":-1}`, `[1]`, `{"op":"x","id":-1}`} {
		if _, err := decodeFrame([]byte(body)); err == nil {
			t.Errorf("%s decoded", body)
		}
	}
}

// FuzzFrame: whatever arrives on the pipe decodes to a frame or an error,
// never a panic, and a decoded frame re-encodes to one that decodes alike.
func FuzzFrame(f *testing.F) {
	for _, fr := range seedFrames {
		f.Add(encode(f, fr)[4:])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := decodeFrame(b)
		if err != nil {
			return
		}
		again, err := decodeFrame(encode(t, fr)[4:])
		if err != nil {
			t.Fatalf("re-encoded frame does not decode: %v", err)
		}
		if a, b := encode(t, fr), encode(t, again); !bytes.Equal(a, b) {
			t.Fatalf("round trip changed the frame: %s, then %s", a, b)
		}
	})
}
