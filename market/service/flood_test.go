package service_test

import (
	"context"
	"fmt"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/market/service"
	"github.com/cocoon-network/cocoon/p2p"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

// strangerNode adds a bare p2p node (no market service: it validates
// nothing) to f's mocknet, connected to the client.
func strangerNode(t *testing.T, f *netFixture) *p2p.Node {
	t.Helper()
	h, err := f.mn.GenPeer()
	if err != nil {
		t.Fatal(err)
	}
	nd, err := p2p.New(context.Background(), p2p.Config{Host: h, DHTMode: p2p.DHTServer, Logger: f.log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nd.Close() })
	if err := f.mn.LinkAll(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := nd.Host.Connect(ctx, peer.AddrInfo{ID: f.client.Host.ID(), Addrs: f.client.Host.Addrs()}); err != nil {
		t.Fatal(err)
	}
	return nd
}

// TestNetAdFlood: a peer publishing a made-up model's ads at 100 a second (100
// times the allowed rate) has its ads beyond the rate rejected, is blocked and
// disconnected at the flood line (its burst, then the FloodExcess-th ad beyond
// it), and its model
// is never listed; the honest worker's ads keep arriving.
func TestNetAdFlood(t *testing.T) {
	noLeaks(t)
	f := newNetFixture(t, 1, market.RunOptions{}, nil)
	w := f.workers[0]
	flooder := strangerNode(t, f)
	const fake = "made-up-model"
	if err := f.client.JoinModel(fake); err != nil { // as a request for it would
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !slices.Contains(flooder.AdPeers(fake), f.client.Host.ID()) {
		if err := flooder.PublishAd(context.Background(), fake, service.StrangerAd(t, flooder.Host.ID(), fake, 1)); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("the client's subscription never reached the flooder")
		}
		time.Sleep(10 * time.Millisecond)
	}
	before, _ := f.cs.Book().Get(w.node.Host.ID())
	seq := uint64(time.Now().UnixMicro())
	for range 200 { // 2 s at 100 a second
		if f.client.Blocked(flooder.Host.ID()) {
			break
		}
		seq++
		_ = flooder.PublishAd(context.Background(), fake, service.StrangerAd(t, flooder.Host.ID(), fake, seq))
		time.Sleep(10 * time.Millisecond)
	}
	waitFor(t, 5*time.Second, "the flooder blocked and disconnected", func() bool {
		return f.client.Blocked(flooder.Host.ID()) && f.client.Host.Network().Connectedness(flooder.Host.ID()) != network.Connected
	})
	if n := f.cs.Book().Stats().Dropped[market.DropRate]; n == 0 {
		t.Error("no ad was dropped for its rate")
	}
	if _, ok := f.cs.Book().Get(flooder.Host.ID()); ok {
		t.Error("the flooder's ad is still in the book")
	}
	for _, m := range f.cs.Models() {
		if m.ID == fake {
			t.Errorf("Models lists the flooder's %s", fake)
		}
	}
	ms, err := f.cs.ListModels(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.ID == fake {
			t.Errorf("ListModels lists the flooder's %s: %+v", fake, m)
		}
	}
	// The honest worker's next ad still comes.
	w.svc.Republish()
	waitFor(t, 5*time.Second, "the honest worker's next ad", func() bool {
		ad, ok := f.cs.Book().Get(w.node.Host.ID())
		return ok && ad.Seq > before.Seq
	})
	if n := f.cs.Book().Stats().Dropped[market.DropRate]; n > 200 {
		t.Errorf("%d ads dropped for their rate; the flooder sent at most 200", n)
	}
	t.Logf("rate drops %d, book %+v", f.cs.Book().Stats().Dropped[market.DropRate], f.cs.Book().Stats())
}

// TestNetCatalogue: /v1/models lists the joined model with its ads' details
// and "joined": true, and a model only the catalogue names with "joined":
// false and no price. A third catalogue message within 5 minutes is over
// the rate and changes nothing.
func TestNetCatalogue(t *testing.T) {
	noLeaks(t)
	f := newNetFixture(t, 1, market.RunOptions{}, nil)
	other := strangerNode(t, f)
	waitFor(t, 5*time.Second, "the client in the catalogue topic", func() bool {
		return slices.Contains(other.Catalogue.ListPeers(), f.client.Host.ID())
	})
	ctx := context.Background()
	byID := func() map[string]map[string]any {
		ms, err := f.cs.ListModels(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]map[string]any{}
		for _, m := range ms {
			out[m.ID] = m.Extra
		}
		return out
	}
	// One at a time: validation runs concurrently, so two in flight may be
	// taken in either order.
	for i, models := range [][]string{{"other-model"}, {"other-model", "second-model"}, {"third-model"}} {
		if err := other.PublishCatalogue(ctx, service.EncodeCatalogue(models)); err != nil {
			t.Fatalf("catalogue %d: %v", i, err)
		}
		if i < 2 {
			waitFor(t, 5*time.Second, fmt.Sprintf("catalogue %d listed", i), func() bool {
				return byID()[models[len(models)-1]] != nil
			})
		}
	}
	time.Sleep(200 * time.Millisecond) // the third message, had it been taken
	m := byID()
	if m["third-model"] != nil {
		t.Errorf("a third catalogue message within %s was taken: %v", service.CatalogueEvery, m)
	}
	if x := m["other-model"]; x["joined"] != false || x["workers"] != nil || x["price_nanoton_per_1m"] != nil {
		t.Errorf("other-model listed as %v; want joined false, no workers, no price", x)
	}
	if x := m[netModel]; x["joined"] != true || x["workers"] != 1 || x["price_nanoton_per_1m"] == nil {
		t.Errorf("%s listed as %v; want joined, 1 worker, prices", netModel, x)
	}
	for _, rm := range f.cs.Models() {
		if rm.ID != netModel {
			t.Errorf("Models lists %s; only the book's models are servable", rm.ID)
		}
	}
}

// TestNetJoinOnFirstRequest: a client that follows no model's ads answers its
// first request for one from the DHT's providers, and joins the model's ads
// topic on the way, so that the worker's ads fill its book from then on.
func TestNetJoinOnFirstRequest(t *testing.T) {
	noLeaks(t)
	f := newNetFixture(t, 1, market.RunOptions{}, nil)
	w := f.workers[0]
	nd := strangerNode(t, f)
	if err := f.mn.ConnectAllButSelf(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the worker's provider record", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		ais, _ := nd.FindProviders(ctx, netModel, 1)
		return len(ais) == 1
	})
	cs, err := service.NewClient(service.ClientConfig{
		Node: nd, Payer: f.payers.Payer, Verifier: f.verifier,
		Policy: market.Policy{TEE: []tee.Kind{tee.Sim}}, Logger: f.log.With("client", "late"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	if j := cs.Joined(); len(j) != 0 {
		t.Fatalf("joined %v before any request; want none", j)
	}
	s, err := cs.Generate(context.Background(), netRequest(0))
	if err != nil {
		t.Fatalf("first request, served from the DHT: %v", err)
	}
	got, err := drain(s)
	s.Close()
	if err != nil || got.tokens == 0 {
		t.Fatalf("first answer: %+v, %v", got, err)
	}
	if j := cs.Joined(); !slices.Equal(j, []string{netModel}) {
		t.Fatalf("joined %v after the first request; want [%s]", j, netModel)
	}
	w.svc.Republish()
	waitFor(t, 10*time.Second, "the worker's ad in the new client's book", func() bool {
		_, ok := cs.Book().Get(w.node.Host.ID())
		return ok
	})
}

// TestNetAskNames: a node that follows no model and knows none asks its
// first peers which model ids they know (p2p.ProtocolModels), so its
// /v1/models names the network's models at once, not after the catalogue's
// next round (up to 5 min); the names are hints, listed joined false. A peer
// that asks too often is refused.
func TestNetAskNames(t *testing.T) {
	noLeaks(t)
	f := newNetFixture(t, 1, market.RunOptions{}, nil)
	waitFor(t, 10*time.Second, "the fixture client's book", func() bool { return len(f.cs.Book().All()) > 0 })
	nd := strangerNode(t, f) // connects to the fixture's client, which knows the model
	cs, err := service.NewClient(service.ClientConfig{Node: nd, Payer: service.NewPayers(f.payer).Payer,
		Verifier: f.verifier, Policy: market.Policy{TEE: []tee.Kind{tee.Sim}}, Logger: f.log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	// The connection came before the service: a new one asks.
	nd.Host.Network().ClosePeer(f.client.Host.ID())
	ctx := context.Background()
	if err := nd.Host.Connect(ctx, peer.AddrInfo{ID: f.client.Host.ID(), Addrs: f.client.Host.Addrs()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the model's name heard from a peer", func() bool {
		ms, err := cs.ListModels(ctx)
		return err == nil && slices.ContainsFunc(ms, func(m openaiapi.Model) bool {
			return m.ID == netModel && m.Extra["joined"] == false
		})
	})
	// Asked too often, a peer answers nothing: the burst, then a reset.
	for i := range service.AskNamesBurst + 1 {
		s, err := nd.Host.NewStream(ctx, f.client.Host.ID(), p2p.ProtocolModels)
		if err != nil {
			t.Fatal(err)
		}
		s.CloseWrite()
		b, err := io.ReadAll(s)
		s.Close()
		if names, ok := service.DecodeCatalogue(b); i < service.AskNamesBurst-1 && (err != nil || !ok || !slices.Contains(names, netModel)) {
			t.Fatalf("ask %d: %q, %v", i, b, err)
		} else if i == service.AskNamesBurst && len(b) != 0 {
			t.Fatalf("ask %d, past the rate: answered %q", i, b)
		}
	}
}
