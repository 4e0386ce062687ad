package p2p

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	mh "github.com/multiformats/go-multihash"
)

func TestModelKey(t *testing.T) {
	for _, model := range []string{"stories260K", "llama-3.1-8b-instruct", ""} {
		k := ModelKey(model)
		if k.Version() != 1 || k.Type() != cid.Raw {
			t.Fatalf("ModelKey(%q) = %s: want CIDv1 raw", model, k)
		}
		dec, err := mh.Decode(k.Hash())
		if err != nil {
			t.Fatal(err)
		}
		want := sha256.Sum256([]byte("cocoon/model/v1/" + model))
		if dec.Code != mh.SHA2_256 || !bytes.Equal(dec.Digest, want[:]) {
			t.Fatalf("ModelKey(%q) digest %x (code %x); want sha2-256 %x", model, dec.Digest, dec.Code, want)
		}
	}
	// Golden value: a change here splits the network's provider records.
	if got, want := ModelKey("stories260K").String(), goldenStoriesKey; got != want {
		t.Fatalf("ModelKey(stories260K) = %s; want %s", got, want)
	}
}

// goldenStoriesKey is CIDv1(raw, sha2-256("cocoon/model/v1/stories260K")) in base32,
// computed independently: "b" + base32(01 55 12 20 ‖ sha256(...)).
const goldenStoriesKey = "bafkreihxwux7j6irjozbppcwge3dgdgn7jmesfrkacwm5le53bw2lbzkqi"

func TestParseBootstrap(t *testing.T) {
	good := "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"
	if ais, err := ParseBootstrap([]string{good}); err != nil || len(ais) != 1 {
		t.Fatalf("ParseBootstrap(%s) = %v, %v", good, ais, err)
	}
	for _, bad := range []string{"/ip4/1.2.3.4/tcp/x", "/ip4/127.0.0.1/tcp/4001", "not a multiaddr"} {
		_, err := ParseBootstrap([]string{good, bad})
		if err == nil || !strings.Contains(err.Error(), "p2p.bootstrap[1]") {
			t.Errorf("ParseBootstrap(%q) = %v; want an error naming p2p.bootstrap[1]", bad, err)
		}
	}
	if _, err := New(context.Background(), Config{Identity: newKey(t), DHTMode: "sometimes"}); err == nil || !strings.Contains(err.Error(), "p2p.dht_mode") {
		t.Errorf("New with dht_mode=sometimes: %v; want error naming p2p.dht_mode", err)
	}
}

func newKey(t testing.TB) crypto.PrivKey {
	sk, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return sk
}

// mockPair starts two nodes on a fresh mocknet, linked but not yet connected.
func mockNodes(t *testing.T, n int) []*Node {
	mn := mocknet.New()
	t.Cleanup(func() { mn.Close() })
	var out []*Node
	for range n {
		h, err := mn.GenPeer()
		if err != nil {
			t.Fatal(err)
		}
		nd, err := New(context.Background(), Config{Host: h, DHTMode: DHTServer})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nd.Close() })
		out = append(out, nd)
	}
	if err := mn.LinkAll(); err != nil {
		t.Fatal(err)
	}
	return out
}

func connect(t *testing.T, a, b *Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.Host.Connect(ctx, peer.AddrInfo{ID: b.Host.ID(), Addrs: b.Host.Addrs()}); err != nil {
		t.Fatal(err)
	}
}

const testModel = "stories260K"

// waitTopicPeer waits until n knows p joined testModel's ads topic.
func waitTopicPeer(t *testing.T, n *Node, p peer.ID) {
	t.Helper()
	waitModelPeer(t, n, testModel, p)
}

func waitModelPeer(t *testing.T, n *Node, model string, p peer.ID) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, q := range n.AdPeers(model) {
			if q == p {
				return
			}
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("%s never saw %s subscribe", n.Host.ID(), p)
}

// TestPublishBeforeMesh publishes as soon as the other peer's subscription is known,
// before the first gossipsub heartbeat grafts a mesh. Without flood publishing the
// message reaches nobody (go-libp2p-pubsub v0.19), and this test times out.
func TestPublishBeforeMesh(t *testing.T) {
	ns := mockNodes(t, 2)
	got := make(chan []byte, 1)
	for _, n := range ns {
		if err := n.JoinModel(testModel); err != nil {
			t.Fatal(err)
		}
	}
	ns[1].SetAdHandler(func(_ string, origin peer.ID, data []byte) {
		if origin == ns[0].Host.ID() {
			got <- data
		}
	})
	connect(t, ns[0], ns[1])
	waitTopicPeer(t, ns[0], ns[1].Host.ID())
	if err := ns[0].PublishAd(context.Background(), testModel, []byte("first ad")); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-got:
		if string(b) != "first ad" {
			t.Fatalf("got %q", b)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("an ad published before the mesh formed was lost")
	}
}

func TestAdsValidator(t *testing.T) {
	ns := mockNodes(t, 2)
	got := make(chan string, 10)
	ns[1].SetAdHandler(func(_ string, _ peer.ID, data []byte) { got <- string(data) })
	seen := make(chan peer.ID, 10)
	for _, n := range ns {
		if err := n.JoinModel(testModel); err != nil {
			t.Fatal(err)
		}
		n.SetAdsValidator(func(_ context.Context, _ string, _, origin peer.ID, data []byte) pubsub.ValidationResult {
			seen <- origin
			if string(data) == "bad" {
				return pubsub.ValidationReject
			}
			return pubsub.ValidationAccept
		})
	}
	connect(t, ns[0], ns[1])
	waitTopicPeer(t, ns[0], ns[1].Host.ID())
	if err := ns[0].PublishAd(context.Background(), testModel, bytes.Repeat([]byte("x"), MaxAdSize+1)); err == nil {
		t.Fatal("PublishAd accepted an oversized ad")
	}
	// The topic runs the same validator locally: a bad ad fails.
	if err := ns[0].PublishAd(context.Background(), testModel, []byte("bad")); err == nil {
		t.Fatal("topic accepted an ad its validator rejects")
	}
	if err := ns[0].PublishAd(context.Background(), testModel, []byte("good")); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		if s != "good" {
			t.Fatalf("delivered %q; want only \"good\"", s)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("valid ad not delivered")
	}
	if origin := <-seen; origin != ns[0].Host.ID() {
		t.Fatalf("validator saw origin %s; want %s", origin, ns[0].Host.ID())
	}
}

// TestProvideOverLoopback runs three real hosts on 127.0.0.1 (TCP and QUIC).
func TestProvideOverLoopback(t *testing.T) {
	var ns []*Node
	for i := range 3 {
		cfg := Config{
			Identity: newKey(t),
			Listen:   []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"},
			DHTMode:  DHTServer,
		}
		if i > 0 {
			cfg.Bootstrap = []string{ns[0].Host.Addrs()[0].String() + "/p2p/" + ns[0].Host.ID().String()}
		}
		n, err := New(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		ns = append(ns, n)
	}
	deadline := time.Now().Add(10 * time.Second)
	for ns[1].RoutingTableSize() == 0 || ns[2].RoutingTableSize() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("routing tables stayed empty")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ns[1].Provide(ctx, "stories260K"); err != nil {
		t.Fatal(err)
	}
	ais, err := ns[2].FindProviders(ctx, "stories260K", 1)
	if err != nil || len(ais) != 1 || ais[0].ID != ns[1].Host.ID() {
		t.Fatalf("FindProviders = %v, %v; want [%s]", ais, err, ns[1].Host.ID())
	}
	if ais, _ := ns[2].FindProviders(ctx, "no-such-model", 1); len(ais) != 0 {
		t.Fatalf("FindProviders(no-such-model) = %v; want none", ais)
	}
}
