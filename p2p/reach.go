package p2p

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/host/autorelay"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/proto"
	"github.com/libp2p/go-libp2p/p2p/protocol/holepunch"
	ma "github.com/multiformats/go-multiaddr"
)

// Reachability verdicts (Reachability.Verdict, Config.Reachability).
const (
	ReachUnknown = "unknown" // AutoNAT has no verdict yet (or no peer answered)
	ReachPublic  = "public"  // peers dialled this node back: it serves relays
	ReachPrivate = "private" // peers could not: it reserves slots on relays
)

// DirectWait is how long NewStream waits for hole punching to replace a
// relayed connection with a direct one before it opens the stream on the
// relayed one; after a wait in vain it opens streams to that peer on the
// relayed connection at once for NoDirectFor (hole punching goes on
// meanwhile, and a direct connection it makes is used as soon as it exists).
const (
	DirectWait  = 5 * time.Second
	NoDirectFor = 10 * time.Minute
)

// Reachability is how the node can be reached, as go-libp2p sees it now.
type Reachability struct {
	// Verdict is AutoNAT's: ReachPublic, ReachPrivate or ReachUnknown.
	Verdict string
	// Relays are the relays on which the node holds a reservation (read from
	// its /p2p-circuit addresses): a private node is dialled through them.
	Relays []peer.ID
	// Direct and Relayed count the open connections of each kind (a relayed
	// connection is a limited one: relay v2 resets it after RelayLimit).
	Direct, Relayed int
	// HolePunches and HolePunchFailures count DCUtR upgrades since start: a
	// relayed connection turned into a direct one (by a direct dial, the
	// connection reversal DCUtR tries first, or by a hole punch), or not.
	HolePunches, HolePunchFailures int64
}

// Reachability reports the node's AutoNAT verdict, its relays and its
// connections. It is safe for concurrent use.
func (n *Node) Reachability() Reachability {
	r := Reachability{Verdict: n.reach.verdict()}
	r.HolePunches, r.HolePunchFailures = n.reach.punched.Load(), n.reach.failed.Load()
	for _, a := range n.Host.Addrs() {
		if id, ok := circuitRelay(a); ok && !slices.Contains(r.Relays, id) {
			r.Relays = append(r.Relays, id)
		}
	}
	for _, c := range n.Host.Network().Conns() {
		if c.Stat().Limited {
			r.Relayed++
		} else {
			r.Direct++
		}
	}
	return r
}

// circuitRelay is the relay of a /…/p2p/<relay>/p2p-circuit address.
func circuitRelay(a ma.Multiaddr) (peer.ID, bool) {
	relay, _ := ma.SplitFunc(a, func(c ma.Component) bool { return c.Protocol().Code == ma.P_CIRCUIT })
	if len(relay) == len(a) {
		return "", false
	}
	id, err := peer.IDFromP2PAddr(relay)
	return id, err == nil
}

// reach holds what Reachability reports beyond the host's own state: the
// last AutoNAT verdict and the hole-punch counts. Its zero value is usable.
type reach struct {
	last            atomic.Value // string
	punched, failed atomic.Int64
}

func (r *reach) verdict() string {
	if v, ok := r.last.Load().(string); ok {
		return v
	}
	return ReachUnknown
}

// Trace implements holepunch.EventTracer: it counts finished upgrades. A
// failed direct dial is followed by a hole punch, counted when it ends.
func (r *reach) Trace(evt *holepunch.Event) {
	switch e := evt.Evt.(type) {
	case *holepunch.DirectDialEvt:
		if e.Success {
			r.punched.Add(1)
		}
	case *holepunch.EndHolePunchEvt:
		if e.Success {
			r.punched.Add(1)
		} else {
			r.failed.Add(1)
		}
	}
}

// watchReachability records AutoNAT's verdicts (the event autorelay and the
// relay service act on) until ctx ends.
func (n *Node) watchReachability(ctx context.Context) error {
	sub, err := n.Host.EventBus().Subscribe(new(event.EvtLocalReachabilityChanged))
	if err != nil {
		return fmt.Errorf("p2p: subscribe to reachability: %w", err)
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer sub.Close()
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-sub.Out():
				if !ok {
					return
				}
				v := verdictOf(e.(event.EvtLocalReachabilityChanged).Reachability)
				if v != n.reach.verdict() {
					n.log.Info("reachability", "verdict", v)
				}
				n.reach.last.Store(v)
			}
		}
	}()
	return nil
}

func verdictOf(r network.Reachability) string {
	switch r {
	case network.ReachabilityPublic:
		return ReachPublic
	case network.ReachabilityPrivate:
		return ReachPrivate
	}
	return ReachUnknown
}

// relayCandidates is AutoRelay's peer source: the connected peers that
// offer relay v2's hop protocol (public nodes with Config.RelayService).
// The host is read through h because the source is built before the host.
func relayCandidates(h *atomic.Pointer[host.Host]) autorelay.PeerSource {
	return func(ctx context.Context, num int) <-chan peer.AddrInfo {
		out := make(chan peer.AddrInfo, max(num, 0))
		defer close(out)
		hp := h.Load()
		if hp == nil {
			return out
		}
		hh := *hp
		for _, p := range hh.Network().Peers() {
			if len(out) == cap(out) {
				break
			}
			if hh.Network().Connectedness(p) != network.Connected {
				continue // reached through a relay: not a relay for us
			}
			if ok, _ := hh.Peerstore().SupportsProtocols(p, proto.ProtoIDv2Hop); len(ok) == 0 {
				continue
			}
			out <- peer.AddrInfo{ID: p, Addrs: hh.Peerstore().Addrs(p)}
		}
		return out
	}
}

// NewStream opens a stream to p for pid, dialling p if needed, through a
// relay if p is reachable only so. A stream goes on a relayed connection
// only while no direct one exists: given a relayed connection alone, it
// waits up to DirectWait for hole punching (DCUtR) to add a direct one.
// A stream on a relayed connection lives within the relay's limits (relay
// v2: 2 minutes and 128 KiB each way by default); past them the relay
// resets the connection and the stream fails with a reset.
func (n *Node) NewStream(ctx context.Context, p peer.ID, pid protocol.ID) (network.Stream, error) {
	limited := network.WithAllowLimitedConn(ctx, string(pid))
	if n.Host.Network().Connectedness(p) != network.Connected {
		if err := n.Host.Connect(limited, peer.AddrInfo{ID: p}); err != nil {
			return nil, err
		}
	}
	if n.Host.Network().Connectedness(p) == network.Limited {
		if t, ok := n.noDirect.Load(p); !ok || time.Since(t.(time.Time)) >= NoDirectFor {
			wctx, cancel := context.WithTimeout(ctx, DirectWait)
			s, err := n.Host.NewStream(network.WithNoDial(wctx, "await a direct connection"), p, pid)
			cancel()
			if err == nil || ctx.Err() != nil {
				return s, err
			}
			n.noDirect.Store(p, time.Now())
			n.log.Debug("no direct connection, opening on the relayed one", "peer", p, "protocol", pid, "err", err)
		}
		return n.Host.NewStream(network.WithNoDial(limited, "relayed"), p, pid)
	}
	return n.Host.NewStream(ctx, p, pid)
}

// peerRouting finds a peer's addresses for the node's routed host: the
// DHT's, else a circuit address through each connected relay. The second is
// how a worker behind a NAT is found: the WAN DHT never hands out a peer
// whose only public addresses are /p2p-circuit ones (kad-dht's query filter
// wants a public address that is not a relay's, and the servers know only
// the worker's private and circuit addresses), and such a worker holds its
// reservations on the relays among the public nodes, which a node stays
// connected to. A relay without a reservation for the peer refuses at once
// (NO_RESERVATION), so the dials through the wrong relays cost a round trip.
type peerRouting struct {
	dht interface {
		FindPeer(context.Context, peer.ID) (peer.AddrInfo, error)
	}
	h host.Host
}

func (r peerRouting) FindPeer(ctx context.Context, p peer.ID) (peer.AddrInfo, error) {
	ai, err := r.dht.FindPeer(ctx, p)
	if err == nil && len(ai.Addrs) > 0 {
		return ai, nil
	}
	circuits := relayedAddrs(r.h, p)
	if len(circuits) == 0 {
		return ai, err
	}
	return peer.AddrInfo{ID: p, Addrs: circuits}, nil
}

// relayedAddrs are the addresses of p through each relay h is directly
// connected to (a peer offering relay v2's hop protocol).
func relayedAddrs(h host.Host, p peer.ID) []ma.Multiaddr {
	var out []ma.Multiaddr
	for _, c := range h.Network().Conns() {
		r := c.RemotePeer()
		if r == p || c.Stat().Limited {
			continue
		}
		if ok, _ := h.Peerstore().SupportsProtocols(r, proto.ProtoIDv2Hop); len(ok) == 0 {
			continue
		}
		a := c.RemoteMultiaddr().Encapsulate(ma.StringCast("/p2p/" + r.String() + "/p2p-circuit"))
		if !slices.ContainsFunc(out, a.Equal) {
			out = append(out, a)
		}
	}
	return out
}
