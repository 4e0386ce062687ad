package llamacpp_test

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/cocoon-network/cocoon/internal/testmodel"
	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/llamacpp"
)

// ggufWithKV returns a copy of the GGUF file gguf with one more string
// metadata entry: the header is parsed far enough to find the end of the
// metadata and of the tensor infos, and the tensor data is re-aligned.
func ggufWithKV(t *testing.T, gguf []byte, key, value string) []byte {
	t.Helper()
	le := binary.LittleEndian
	pos := 24
	u32 := func() uint32 { v := le.Uint32(gguf[pos:]); pos += 4; return v }
	u64 := func() uint64 { v := le.Uint64(gguf[pos:]); pos += 8; return v }
	str := func() string { n := int(u64()); s := string(gguf[pos : pos+n]); pos += n; return s }
	size := map[uint32]int{0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
	var skip func(typ uint32)
	skip = func(typ uint32) {
		switch typ {
		case 8:
			str()
		case 9:
			et, n := u32(), u64()
			for range n {
				skip(et)
			}
		default:
			n, ok := size[typ]
			if !ok {
				t.Fatalf("gguf value type %d", typ)
			}
			pos += n
		}
	}
	nTensors, nKV := le.Uint64(gguf[8:]), le.Uint64(gguf[16:])
	alignment := 32
	for range nKV {
		k := str()
		typ := u32()
		if k == "general.alignment" {
			alignment = int(le.Uint32(gguf[pos:]))
		}
		skip(typ)
	}
	kvEnd := pos
	for range nTensors {
		str()
		for range u32() {
			u64()
		}
		u32()
		u64()
	}
	infoEnd := pos
	dataStart := (infoEnd + alignment - 1) / alignment * alignment

	var kv bytes.Buffer
	binary.Write(&kv, le, uint64(len(key)))
	kv.WriteString(key)
	binary.Write(&kv, le, uint32(8))
	binary.Write(&kv, le, uint64(len(value)))
	kv.WriteString(value)

	var out bytes.Buffer
	out.Write(gguf[:16])
	binary.Write(&out, le, nKV+1)
	out.Write(gguf[24:kvEnd])
	out.Write(kv.Bytes())
	out.Write(gguf[kvEnd:infoEnd])
	for out.Len()%alignment != 0 {
		out.WriteByte(0)
	}
	out.Write(gguf[dataStart:])
	return out.Bytes()
}

// chatML is a chat template of the kind GGUF files carry; llama.cpp
// recognises it by its <|im_start|> markers.
const chatML = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"

func TestChatTemplateFromGGUF(t *testing.T) {
	orig, err := os.ReadFile(testmodel.ModelPath(t))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "templated.gguf")
	if err := os.WriteFile(path, ggufWithKV(t, orig, "tokenizer.chat_template", chatML), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := llamacpp.New(llamacpp.Config{LibDir: testmodel.LibDir(), Threads: 1, Models: []runtime.ModelConfig{{Path: path}}})
	if err != nil {
		t.Fatalf("load the model with a template: %v", err)
	}
	defer b.Close()
	if id := b.Models()[0].ID; id != "templated" {
		t.Fatalf("model id %q; want the file name", id)
	}
	msgs := []runtime.Message{{Role: "user", Content: "Tell me a story."}}
	r := generate(t, b, runtime.Request{Model: "templated", Messages: msgs, MaxTokens: 8})
	want, _ := b.CountTokens("templated", "<|im_start|>user\nTell me a story.<|im_end|>\n<|im_start|>assistant\n")
	plain, _ := b.CountTokens("templated", llamacpp.PlainTemplate(msgs))
	if r.usage.PromptTokens != want || want == plain {
		t.Fatalf("prompt tokens %d; want %d from the GGUF's ChatML template (the plain fallback gives %d)", r.usage.PromptTokens, want, plain)
	}
	// The weights are the same: raw completions agree with the original file.
	orig2 := testmodel.Backend(t, 1)
	a := generate(t, b, runtime.Request{Model: "templated", Prompt: prompt, MaxTokens: 16})
	c := generate(t, orig2, runtime.Request{Prompt: prompt, MaxTokens: 16})
	if a.text != c.text {
		t.Fatalf("templated copy generates %q; original %q", a.text, c.text)
	}
}
