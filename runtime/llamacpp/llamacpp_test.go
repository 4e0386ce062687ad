package llamacpp_test

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/cocoon-network/cocoon/internal/testmodel"
	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/llamacpp"
)

const prompt = "once upon a time"

type result struct {
	deltas []runtime.Delta
	text   string
	usage  runtime.Usage
	finish string
}

func (r result) tokens() int {
	n := 0
	for _, d := range r.deltas {
		n += d.Tokens
	}
	return n
}

func generate(t *testing.T, b runtime.Backend, req runtime.Request) result {
	t.Helper()
	if req.Model == "" {
		req.Model = testmodel.ModelID
	}
	s, err := b.Generate(context.Background(), req)
	if err != nil {
		t.Fatalf("Generate(%+v): %v", req, err)
	}
	defer s.Close()
	var r result
	for {
		d, err := s.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		if !utf8.ValidString(d.Text) {
			t.Fatalf("delta %q splits a UTF-8 character", d.Text)
		}
		r.deltas = append(r.deltas, d)
		r.text += d.Text
	}
	r.usage, r.finish = s.Usage(), s.FinishReason()
	return r
}

func seed(v uint64) *uint64 { return &v }

func TestModelsAndDigest(t *testing.T) {
	b := testmodel.Backend(t, 1)
	ms := b.Models()
	if len(ms) != 1 {
		t.Fatalf("Models() = %v; want one", ms)
	}
	// The SHA-256 that ../shared/models/MODELS.md gives for the file.
	want := runtime.Model{ID: "stories260K", Digest: "sha256:270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d", ContextLength: 2048,
		StructuredOutput: true, Tools: true, Logprobs: true, LogitBias: true, Embeddings: true, EmbeddingDims: 64}
	if ms[0] != want {
		t.Fatalf("Models()[0] = %+v; want %+v", ms[0], want)
	}
}

func TestGreedyIsCoherentAndRepeatable(t *testing.T) {
	b := testmodel.Backend(t, 1)
	r1 := generate(t, b, runtime.Request{Prompt: prompt, MaxTokens: 32})
	// MODELS.md records llama.cpp's greedy output for this prompt.
	if want := ", there was a little girl named Lily."; !strings.HasPrefix(r1.text, want) {
		t.Fatalf("greedy text = %q; want prefix %q", r1.text, want)
	}
	r2 := generate(t, b, runtime.Request{Prompt: prompt, MaxTokens: 32})
	if r1.text != r2.text {
		t.Fatalf("greedy runs differ:\n%q\n%q", r1.text, r2.text)
	}
}

func TestSameSeedSameTokens(t *testing.T) {
	b := testmodel.Backend(t, 1)
	req := runtime.Request{Prompt: prompt, MaxTokens: 48, Temperature: 1.0, TopP: 0.95, Seed: seed(42)}
	a := generate(t, b, req)
	c := generate(t, b, req)
	if a.text != c.text || a.usage != c.usage {
		t.Fatalf("seed 42 twice:\n%q %+v\n%q %+v", a.text, a.usage, c.text, c.usage)
	}
	for i := range a.deltas {
		if !reflect.DeepEqual(a.deltas[i], c.deltas[i]) {
			t.Fatalf("delta %d: %+v vs %+v", i, a.deltas[i], c.deltas[i])
		}
	}
	req.Seed = seed(43)
	d := generate(t, b, req)
	if d.text == a.text {
		t.Fatalf("seeds 42 and 43 gave the same %d tokens: %q (sampling ignores the seed?)", a.usage.CompletionTokens, a.text)
	}
}

func TestMaxTokensAndUsage(t *testing.T) {
	b := testmodel.Backend(t, 1)
	for _, max := range []int{1, 5, 17} {
		r := generate(t, b, runtime.Request{Prompt: prompt, MaxTokens: max})
		if r.finish != runtime.FinishLength || r.usage.CompletionTokens != max || r.tokens() != max {
			t.Errorf("max_tokens %d: finish %q, usage %+v, delta tokens %d; want length, %d, %d", max, r.finish, r.usage, r.tokens(), max, max)
		}
		want, err := b.CountTokens(testmodel.ModelID, prompt)
		if err != nil {
			t.Fatal(err)
		}
		if r.usage.PromptTokens != want || want != 6 { // BOS + " on" "ce" " upon" " a" " time"
			t.Errorf("prompt tokens = %d, tokenizer says %d; want 6", r.usage.PromptTokens, want)
		}
	}
}

func TestStopSequences(t *testing.T) {
	b := testmodel.Backend(t, 1)
	full := generate(t, b, runtime.Request{Prompt: prompt, MaxTokens: 40}).text
	for _, stop := range []string{
		"Lily",        // a whole token
		"e gir",       // spans the tokens " little" and " girl"
		".",           // one character
		"named Lily.", // spans several tokens
	} {
		i := strings.Index(full, stop)
		if i < 0 {
			t.Fatalf("stop %q not in the greedy text %q", stop, full)
		}
		r := generate(t, b, runtime.Request{Prompt: prompt, MaxTokens: 40, Stop: []string{"never appears", stop}})
		if r.text != full[:i] || r.finish != runtime.FinishStop {
			t.Errorf("stop %q: text %q finish %q; want %q stop", stop, r.text, r.finish, full[:i])
		}
		for _, d := range r.deltas {
			if strings.Contains(d.Text, stop) {
				t.Errorf("stop %q: delta %q contains it", stop, d.Text)
			}
		}
		if r.tokens() != r.usage.CompletionTokens {
			t.Errorf("stop %q: delta tokens %d, usage %d", stop, r.tokens(), r.usage.CompletionTokens)
		}
	}
}

func TestContinuationEqualsUninterrupted(t *testing.T) {
	b := testmodel.Backend(t, 1)
	const max = 48
	full := generate(t, b, runtime.Request{Prompt: prompt, MaxTokens: max})
	if len(full.deltas) < 10 {
		t.Fatalf("only %d deltas", len(full.deltas))
	}
	for _, k := range []int{1, 2, 7, len(full.deltas) / 2, len(full.deltas) - 1} {
		var cont string
		done := 0
		for _, d := range full.deltas[:k] {
			cont += d.Text
			done += d.Tokens
		}
		r := generate(t, b, runtime.Request{Prompt: prompt, MaxTokens: max, Continuation: cont})
		if cont+r.text != full.text {
			t.Errorf("after %d deltas %q:\ncontinued %q\nwant      %q", k, cont, r.text, full.text[len(cont):])
		}
		if r.usage.CompletionTokens != max-done || r.finish != full.finish {
			t.Errorf("after %d deltas: usage %+v finish %q; want %d completion tokens, %q", k, r.usage, r.finish, max-done, full.finish)
		}
	}
	// The same through the chat path and its fallback template.
	msgs := []runtime.Message{{Role: "user", Content: "Tell me a story."}}
	chat := generate(t, b, runtime.Request{Messages: msgs, MaxTokens: 24})
	half := chat.deltas[0].Text + chat.deltas[1].Text
	r := generate(t, b, runtime.Request{Messages: msgs, MaxTokens: 24, Continuation: half})
	if half+r.text != chat.text {
		t.Errorf("chat continuation: %q + %q != %q", half, r.text, chat.text)
	}
}

func TestChatFallbackTemplate(t *testing.T) {
	b := testmodel.Backend(t, 1)
	msgs := []runtime.Message{{Role: "system", Content: "You tell stories."}, {Role: "user", Content: "Once upon a time"}}
	r := generate(t, b, runtime.Request{Messages: msgs, MaxTokens: 16})
	want, _ := b.CountTokens(testmodel.ModelID, llamacpp.PlainTemplate(msgs))
	if r.usage.PromptTokens != want || r.usage.CompletionTokens == 0 || r.text == "" {
		t.Fatalf("chat: %q usage %+v; want %d prompt tokens and some text", r.text, r.usage, want)
	}
}

func TestCancelStopsQuickly(t *testing.T) {
	b := testmodel.Backend(t, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := b.Generate(ctx, runtime.Request{Model: testmodel.ModelID, Prompt: prompt, Temperature: 1, Seed: seed(1)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	type ended struct {
		at  time.Time
		err error
		n   int
	}
	started := make(chan struct{})
	done := make(chan ended, 1)
	go func() {
		n := 0
		for {
			_, err := s.Recv()
			if err != nil {
				done <- ended{time.Now(), err, n}
				return
			}
			if n++; n == 5 {
				close(started)
			}
		}
	}()
	<-started
	t0 := time.Now()
	cancel()
	e := <-done
	if !errors.Is(e.err, context.Canceled) {
		t.Fatalf("Recv after cancel: %v after %d deltas; want context.Canceled", e.err, e.n)
	}
	// The requirement; one token of this model takes well under 1 ms,
	// so 100 ms leaves room for a loaded machine.
	if d := e.at.Sub(t0); d > 100*time.Millisecond {
		t.Fatalf("generation stopped %v after cancel; want within 100ms", d)
	}
	// The context is free again: the next request runs.
	generate(t, b, runtime.Request{Prompt: prompt, MaxTokens: 3})
}

// A cancel during the prompt's decode (about 1,900 tokens here) stops it:
// between batches, or inside one through llama.cpp's abort callback.
func TestCancelDuringPrompt(t *testing.T) {
	b := testmodel.Backend(t, 1)
	long := strings.Repeat("the cat sat on the mat. ", 190)
	n, _ := b.CountTokens(testmodel.ModelID, long)
	if n < 1500 || n >= 2048 {
		t.Fatalf("long prompt is %d tokens; want 1500..2047", n)
	}
	aborted := 0
	for _, after := range []time.Duration{0, time.Millisecond, 3 * time.Millisecond, 10 * time.Millisecond} {
		ctx, cancel := context.WithTimeout(context.Background(), after)
		s, err := b.Generate(ctx, runtime.Request{Model: testmodel.ModelID, Prompt: long, MaxTokens: 1})
		cancel()
		if err != nil {
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("cancel after %v: %v; want DeadlineExceeded", after, err)
			}
			aborted++
			continue
		}
		s.Close() // the prompt was decoded before the deadline
	}
	if aborted == 0 {
		t.Fatal("no prompt decode was cancelled, not even with a zero timeout")
	}
	// The context is reusable after an aborted decode, and its cache was cleared.
	if r := generate(t, b, runtime.Request{Prompt: prompt, MaxTokens: 32}); !strings.HasPrefix(r.text, ", there was a little girl named Lily.") {
		t.Fatalf("after aborted prompts: %q", r.text)
	}
}

func TestStreamCloseWhileRecv(t *testing.T) {
	b := testmodel.Backend(t, 1)
	s, err := b.Generate(context.Background(), runtime.Request{Model: testmodel.ModelID, Prompt: prompt, Temperature: 1, Seed: seed(3)})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	errc := make(chan error, 1)
	first := make(chan struct{})
	go func() {
		for {
			if _, err := s.Recv(); err != nil {
				errc <- err
				return
			}
			if n++; n == 3 {
				close(first)
			}
		}
	}()
	<-first
	s.Close() // from another goroutine, while Recv runs
	if err := <-errc; err == nil || err == io.EOF {
		t.Fatalf("Recv after Close: %v; want an error", err)
	}
	s.Close() // twice is harmless
	// The context was given back once: the next generation gets it.
	generate(t, b, runtime.Request{Prompt: prompt, MaxTokens: 3})
}

func TestParallelGenerationsAgree(t *testing.T) {
	b := testmodel.Backend(t, 2)
	want := generate(t, b, runtime.Request{Prompt: prompt, MaxTokens: 24}).text
	var wg sync.WaitGroup
	got := make([]string, 4)
	for i := range got {
		wg.Go(func() {
			s, err := b.Generate(context.Background(), runtime.Request{Model: testmodel.ModelID, Prompt: prompt, MaxTokens: 24})
			if err != nil {
				t.Error(err)
				return
			}
			defer s.Close()
			for {
				d, err := s.Recv()
				if err != nil {
					if err != io.EOF {
						t.Error(err)
					}
					return
				}
				got[i] += d.Text
			}
		})
	}
	wg.Wait()
	for i, g := range got {
		if g != want {
			t.Errorf("parallel run %d: %q; want %q", i, g, want)
		}
	}
}

func TestBadRequests(t *testing.T) {
	b := testmodel.Backend(t, 1)
	long := strings.Repeat("once upon a time ", 600) // > 2048 tokens
	for _, tc := range []struct {
		req  runtime.Request
		want error
	}{
		{runtime.Request{Model: "nope", Prompt: "x"}, runtime.ErrUnknownModel},
		{runtime.Request{Model: testmodel.ModelID}, runtime.ErrInvalidRequest},
		{runtime.Request{Model: testmodel.ModelID, Prompt: "x", MaxTokens: -1}, runtime.ErrInvalidRequest},
		{runtime.Request{Model: testmodel.ModelID, Prompt: "x", Temperature: 3}, runtime.ErrInvalidRequest},
		{runtime.Request{Model: testmodel.ModelID, Prompt: "x", Stop: []string{""}}, runtime.ErrInvalidRequest},
		{runtime.Request{Model: testmodel.ModelID, Prompt: long}, runtime.ErrInvalidRequest},
		{runtime.Request{Model: testmodel.ModelID, Messages: []runtime.Message{{Role: "wizard", Content: "x"}}}, runtime.ErrInvalidRequest},
	} {
		s, err := b.Generate(context.Background(), tc.req)
		if !errors.Is(err, tc.want) {
			if s != nil {
				s.Close()
			}
			t.Errorf("Generate(%.60v) = %v; want %v", tc.req, err, tc.want)
		}
	}
	// None of them kept the one context.
	generate(t, b, runtime.Request{Prompt: prompt, MaxTokens: 2})
}

func TestCloseEndsOpenStream(t *testing.T) {
	b, err := llamacpp.New(llamacpp.Config{LibDir: testmodel.LibDir(), Threads: 1,
		Models: []runtime.ModelConfig{{Path: testmodel.ModelPath(t), ID: "m"}}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := b.Generate(context.Background(), runtime.Request{Model: "m", Prompt: prompt})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	go func() { b.Close(); close(closed) }()
	for {
		if _, err = s.Recv(); err != nil {
			break
		}
	}
	if !errors.Is(err, runtime.ErrClosed) {
		t.Fatalf("Recv after backend Close: %v; want ErrClosed", err)
	}
	<-closed
	if _, err := b.Generate(context.Background(), runtime.Request{Model: "m", Prompt: prompt}); !errors.Is(err, runtime.ErrClosed) {
		t.Fatalf("Generate after Close: %v; want ErrClosed", err)
	}
}

func TestBadModelFiles(t *testing.T) {
	good, err := os.ReadFile(testmodel.ModelPath(t))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	corrupt := append([]byte(nil), good...)
	for i := 24; i < 4096; i++ { // scramble the metadata after the header
		corrupt[i] ^= 0x5a
	}
	badVersion := append([]byte(nil), good...)
	badVersion[4] = 99
	for _, tc := range []struct {
		name, path, want string
	}{
		{"missing", filepath.Join(dir, "absent.gguf"), "no such file"},
		{"empty", write("empty.gguf", nil), "not a GGUF file"},
		{"text", write("text.gguf", []byte("this is not a model, just some text")), "not a GGUF file"},
		{"version", write("version.gguf", badVersion), "unsupported GGUF version"},
		{"truncated", write("truncated.gguf", good[:len(good)/2]), "llama.cpp rejected it"},
		{"truncated header", write("short.gguf", good[:200]), "llama.cpp rejected it"},
		{"corrupt", write("corrupt.gguf", corrupt), "llama.cpp rejected it"},
	} {
		_, err := llamacpp.New(llamacpp.Config{LibDir: testmodel.LibDir(), Threads: 1,
			Models: []runtime.ModelConfig{{Path: tc.path}}})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.path) {
			t.Errorf("%s model: err = %v; want one naming %s and saying %q", tc.name, err, tc.path, tc.want)
		} else {
			t.Logf("%s: %v", tc.name, err)
		}
	}
}

func TestMissingLibrariesSayMakeDeps(t *testing.T) {
	_, err := llamacpp.New(llamacpp.Config{LibDir: t.TempDir()})
	if !errors.Is(err, llamacpp.ErrNoLibrary) || !strings.Contains(err.Error(), "make deps") {
		t.Fatalf("New with an empty lib dir: %v; want ErrNoLibrary saying to run make deps", err)
	}
}
