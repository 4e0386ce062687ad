package market

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/market/pb"
)

// testPeer returns a deterministic Ed25519 peer ID.
func testPeer(t testing.TB, n byte) peer.ID {
	t.Helper()
	priv, _, err := crypto.GenerateEd25519Key(bytes.NewReader(bytes.Repeat([]byte{n + 1}, 64)))
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func testAd(t testing.TB, n byte, seq uint64) *Ad {
	return &Ad{
		Peer:     testPeer(t, n),
		Seq:      seq,
		IssuedAt: t0,
		TTL:      60 * time.Second,
		Models: []ModelOffer{
			{ID: "stories260K", WeightsDigest: "sha256:" + strings.Repeat("ab", 32), ContextLength: 512,
				Price: Price{Prompt: 1_000, Completion: 3_000}, TTFT: 15 * time.Millisecond, TimePerToken: 800 * time.Microsecond},
			{ID: "llama-3.1-8b", ContextLength: 8192, Price: Price{Prompt: 50_000, Completion: 150_000}, TTFT: 120 * time.Millisecond, TimePerToken: 12 * time.Millisecond},
		},
		Capacity: Capacity{GPUs: []GPU{{Name: "NVIDIA H100 80GB HBM3", VRAM: 80 << 30}}, SlotsTotal: 8, SlotsFree: 5, QueueLength: 1},
		TEE:      TEE{Kind: tee.TDX, Measurement: bytes.Repeat([]byte{0x5a}, 48)},
		Settlement: Settlement{WalletAddress: "EQDtFpEwcFAEcRe5mLVh2N6C0x-_hJEM7W61_JLnSF74p4q2",
			ChannelKey: bytes.Repeat([]byte{7}, 32), MinDeposit: 1_000_000_000},
	}
}

func TestAdRoundTrip(t *testing.T) {
	a := testAd(t, 1, 42)
	b, err := a.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeAd(b)
	if err != nil {
		t.Fatalf("DecodeAd(%x) = %v", b, err)
	}
	if !got.Equal(a) {
		t.Fatalf("DecodeAd(Encode(ad)) = %+v; want %+v", got, a)
	}
	if again, _ := got.Encode(); !bytes.Equal(again, b) {
		t.Fatalf("re-encoding differs:\n%x\n%x", again, b)
	}
	t.Logf("typical ad: %d bytes", len(b))
}

// The largest ad the schema allows fits in 4 KiB or is refused by Encode.
func TestAdSizeCap(t *testing.T) {
	a := testAd(t, 1, 1)
	a.Models = nil
	for i := range MaxAdModels {
		a.Models = append(a.Models, ModelOffer{ID: strings.Repeat("m", 100) + string(rune('A'+i)), ContextLength: 1, Price: Price{Prompt: 1 << 60, Completion: 1 << 60}})
	}
	if _, err := a.Encode(); !errors.Is(err, ErrAdTooLarge) {
		t.Fatalf("Encode of a %d-model ad = %v; want ErrAdTooLarge", len(a.Models), err)
	}
}

func TestBookDropReasons(t *testing.T) {
	now := t0
	book := NewBook(func() time.Time { return now })
	good := testAd(t, 1, 10)
	enc := func(a *Ad) []byte {
		t.Helper()
		b, err := a.Encode()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	schema := func(mut func(a *Ad)) []byte {
		a := testAd(t, 1, 99)
		mut(a)
		// Encode refuses schema errors, so build the bytes from a valid ad and
		// patch the decoded protobuf instead.
		return encodeUnchecked(t, a)
	}
	// wirePatch patches the protobuf of a valid ad, for values the Ad type cannot hold.
	wirePatch := func(mut func(m *pb.Ad)) []byte {
		m := testAd(t, 1, 99).toPB()
		mut(m)
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	p1, p2 := testPeer(t, 1), testPeer(t, 2)
	cases := []struct {
		name string
		from peer.ID
		data []byte
		want DropReason
		on   string // OfferOn this model's topic ("": Offer)
		rate bool   // OfferOn with an admit that says DropRate
	}{
		{"valid", p1, enc(good), Kept, "", false},
		{"too large", p1, make([]byte, MaxAdSize+1), DropTooLarge, "", false},
		{"malformed", p1, []byte{0xff, 0xff, 0xff}, DropMalformed, "", false},
		{"no models", p1, schema(func(a *Ad) { a.Models = nil }), DropSchema, "", false},
		{"tee kind unspecified", p1, schema(func(a *Ad) { a.TEE.Kind = "sgx" }), DropSchema, "", false},
		{"tee kind unknown to this version", p1, wirePatch(func(m *pb.Ad) { m.Tee.Kind = 9 }), DropSchema, "", false},
		{"free slots above total", p1, schema(func(a *Ad) { a.Capacity.SlotsFree = 9 }), DropSchema, "", false},
		{"no wallet", p1, schema(func(a *Ad) { a.Settlement.WalletAddress = "" }), DropSchema, "", false},
		{"ttl too long", p1, schema(func(a *Ad) { a.TTL = time.Hour }), DropSchema, "", false},
		{"bad peer id", p1, schema(func(a *Ad) { a.Peer = "nope" }), DropSchema, "", false},
		{"duplicate model", p1, schema(func(a *Ad) { a.Models[1].ID = a.Models[0].ID }), DropSchema, "", false},
		{"sender is not the ad's peer", p2, enc(testAd(t, 1, 11)), DropSender, "", false},
		{"replay", p1, enc(good), DropReplay, "", false},
		{"older seq", p1, enc(testAd(t, 1, 9)), DropReplay, "", false},
		{"expired", p2, enc(func() *Ad { a := testAd(t, 2, 1); a.IssuedAt = t0.Add(-61 * time.Second); return a }()), DropExpired, "", false},
		{"from the future", p2, enc(func() *Ad { a := testAd(t, 2, 1); a.IssuedAt = t0.Add(31 * time.Second); return a }()), DropFuture, "", false},
		{"slightly ahead is fine", p2, enc(func() *Ad { a := testAd(t, 2, 2); a.IssuedAt = t0.Add(29 * time.Second); return a }()), Kept, "", false},
		{"newer seq", p1, enc(testAd(t, 1, 12)), Kept, "", false},
		{"the same ad on its other model's topic", p1, enc(testAd(t, 1, 12)), Kept, "llama-3.1-8b", false},
		{"the same ad again on no topic", p1, enc(testAd(t, 1, 12)), DropReplay, "", false},
		{"on a topic of a model not offered", p1, enc(testAd(t, 1, 13)), DropTopic, "other-model", false},
		{"over the rate", p1, enc(testAd(t, 1, 14)), DropRate, "stories260K", true},
		{"within the rate", p1, enc(testAd(t, 1, 14)), Kept, "stories260K", false},
	}
	wantDropped := map[DropReason]uint64{}
	for _, c := range cases {
		var r DropReason
		switch {
		case c.rate:
			_, r = book.OfferOn(c.on, c.from, c.data, func(*Ad) DropReason { return DropRate })
		case c.on != "":
			_, r = book.OfferOn(c.on, c.from, c.data, func(*Ad) DropReason { return Kept })
		default:
			_, r = book.Offer(c.from, c.data)
		}
		if r != c.want {
			t.Errorf("%s: Offer = %v; want %v", c.name, r, c.want)
		}
		if r != Kept {
			wantDropped[r]++
		}
	}
	st := book.Stats()
	if st.Received != uint64(len(cases)) {
		t.Errorf("received %d; want %d", st.Received, len(cases))
	}
	for _, r := range DropReasons() {
		if st.Dropped[r] != wantDropped[r] {
			t.Errorf("dropped[%v] = %d; want %d", r, st.Dropped[r], wantDropped[r])
		}
		if wantDropped[r] == 0 {
			t.Errorf("no case drops for %v", r)
		}
	}
	if a, ok := book.Get(p1); !ok || a.Seq != 14 {
		t.Fatalf("book holds %+v for p1; want seq 14", a)
	}
	if n := len(book.ByModel("stories260K")); n != 2 {
		t.Fatalf("ByModel = %d ads; want 2", n)
	}
	if n := len(book.ByModel("absent")); n != 0 {
		t.Fatalf("ByModel(absent) = %d ads; want 0", n)
	}
	// Time passes: both expire; the expired seq still blocks a replay.
	now = t0.Add(2 * time.Minute)
	if n := len(book.All()); n != 0 {
		t.Fatalf("All after expiry = %d ads; want 0", n)
	}
	if n := book.Prune(); n != 2 {
		t.Fatalf("Prune = %d; want 2", n)
	}
	old := testAd(t, 1, 12)
	old.IssuedAt = now
	if _, r := book.Offer(p1, enc(old)); r != DropReplay {
		t.Fatalf("re-sent seq after expiry: %v; want replay", r)
	}
	for _, r := range []DropReason{DropTooLarge, DropMalformed, DropSchema, DropSender} {
		if !r.Penalize() {
			t.Errorf("%v does not penalize", r)
		}
	}
	for _, r := range []DropReason{DropReplay, DropExpired, DropFuture} {
		if r.Penalize() {
			t.Errorf("%v penalizes", r)
		}
	}
}

func TestSelection(t *testing.T) {
	book := NewBook(func() time.Time { return t0 })
	add := func(n byte, kind tee.Kind, pc uint64, ttft time.Duration, free uint32) peer.ID {
		a := testAd(t, n, 1)
		a.TEE.Kind = kind
		if kind == tee.None {
			a.TEE.Measurement = nil
		}
		a.Models[0].Price.Completion = pc
		a.Models[0].TTFT = ttft
		a.Capacity.SlotsFree = free
		b, err := a.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if _, r := book.Offer(a.Peer, b); r != Kept {
			t.Fatalf("offer: %v", r)
		}
		return a.Peer
	}
	cheap := add(1, tee.TDX, 1_000, 20*time.Millisecond, 4)
	mid := add(2, tee.SEVSNP, 2_000, 20*time.Millisecond, 4)
	pricey := add(3, tee.TDX, 4_000, 20*time.Millisecond, 4)
	sim := add(4, tee.Sim, 500, 20*time.Millisecond, 4)
	none := add(5, tee.None, 100, 20*time.Millisecond, 4)
	full := add(6, tee.TDX, 1_000, 20*time.Millisecond, 0)
	order := func(cs []Candidate) []peer.ID {
		var out []peer.ID
		for _, c := range cs {
			out = append(out, c.Peer)
		}
		return out
	}
	sel := &Selector{Book: book, Top: 1}
	got := order(sel.Select(Policy{Model: "stories260K"}))
	// full: no free slot weighs 2 + queue/slots = 2.125, above a price twice as high.
	want := []peer.ID{cheap, mid, pricey, full}
	if !equalIDs(got, want) {
		t.Fatalf("default policy (real TEEs) order %v; want %v", got, want)
	}
	got = order(sel.Select(Policy{Model: "stories260K", TEE: []tee.Kind{tee.Sim, tee.None}}))
	if !equalIDs(got, []peer.ID{none, sim}) {
		t.Fatalf("sim+none policy: %v; want [none sim]", got)
	}
	got = order(sel.Select(Policy{Model: "stories260K", MaxPrice: Price{Completion: 1_500}}))
	if !equalIDs(got, []peer.ID{cheap, full}) {
		t.Fatalf("max price: %v; want [cheap full]", got)
	}
	if c := sel.Select(Policy{Model: "absent"}); c != nil {
		t.Fatalf("absent model: %v", c)
	}
	// Reputation: failures push the cheapest down.
	for range 5 {
		sel.RecordOutcome(cheap, false, false)
	}
	got = order(sel.Select(Policy{Model: "stories260K"}))
	if got[0] == cheap {
		t.Fatalf("a worker with 5 failures is still first: %v", got)
	}
	// Measured latency: a slow EWMA pushes mid below pricey.
	sel.ObserveLatency(mid, 2*time.Second)
	got = order(sel.Select(Policy{Model: "stories260K"}))
	if idx(got, mid) < idx(got, pricey) {
		t.Fatalf("a worker measured at 2s ranks above one at 20ms: %v", got)
	}
}

func idx(ids []peer.ID, id peer.ID) int {
	for i, x := range ids {
		if x == id {
			return i
		}
	}
	return -1
}

func equalIDs(a, b []peer.ID) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Power of two choices: the first pick spreads over the top candidates (the
// worst of the top never wins a draw of two) and is reproducible from the seed.
func TestSelectionPowerOfTwo(t *testing.T) {
	book := NewBook(func() time.Time { return t0 })
	var ids []peer.ID
	for i := range 6 {
		a := testAd(t, byte(i), 1)
		a.Models[0].Price.Completion = uint64(1000 + 100*i)
		b, _ := a.Encode()
		book.Offer(a.Peer, b)
		ids = append(ids, a.Peer)
	}
	run := func(seed uint64) map[peer.ID]int {
		sel := &Selector{Book: book, Rand: rand.New(rand.NewPCG(seed, 1)), Top: 4}
		firsts := map[peer.ID]int{}
		for range 1200 {
			cs := sel.Select(Policy{Model: "stories260K"})
			if len(cs) != 6 {
				t.Fatalf("%d candidates; want 6", len(cs))
			}
			firsts[cs[0].Peer]++
			for i := 2; i < len(cs); i++ { // after the pick, the rest by score
				if cs[i].Score < cs[i-1].Score && i > 1 {
					t.Fatalf("candidates after the first not ordered by score: %v", cs)
				}
			}
		}
		return firsts
	}
	a, b := run(7), run(7)
	for _, id := range ids {
		if a[id] != b[id] {
			t.Fatalf("same seed, different picks: %v vs %v", a, b)
		}
	}
	// P(first = k-th best of 4) = 2(3-k)/12: 1/2, 1/3, 1/6, 0.
	for k, wantFrac := range []float64{0.5, 1.0 / 3, 1.0 / 6, 0} {
		got := float64(a[ids[k]]) / 1200
		if got < wantFrac-0.06 || got > wantFrac+0.06 {
			t.Errorf("rank %d picked first %.3f of the time; want about %.3f", k, got, wantFrac)
		}
	}
	if a[ids[4]]+a[ids[5]] != 0 {
		t.Errorf("candidates outside the top 4 picked first: %v", a)
	}
}

// The ad's TEE enum is converted at the codec, name for name; the zero
// (TEE_KIND_UNSPECIFIED) and numbers this version does not know are no kind.
func TestTEEKindWire(t *testing.T) {
	for _, k := range tee.Kinds {
		code := teeToPB(k)
		want := "TEE_KIND_" + strings.ToUpper(strings.ReplaceAll(k.String(), "-", "_"))
		if code.String() != want {
			t.Errorf("teeToPB(%s) = %v; want %s", k, code, want)
		}
		if back, ok := teeFromPB(code); !ok || back != k {
			t.Errorf("teeFromPB(teeToPB(%s)) = %q, %v", k, back, ok)
		}
	}
	for _, code := range []pb.TEEKind{pb.TEEKind_TEE_KIND_UNSPECIFIED, 9} {
		if k, ok := teeFromPB(code); ok {
			t.Errorf("teeFromPB(%v) = %q; want no kind", code, k)
		}
	}
	if code := teeToPB(""); code != pb.TEEKind_TEE_KIND_UNSPECIFIED {
		t.Errorf("teeToPB(no kind) = %v; want TEE_KIND_UNSPECIFIED", code)
	}
}

func encodeUnchecked(t testing.TB, a *Ad) []byte {
	b, err := proto.Marshal(a.toPB())
	if err != nil {
		t.Fatal(err)
	}
	return b
}
