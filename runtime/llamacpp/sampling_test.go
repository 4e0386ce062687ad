package llamacpp_test

import (
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/cocoon-network/cocoon/internal/testmodel"
	"github.com/cocoon-network/cocoon/runtime"
)

// TestLogprobs: one entry per token sent, each ≤ 0, with top_logprobs
// alternatives likeliest first; greedy picks the top one.
func TestLogprobs(t *testing.T) {
	b := testmodel.Backend(t, 1)
	for _, top := range []int{0, 1, 5, 20} {
		r := generate(t, b, runtime.Request{Prompt: prompt, MaxTokens: 30, Logprobs: true, TopLogprobs: top})
		n := 0
		for _, d := range r.deltas {
			text := ""
			for _, lp := range d.Logprobs {
				text += string(lp.Bytes)
				if lp.Token != string(lp.Bytes) {
					t.Fatalf("token %q, bytes %q", lp.Token, lp.Bytes)
				}
				if lp.Logprob > 0 || math.IsNaN(lp.Logprob) {
					t.Fatalf("logprob %g", lp.Logprob)
				}
				if len(lp.Top) != top {
					t.Fatalf("top_logprobs %d: %d alternatives", top, len(lp.Top))
				}
				for i := 1; i < len(lp.Top); i++ {
					if lp.Top[i].Logprob > lp.Top[i-1].Logprob {
						t.Fatalf("alternatives unsorted: %+v", lp.Top)
					}
				}
				if top > 0 && (lp.Top[0].Token != lp.Token || math.Abs(lp.Top[0].Logprob-lp.Logprob) > 1e-9) {
					t.Fatalf("greedy took %q (%g), the likeliest is %q (%g)", lp.Token, lp.Logprob, lp.Top[0].Token, lp.Top[0].Logprob)
				}
			}
			if text != d.Text {
				t.Fatalf("delta %q has logprobs of %q", d.Text, text)
			}
			n += len(d.Logprobs)
		}
		if n != r.usage.CompletionTokens {
			t.Fatalf("%d entries for %d tokens", n, r.usage.CompletionTokens)
		}
	}
	// A stop sequence's tokens are not sent and have no entries.
	r := generate(t, b, runtime.Request{Prompt: prompt, MaxTokens: 30, Logprobs: true, Stop: []string{" Lily"}})
	text, n := "", 0
	for _, d := range r.deltas {
		for _, lp := range d.Logprobs {
			text += string(lp.Bytes)
			n++
		}
	}
	if r.finish != runtime.FinishStop || text != r.text || n != r.usage.CompletionTokens-1 {
		t.Fatalf("stop: text %q, logprob text %q, %d entries for %d tokens", r.text, text, n, r.usage.CompletionTokens)
	}
}

// TestLogitBias: +100 forces a token, -100 on the greedy first token changes
// the output; an id outside the vocabulary is refused by name.
func TestLogitBias(t *testing.T) {
	b := testmodel.Backend(t, 1)
	greedy := generate(t, b, runtime.Request{Prompt: prompt, MaxTokens: 8, Logprobs: true})
	r := generate(t, b, runtime.Request{Prompt: prompt, MaxTokens: 8, LogitBias: map[int32]float64{pieceID(t, "{"): 100}})
	if r.text != strings.Repeat("{", 8) {
		t.Fatalf("logit_bias +100 on {: %q", r.text)
	}
	first := greedy.deltas[0].Logprobs[0].Token
	// Every token of that text (a byte token may spell it too).
	bias := map[int32]float64{}
	for _, id := range pieceIDs(t, first) {
		bias[id] = -100
	}
	r = generate(t, b, runtime.Request{Prompt: prompt, MaxTokens: 8, LogitBias: bias})
	if strings.HasPrefix(r.text, first) || r.text == greedy.text {
		t.Fatalf("logit_bias -100 on %q: %q (greedy %q)", first, r.text, greedy.text)
	}
	for _, id := range []int32{-1, 512, 1 << 30} {
		_, err := b.Generate(t.Context(), runtime.Request{Model: testmodel.ModelID, Prompt: prompt, LogitBias: map[int32]float64{id: 1}})
		var fe *runtime.FieldError
		if !errors.As(err, &fe) || fe.Field != "logit_bias" {
			t.Fatalf("logit_bias id %d: %v; want a field error naming logit_bias", id, err)
		}
	}
}

// TestPenalties: greedy output repeats words; a frequency or presence
// penalty changes it and lowers how often its most repeated token comes.
func TestPenalties(t *testing.T) {
	b := testmodel.Backend(t, 1)
	base := generate(t, b, runtime.Request{Prompt: prompt, MaxTokens: 120})
	for _, req := range []runtime.Request{
		{Prompt: prompt, MaxTokens: 120, FrequencyPenalty: 1.5},
		{Prompt: prompt, MaxTokens: 120, PresencePenalty: 1.5},
	} {
		r := generate(t, b, req)
		if r.text == base.text {
			t.Fatalf("penalties %g/%g left greedy output as it was: %q", req.FrequencyPenalty, req.PresencePenalty, r.text)
		}
		t.Logf("frequency %g presence %g: %q\n(greedy %q)", req.FrequencyPenalty, req.PresencePenalty, r.text, base.text)
		if w := "Lily"; strings.Count(r.text, w) >= strings.Count(base.text, w) && strings.Count(base.text, w) > 1 {
			t.Errorf("%q: %d times with the penalty, %d without", w, strings.Count(r.text, w), strings.Count(base.text, w))
		}
	}
	// A negative penalty encourages repetition instead.
	neg := generate(t, b, runtime.Request{Prompt: prompt, MaxTokens: 120, FrequencyPenalty: -2})
	if neg.text == base.text {
		t.Fatalf("frequency_penalty -2 changed nothing")
	}
}
