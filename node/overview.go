package node

import (
	"bytes"
	"cmp"
	"errors"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/node/activity"
	"github.com/cocoon-network/cocoon/node/gateway"
	"github.com/cocoon-network/cocoon/settle"
	"github.com/cocoon-network/cocoon/settle/devledger"
)

// Overview implements gateway.Info: what the status page shows, from this
// node's connections, ad book, channel store and activity journal. It reads
// the store (one read transaction per list) and holds no lock across parts,
// so the parts may be a few milliseconds apart.
func (n *Node) Overview() gateway.Overview {
	st := n.Status()
	ov := gateway.Overview{
		Time:      time.Now(),
		Node:      n.nodeInfo(st),
		GPUs:      st.GPUs,
		GPUReason: st.GPUReason,
		Peers:     []gateway.PeerRow{},
		Ads:       []gateway.AdRow{},
		InFlight:  []gateway.JobRow{},
		Done:      []gateway.JobRow{},
		Channels:  gateway.Channels{Payer: []gateway.PayerChannel{}, Payee: []gateway.PayeeChannel{}},
	}
	var snap activity.Snapshot
	if n.Activity != nil {
		snap = n.Activity.Snapshot()
	}
	var ads []*market.Ad
	if n.Client != nil {
		ads = n.Client.Book().All()
	}
	workers := make(map[peer.ID]bool, len(ads))
	for _, a := range ads {
		workers[a.Peer] = true
	}

	// Peers: the connected ones, then those this node traded with that are
	// gone, each with what the journal knows of it.
	seen := map[string]bool{}
	for _, p := range n.Peers() {
		row := gateway.PeerRow{Peer: p, Connected: true}
		if id, err := peer.Decode(p.ID); err == nil {
			row.Worker = workers[id]
			if jp, ok := snap.Peer(id); ok {
				fillPeer(&row, jp)
			}
		}
		seen[p.ID] = true
		ov.Peers = append(ov.Peers, row)
	}
	slices.SortFunc(ov.Peers, func(a, b gateway.PeerRow) int { return cmp.Compare(a.ID, b.ID) })
	for _, jp := range snap.Peers {
		if seen[jp.ID.String()] {
			continue
		}
		row := gateway.PeerRow{Peer: gateway.Peer{ID: jp.ID.String(), Addrs: []string{}}, Worker: workers[jp.ID]}
		fillPeer(&row, jp)
		ov.Peers = append(ov.Peers, row)
	}

	for _, a := range ads {
		ov.Ads = append(ov.Ads, adRow(a, snap))
	}
	slices.SortFunc(ov.Ads, func(a, b gateway.AdRow) int { return cmp.Compare(a.Worker, b.Worker) })

	for _, j := range snap.InFlight {
		ov.InFlight = append(ov.InFlight, jobRow(j))
	}
	for _, j := range snap.Done {
		ov.Done = append(ov.Done, jobRow(j))
	}

	ov.Money = gateway.Money{
		EarnedNanoTON: snap.Earned(), SpentNanoTON: snap.Spent(),
		JobsSold: snap.Worker.Jobs, JobsBought: snap.Client.Jobs,
		TokensSold: snap.Worker.CompletionTokens, TokensBought: snap.Client.CompletionTokens,
	}
	n.channels(&ov, ads)
	return ov
}

// nodeInfo is the status page's view of this node itself.
func (n *Node) nodeInfo(st gateway.Status) gateway.NodeInfo {
	cfg := n.Config
	info := gateway.NodeInfo{
		PeerID: st.PeerID, Version: st.Version, UptimeSeconds: st.UptimeSeconds, Addrs: st.Addrs,
		Role: "client", Models: st.Models, Slots: gateway.Slots(st.Slots),
		TEE: cfg.Enclave.Attester.String(), TEETier: cfg.Enclave.Attester.Tier(),
		SimTEE: cfg.Enclave.Attester == tee.Sim,
		// What this node buys from: the one list its selection and its
		// verifier both follow.
		AcceptsSim: cfg.Enclave.Policy.Accepts(tee.Sim),
		Chain:      cfg.Settle.Chain,
	}
	for _, k := range cfg.Enclave.Policy.Kinds() {
		info.AcceptTEE = append(info.AcceptTEE, k.String())
	}
	if n.Worker != nil {
		info.Role = "worker"
	}
	info.DevLedger = cfg.Settle.Chain == ChainDevLedger
	if n.Chain != nil {
		info.Chain = n.Chain.Name()
		switch n.Chain.L.(type) {
		case *devledger.Ledger, *devledger.Client:
			info.DevLedger = true // also a testnet's in-process ledger (Options.Ledger)
		}
	}
	if n.Wallet != nil {
		id := int32(settle.MainnetGlobalID)
		if n.Chain != nil {
			id = n.Chain.L.GlobalID()
		}
		info.Wallet = settle.Friendly(n.Wallet.Address(id))
	}
	return info
}

func fillPeer(row *gateway.PeerRow, p activity.Peer) {
	row.Jobs, row.OK, row.InFlight, row.LastJob = p.Jobs, p.OK, p.InFlight, p.LastJob
	row.Earned, row.Spent = p.Earned, p.Spent
	row.TTFTMS = ms(p.TTFT)
	row.Verdict, row.TEE, row.Tier, row.AttestErr = p.Verdict, p.Kind.String(), p.Tier, p.AttestErr
}

func adRow(a *market.Ad, snap activity.Snapshot) gateway.AdRow {
	row := gateway.AdRow{
		Worker: a.Peer.String(), TEE: a.TEE.Kind.String(), Sim: a.TEE.Kind == tee.Sim,
		Slots:  gateway.Slots{Total: int(a.Capacity.SlotsTotal), Free: int(a.Capacity.SlotsFree), Queued: int(a.Capacity.QueueLength)},
		Issued: a.IssuedAt, Expiry: a.Expires(), Seq: a.Seq,
		Wallet: a.Settlement.WalletAddress, MinDeposit: a.Settlement.MinDeposit,
		GPUs: make([]gateway.GPU, 0, len(a.Capacity.GPUs)), Models: make([]gateway.AdModel, 0, len(a.Models)),
	}
	for _, g := range a.Capacity.GPUs {
		row.GPUs = append(row.GPUs, gateway.GPU{Name: g.Name, VRAMBytes: g.VRAM})
	}
	for _, m := range a.Models {
		row.Models = append(row.Models, gateway.AdModel{
			ID: m.ID, PromptPrice: m.Price.Prompt, CompletionPrice: m.Price.Completion,
			ContextLength: m.ContextLength, TTFTMS: ms(m.TTFT), TPOTMS: ms(m.TimePerToken),
			Llama: m.Llama, Layers: m.Layers, GPULayers: m.GPULayers,
		})
	}
	if p, ok := snap.Peer(a.Peer); ok && p.TTFT > 0 {
		row.Measured = &gateway.MeasuredAd{TTFTMS: ms(p.TTFT), Jobs: p.Jobs}
	}
	return row
}

func jobRow(j activity.Job) gateway.JobRow {
	return gateway.JobRow{
		ID: j.ID, Side: string(j.Side), Peer: j.Peer.String(), Model: j.Model, Start: j.Start, End: j.End,
		TTFTMS: ms(j.TTFT), DurationMS: ms(j.Duration),
		PromptTokens: j.PromptTokens, CompletionTokens: j.CompletionTokens, NanoTON: j.NanoTON,
		Outcome: string(j.Outcome), Error: j.Err,
	}
}

// channels lists the channel store's channels, both sides, and sums them into
// ov.Money; a payer channel names its worker's peer when an ad carries the
// worker's channel key.
func (n *Node) channels(ov *gateway.Overview, ads []*market.Ad) {
	var errs error
	if n.Payer != nil {
		recs, err := n.Payer.Channels()
		errs = errors.Join(errs, err)
		for _, r := range recs {
			c := gateway.PayerChannel{
				ID: r.Channel.ID.String(), Address: channelAddress(r.Channel), Worker: settle.Friendly(r.Channel.WorkerAddr),
				Deposit: r.Deposit, Sent: r.Sent, Seqno: r.Seqno, Closed: r.Closed, Updated: r.Updated,
			}
			if r.Sent < r.Deposit {
				c.Left = r.Deposit - r.Sent
			}
			for _, a := range ads {
				if len(a.Settlement.ChannelKey) > 0 && bytes.Equal(a.Settlement.ChannelKey, r.Channel.WorkerKey) {
					c.Worker = a.Peer.String()
					break
				}
			}
			if !r.Closed {
				ov.Money.DepositedNanoTON += r.Deposit
				ov.Money.SentNanoTON += r.Sent
			}
			ov.Channels.Payer = append(ov.Channels.Payer, c)
		}
	}
	if n.Payee != nil {
		recs, err := n.Payee.Channels()
		errs = errors.Join(errs, err)
		for _, r := range recs {
			ov.Channels.Payee = append(ov.Channels.Payee, gateway.PayeeChannel{
				ID: r.Channel.ID.String(), Address: channelAddress(r.Channel), Client: settle.Friendly(r.Channel.ClientAddr),
				Deposit: r.Deposit, Balance: r.Sent, Seqno: r.Seqno, Closed: r.Closed, Updated: r.Updated,
			})
			if !r.Closed {
				ov.Money.ToClaimNanoTON += r.Sent
			}
		}
	}
	if errs != nil {
		ov.Channels.Error = errs.Error()
	}
}

func channelAddress(ch settle.Channel) string {
	a, err := ch.Address()
	if err != nil {
		return ch.ID.String()
	}
	return settle.Friendly(a)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
