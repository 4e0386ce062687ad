package market

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/cocoon-network/cocoon/enclave/tee"
)

// TestSelectStructuredOutput: a job with a response format is offered only to
// the workers whose offer says they follow one.
func TestSelectStructuredOutput(t *testing.T) {
	book := NewBook(func() time.Time { return t0 })
	var with peer.ID
	for n, so := range map[byte]bool{1: false, 2: true, 3: false} {
		a := testAd(t, n, 1)
		a.Models[0].StructuredOutput = so
		b, err := a.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if _, r := book.Offer(a.Peer, b); r != Kept {
			t.Fatalf("offer ad %d: %v", n, r)
		}
		if so {
			with = a.Peer
		}
	}
	sel := &Selector{Book: book}
	if got := sel.Select(Policy{Model: "stories260K"}); len(got) != 3 {
		t.Errorf("Select without a format: %d workers; want 3", len(got))
	}
	got := sel.Select(Policy{Model: "stories260K", StructuredOutput: true})
	if len(got) != 1 || got[0].Peer != with || !got[0].Offer.StructuredOutput {
		t.Errorf("Select with a format = %+v; want only %s", got, with)
	}
	if got := sel.Select(Policy{Model: "llama-3.1-8b", StructuredOutput: true}); len(got) != 0 {
		t.Errorf("Select with a format of a model none offers it for = %+v; want none", got)
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
		offer(1, 2) // a live worker's next ad
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
