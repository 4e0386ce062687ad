package service_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/runtime"
)

// TestNetAdsValidator publishes bad ads from a worker's node: the client's topic
// validator drops and counts them, and the book keeps the worker's true ad.
func TestNetAdsValidator(t *testing.T) {
	noLeaks(t)
	f := newNetFixture(t, 2, market.RunOptions{}, nil)
	ctx := context.Background()
	w1, w2 := f.workers[0], f.workers[1]
	good := *w2.svc.Ad()
	good.Seq += 1000
	forged, err := good.Encode() // w2's ad, sent by w1
	if err != nil {
		t.Fatal(err)
	}
	stale := *w1.svc.Ad()
	stale.Seq += 1000
	stale.IssuedAt = time.Now().Add(-time.Hour)
	expired, err := stale.Encode()
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range [][]byte{{0xff, 0xff, 0xff}, forged, expired} {
		if err := w1.node.PublishAd(ctx, netModel, b); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "the bad ads dropped", func() bool {
		st := f.cs.Book().Stats()
		return st.Dropped[market.DropMalformed] >= 1 && st.Dropped[market.DropSender] >= 1 && st.Dropped[market.DropExpired] >= 1
	})
	if ad, ok := f.cs.Book().Get(w2.node.Host.ID()); !ok || ad.Seq == good.Seq {
		t.Errorf("w2's book entry %+v; want its own ad, not the forged one", ad)
	}
	ms, err := f.cs.ListModels(ctx)
	if err != nil || len(ms) != 1 || ms[0].ID != netModel || ms[0].Extra["workers"] != 2 {
		t.Fatalf("ListModels = %+v, %v; want %s offered by 2 workers", ms, err, netModel)
	}
	if s := f.cs.Summaries()[0]; s.MinPrice != (market.Price{Prompt: w1.price.Prompt, Completion: w1.price.Completion}) || len(s.TEE) != 1 || s.TEE[0] != tee.Sim {
		t.Errorf("summary %+v; want the lowest price %+v and tee sim", s, w1.price)
	}
}

// TestNetAdOnChange checks that a worker re-publishes its ad when its free slots
// change: a job holding the only slot shows as 0 free, and 1 again once it ends.
func TestNetAdOnChange(t *testing.T) {
	noLeaks(t)
	armed := &atomic.Bool{}
	armed.Store(true)
	stalled := make(chan int, 1)
	f := newNetFixture(t, 1, market.RunOptions{}, func(_ int, b runtime.Backend) runtime.Backend {
		return &stallBackend{Backend: b, after: 2, armed: armed, stalled: stalled}
	})
	w := f.workers[0]
	free := func() uint32 {
		ad, ok := f.cs.Book().Get(w.node.Host.ID())
		if !ok {
			return 99
		}
		return ad.Capacity.SlotsFree
	}
	if free() != 1 {
		t.Fatalf("idle worker advertises %d free slots; want 1", free())
	}
	req := netRequest(1)
	s, err := f.cs.Generate(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	<-stalled
	waitFor(t, 5*time.Second, "an ad with no free slot", func() bool { return free() == 0 })
	s.Close()
	waitFor(t, 5*time.Second, "an ad with the slot free again", func() bool { return free() == 1 })
}
