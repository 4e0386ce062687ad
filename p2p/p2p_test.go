package p2p

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
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

// loopbackNodes starts three real DHT-server nodes listening on listen, the
// second and third bootstrapped from the first.
func loopbackNodes(t *testing.T, listen ...string) []*Node {
	t.Helper()
	var ns []*Node
	for i := range 3 {
		cfg := Config{
			Identity: newKey(t),
			Listen:   listen,
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
	return ns
}

// TestProvideOverLoopback runs three real hosts on 127.0.0.1 (TCP and QUIC).
func TestProvideOverLoopback(t *testing.T) {
	ns := loopbackNodes(t, "/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1")
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

func TestAdTopic(t *testing.T) {
	if got, want := AdTopic("stories260K"), "/cocoon/ads/1/"+goldenStoriesKey; got != want {
		t.Fatalf("AdTopic(stories260K) = %q; want %q", got, want)
	}
	long := strings.Repeat("m", 10_000)
	if a, b := AdTopic(long), AdTopic(""); len(a) != len(b) {
		t.Fatalf("AdTopic lengths %d and %d; want the same for any id", len(a), len(b))
	}
}

// TestJoinLeaveModel joins and leaves a model's ads topic: joining twice is
// one subscription, the other peer sees the subscription come and go, and
// after leaving no ad of the model is delivered.
func TestJoinLeaveModel(t *testing.T) {
	ns := mockNodes(t, 2)
	got := make(chan string, 10)
	ns[1].SetAdHandler(func(model string, _ peer.ID, data []byte) { got <- model + ":" + string(data) })
	for range 2 {
		if err := ns[1].JoinModel("a"); err != nil {
			t.Fatal(err)
		}
	}
	if err := ns[1].JoinModel("b"); err != nil {
		t.Fatal(err)
	}
	if j := ns[1].JoinedModels(); len(j) != 2 || j[0] != "a" || j[1] != "b" {
		t.Fatalf("JoinedModels = %v; want [a b]", j)
	}
	connect(t, ns[0], ns[1])
	if err := ns[0].JoinModel("a"); err != nil { // to see ns[1] in the topic
		t.Fatal(err)
	}
	waitModelPeer(t, ns[0], "a", ns[1].Host.ID())
	if err := ns[0].PublishAd(context.Background(), "a", []byte("one")); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s != "a:one" {
		t.Fatalf("delivered %q; want a:one", s)
	}
	ns[1].LeaveModel("a")
	ns[1].LeaveModel("a") // twice: nothing
	if j := ns[1].JoinedModels(); len(j) != 1 || j[0] != "b" || ns[1].Joined("a") {
		t.Fatalf("JoinedModels after leaving a = %v; want [b]", j)
	}
	deadline := time.Now().Add(5 * time.Second)
	for slices.Contains(ns[0].AdPeers("a"), ns[1].Host.ID()) {
		if time.Now().After(deadline) {
			t.Fatal("the other peer still sees the subscription to a")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := ns[0].PublishAd(context.Background(), "a", []byte("two")); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		t.Fatalf("delivered %q after leaving the topic", s)
	case <-time.After(300 * time.Millisecond):
	}
	if err := ns[1].JoinModel("a"); err != nil { // and back
		t.Fatal(err)
	}
	waitModelPeer(t, ns[0], "a", ns[1].Host.ID())
	if err := ns[0].PublishAd(context.Background(), "a", []byte("three")); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s != "a:three" {
		t.Fatalf("delivered %q; want a:three", s)
	}
}

// TestAdOnOtherModelsTopic: the validator is told the topic's model, so that
// an ad published on the topic of a model it does not offer is rejected, and
// the peer that delivered it loses score; an ad is only delivered on the
// topics of the models joined (a node joined to b alone receives none of a's).
func TestAdOnOtherModelsTopic(t *testing.T) {
	ns := mockNodes(t, 3)
	pub, onA, onB := ns[0], ns[1], ns[2]
	type delivery struct {
		node  int
		model string
		data  string
	}
	got := make(chan delivery, 20)
	validated := make(chan string, 20)
	for i, n := range ns {
		n.SetAdHandler(func(model string, _ peer.ID, data []byte) { got <- delivery{i, model, string(data)} })
		if i == 0 {
			continue // the publisher validates nothing: it plays the spammer
		}
		n.SetAdsValidator(func(_ context.Context, model string, _, _ peer.ID, data []byte) pubsub.ValidationResult {
			validated <- model
			if !strings.HasPrefix(string(data), "offers "+model) {
				return pubsub.ValidationReject
			}
			return pubsub.ValidationAccept
		})
	}
	if err := onA.JoinModel("a"); err != nil {
		t.Fatal(err)
	}
	if err := onB.JoinModel("b"); err != nil {
		t.Fatal(err)
	}
	connect(t, pub, onA)
	connect(t, pub, onB)
	connect(t, onA, onB)
	ctx := context.Background()
	if err := pub.PublishAd(ctx, "a", []byte("offers a")); err != nil { // a topic opened to publish only
		t.Fatal(err)
	}
	waitModelPeer(t, pub, "a", onA.Host.ID())
	if err := pub.PublishAd(ctx, "a", []byte("offers b, on a's topic")); err != nil {
		t.Fatal(err)
	}
	if err := pub.PublishAd(ctx, "a", []byte("offers a, again")); err != nil {
		t.Fatal(err)
	}
	var at1 []string
	deadline := time.After(3 * time.Second)
	for len(at1) < 2 {
		select {
		case d := <-got:
			if d.node != 1 || d.model != "a" {
				t.Fatalf("node %d got %q on %s; only node 1 is joined to a", d.node, d.data, d.model)
			}
			at1 = append(at1, d.data)
		case <-deadline:
			t.Fatalf("node 1 got %q; want the two ads offering a", at1)
		}
	}
	if at1[0] != "offers a, again" && at1[1] != "offers a, again" {
		t.Fatalf("node 1 got %q", at1)
	}
	deadline = time.After(5 * time.Second)
	for s, _ := onA.Score(pub.Host.ID()); s >= 0; s, _ = onA.Score(pub.Host.ID()) {
		select {
		case <-deadline:
			t.Fatalf("the publisher's score at node 1 is %v after an ad on the wrong topic; want below 0", s)
		case <-time.After(50 * time.Millisecond):
		}
	}
	select {
	case d := <-got:
		t.Fatalf("node %d got %q on %s", d.node, d.data, d.model)
	case <-time.After(300 * time.Millisecond):
	}
	for len(validated) > 0 {
		if m := <-validated; m != "a" {
			t.Fatalf("a validator saw a message of %s; only a was published", m)
		}
	}
}

// TestBlock cuts a blocked peer off and keeps it out.
func TestBlock(t *testing.T) {
	ns := mockNodes(t, 2)
	connect(t, ns[0], ns[1])
	ns[0].Block(ns[1].Host.ID())
	if !ns[0].Blocked(ns[1].Host.ID()) || ns[1].Blocked(ns[0].Host.ID()) {
		t.Fatal("Blocked does not say who is blocked")
	}
	deadline := time.Now().Add(5 * time.Second)
	for ns[0].Host.Network().Connectedness(ns[1].Host.ID()) == network.Connected {
		if time.Now().After(deadline) {
			t.Fatal("the blocked peer is still connected")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// It dials back: the connection is cut as it comes (a mocknet host has no gater of ours).
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = ns[1].Host.Connect(ctx, peer.AddrInfo{ID: ns[0].Host.ID(), Addrs: ns[0].Host.Addrs()})
	deadline = time.Now().Add(5 * time.Second)
	for ns[0].Host.Network().Connectedness(ns[1].Host.ID()) == network.Connected {
		if time.Now().After(deadline) {
			t.Fatal("the blocked peer reconnected")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if ns[0].blocks.InterceptPeerDial(ns[1].Host.ID()) || ns[0].blocks.InterceptSecured(network.DirInbound, ns[1].Host.ID(), nil) {
		t.Fatal("the gater lets the blocked peer through")
	}
}

// TestDualDHTProtocols: the WAN and LAN DHTs each answer on their own
// protocol. With one prefix given to both, the LAN DHT's handler took the
// WAN's protocol and answered its queries from a table of private addresses
// alone: on public addresses every lookup came back empty (found by
// testnet/sim).
func TestDualDHTProtocols(t *testing.T) {
	n := mockNodes(t, 1)[0]
	var wan, lan bool
	for _, p := range n.Host.Mux().Protocols() {
		wan = wan || p == DHTPrefix+"/kad/1.0.0"
		lan = lan || p == DHTPrefix+"/lan/kad/1.0.0"
	}
	if !wan || !lan {
		t.Fatalf("protocols %v; want %s/kad/1.0.0 (WAN) and %s/lan/kad/1.0.0 (LAN)", n.Host.Mux().Protocols(), DHTPrefix, DHTPrefix)
	}
}

// TestDialByID: a node dials a peer it knows by ID alone (as a client does
// a worker whose ad came by gossipsub) at the addresses the DHT finds; a
// basic host failed with "no addresses", which in the NAT lab kept every
// client from its worker behind a NAT.
func TestDialByID(t *testing.T) {
	ns := loopbackNodes(t, "/ip4/127.0.0.1/tcp/0")
	deadline := time.Now().Add(10 * time.Second)
	for ns[0].RoutingTableSize() < 2 || ns[2].RoutingTableSize() < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the routing tables did not fill: the bootstrap node's with both peers, the asker's with the bootstrap node")
		}
		time.Sleep(10 * time.Millisecond)
	}
	a, b := ns[2], ns[1].Host.ID()
	a.Host.Network().ClosePeer(b)
	a.Host.Peerstore().ClearAddrs(b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Host.Connect(ctx, peer.AddrInfo{ID: b}); err != nil {
		t.Fatalf("Connect(%s) with no known addresses: %v; want the DHT's", b, err)
	}
}
