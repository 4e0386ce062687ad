package node

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/cocoon-network/cocoon/market"
)

// A default node (client only, no TEE, no chain) reports what its journal saw,
// with no sim or dev ledger mark, and its page renders it.
func TestOverviewOfDefaultNode(t *testing.T) {
	_, cfg := loopbackConfig(t)
	n, err := New(t.Context(), cfg, Options{Logger: slog.New(slog.DiscardHandler), Version: "v-test"})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()

	// A worker this node bought from and is no longer connected to.
	w := peer.ID("\x00\x04gone") // an identity multihash: a valid peer ID
	var id market.JobID
	id[0] = 7
	n.Activity.Attested(market.AttestEvent{Peer: w, Kind: "tdx", Tier: "tdx (confidential)", Verdict: market.VerdictAccepted})
	n.Activity.JobStarted(market.JobEvent{ID: id, Side: market.SideClient, Peer: w, Model: "m", Start: time.Now()})
	n.Activity.Voucher(market.VoucherEvent{Side: market.SideClient, Peer: w, Job: id, NanoTON: 42})
	n.Activity.JobEnded(market.JobEvent{ID: id, Side: market.SideClient, Peer: w, Model: "m", Start: time.Now(),
		CompletionTokens: 3, NanoTON: 42, Outcome: market.OutcomeFailed, Err: errors.New("stream reset")})

	ov := n.Overview()
	nd := ov.Node
	if nd.PeerID != n.P2P.Host.ID().String() || nd.Role != "client" || nd.Version != "v-test" || nd.TEE != "none" || nd.Chain != ChainNone {
		t.Fatalf("node = %+v", nd)
	}
	if nd.SimTEE || nd.AcceptsSim || nd.DevLedger {
		t.Fatalf("default node marked sim %v, accepts sim %v, dev ledger %v", nd.SimTEE, nd.AcceptsSim, nd.DevLedger)
	}
	if len(ov.Done) != 1 || ov.Done[0].Outcome != "failed" || ov.Done[0].Error != "stream reset" || ov.Done[0].NanoTON != 42 || ov.Done[0].Peer != w.String() {
		t.Fatalf("done = %+v", ov.Done)
	}
	if ov.Money.SpentNanoTON != 42 || ov.Money.JobsBought != 1 || ov.Money.TokensBought != 3 {
		t.Fatalf("money = %+v", ov.Money)
	}
	found := false
	for _, p := range ov.Peers {
		if p.ID == w.String() {
			if p.Connected || p.Jobs != 1 || p.OK != 0 || p.Verdict != "accepted" || p.Tier != "tdx (confidential)" || p.Spent != 42 {
				t.Fatalf("gone worker's row = %+v", p)
			}
			found = true
		}
	}
	if !found {
		t.Fatalf("peers %+v lack the worker traded with", ov.Peers)
	}
	if ov.Channels.Error != "" || len(ov.Channels.Payer) != 0 || ov.GPUReason == "" && len(ov.GPUs) == 0 {
		t.Fatalf("channels %+v, gpus %v (%q)", ov.Channels, ov.GPUs, ov.GPUReason)
	}

	srv := httptest.NewServer(n.API.Handler())
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/", nil)
	req.Header.Set("Authorization", "Bearer "+n.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	page := string(b)
	if resp.StatusCode != 200 || !strings.Contains(page, nd.PeerID) || !strings.Contains(page, "stream reset") {
		t.Fatalf("GET / = %s:\n%.500s", resp.Status, page)
	}
	if strings.Contains(page, "simulated TEE") || strings.Contains(page, "dev ledger") {
		t.Fatal("a default node's page shows a sim or dev ledger mark")
	}
}
