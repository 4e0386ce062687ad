package market

import (
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/runtime"
)

// TestSelectCapabilities: a job that uses a capability (a response format,
// tools, logprobs, logit_bias, images, embeddings) is offered only to the
// workers whose offer has it, and a plain job to all of them.
func TestSelectCapabilities(t *testing.T) {
	format := runtime.Request{Model: "stories260K", Format: &runtime.ResponseFormat{Type: runtime.FormatJSONObject}}
	tools := runtime.Request{Model: "stories260K", Tools: []runtime.Tool{{Name: "f"}}}
	logprobs := runtime.Request{Model: "stories260K", Logprobs: true}
	bias := runtime.Request{Model: "stories260K", LogitBias: map[int32]float64{1: 5}}
	images := runtime.Request{Model: "stories260K", Messages: []runtime.Message{{Role: "user", Content: "x",
		Images: []runtime.Image{{URL: "data:image/png;base64,AA=="}}}}}
	offers := map[byte]func(*ModelOffer){
		1: func(*ModelOffer) {},
		2: func(o *ModelOffer) { o.StructuredOutput = true },
		3: func(o *ModelOffer) { o.Tools = true },
		4: func(o *ModelOffer) { o.Logprobs, o.LogitBias = true, true },
		5: func(o *ModelOffer) { o.Images = true },
		6: func(o *ModelOffer) { o.Embeddings, o.EmbeddingDims = true, 64 },
	}
	book := NewBook(func() time.Time { return t0 })
	peers := map[byte]peer.ID{}
	for n, set := range offers {
		a := testAd(t, n, 1)
		set(&a.Models[0])
		b, err := a.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if _, r := book.Offer(a.Peer, b); r != Kept {
			t.Fatalf("offer ad %d: %v", n, r)
		}
		peers[n] = a.Peer
	}
	sel := &Selector{Book: book}
	for _, c := range []struct {
		name string
		pol  Policy
		want []byte
	}{
		{"plain", Policy{Model: "stories260K"}, []byte{1, 2, 3, 4, 5, 6}},
		{"format", Policy{Model: "stories260K", Request: &format}, []byte{2}},
		{"tools", Policy{Model: "stories260K", Request: &tools}, []byte{3}},
		{"logprobs", Policy{Model: "stories260K", Request: &logprobs}, []byte{4}},
		{"logit_bias", Policy{Model: "stories260K", Request: &bias}, []byte{4}},
		{"images", Policy{Model: "stories260K", Request: &images}, []byte{5}},
		{"embeddings", Policy{Model: "stories260K", Embed: true}, []byte{6}},
		{"another model", Policy{Model: "llama-3.1-8b", Request: &format}, nil},
	} {
		got := sel.Select(c.pol)
		var ids []peer.ID
		for _, cd := range got {
			ids = append(ids, cd.Peer)
		}
		var want []peer.ID
		for _, n := range c.want {
			want = append(want, peers[n])
		}
		slices.Sort(ids)
		slices.Sort(want)
		if !slices.Equal(ids, want) {
			t.Errorf("%s: Select = %v; want %v", c.name, ids, want)
		}
		if got := c.pol.NeedsAd(); got != (c.name != "plain") {
			t.Errorf("%s: NeedsAd = %v", c.name, got)
		}
	}
}

// TestMarkDown: a worker marked down is left out of Select until the book gets
// a newer ad of it or DownFor passes.
func TestMarkDown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		book := NewBook(func() time.Time { return t0 })
		offer := func(n byte, seq uint64) peer.ID {
			a := testAd(t, n, seq)
			b, err := a.Encode()
			if err != nil {
				t.Fatal(err)
			}
			if _, r := book.Offer(a.Peer, b); r != Kept {
				t.Fatalf("offer ad %d seq %d: %v", n, seq, r)
			}
			return a.Peer
		}
		a, b := offer(1, 1), offer(2, 1)
		sel := &Selector{Book: book, Top: 1, DownFor: 30 * time.Second}
		pol := Policy{Model: "stories260K"}
		peers := func() []peer.ID {
			var out []peer.ID
			for _, c := range sel.Select(pol) {
				out = append(out, c.Peer)
			}
			return out
		}
		if got := peers(); len(got) != 2 {
			t.Fatalf("Select = %v; want both", got)
		}
		sel.MarkDown(a)
		if got := peers(); !equalIDs(got, []peer.ID{b}) || !sel.Down(a) || sel.Down(b) {
			t.Fatalf("after MarkDown(a): Select = %v, Down(a) %v; want [b], true", got, sel.Down(a))
		}
		if got := sel.DownPeers(pol); !equalIDs(got, []peer.ID{a}) {
			t.Fatalf("DownPeers = %v; want [a]", got)
		}
		if got := sel.DownPeers(Policy{Model: "stories260K", TEE: []tee.Kind{tee.Sim}}); len(got) != 0 {
			t.Fatalf("DownPeers under a policy a does not meet = %v; want none", got)
		}
		offer(1, 2) // a's next ad: a never served, so its word weighs nothing
		if !sel.Down(a) {
			t.Fatal("a newer ad brought back a worker that never served")
		}
		sel.RecordOutcome(a, true, false) // now a has served
		offer(1, 3)                       // a live worker's next ad
		if got := peers(); len(got) != 2 || sel.Down(a) {
			t.Fatalf("after a newer ad: Select = %v; want both", got)
		}
		sel.MarkDown(a)
		time.Sleep(29 * time.Second)
		if !sel.Down(a) {
			t.Fatal("up again before DownFor passed")
		}
		time.Sleep(2 * time.Second)
		if sel.Down(a) || len(peers()) != 2 {
			t.Fatal("still down after DownFor")
		}
		// Without a book (Failover's tests), only the time ends it.
		bare := &Selector{}
		bare.MarkDown("w1")
		if !bare.Down("w1") || bare.Down("w2") {
			t.Fatal("bare selector: MarkDown(w1) not kept")
		}
		time.Sleep(DefaultDownFor)
		if bare.Down("w1") {
			t.Fatal("bare selector: down after DefaultDownFor")
		}
	})
}
