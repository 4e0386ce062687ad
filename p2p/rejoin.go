package p2p

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	ma "github.com/multiformats/go-multiaddr"
)

// Rejoining. A node's dial set is its configured bootstrap peers and the peers it
// remembers (Config.PeersFile, refreshed from the peers it is connected to every
// PeersSaveInterval, within 5 s of meeting a peer the last refresh did not see, and
// at Close). For as long as the node runs, whenever it has fewer than MinPeers
// connected peers it dials every peer of the dial set it is not connected to, each
// when that peer's own backoff expires: at once on start, then 1 s, 2 s, 4 s … after
// each attempt, capped at RedialMax, every delay jittered by ±20 % so that nodes
// restarted together do not dial in step. An attempt counts towards the backoff
// whether or not it connects (a peer that accepts and then drops us is not
// redialled in a tight loop); the backoff starts over once the peer has stayed
// connected for RedialMax. With MinPeers or more connections the node dials
// nothing: the DHT and gossip keep it in the network, and a dead bootstrap peer
// costs nothing.
const (
	MinPeers          = 4
	RedialMin         = time.Second
	RedialMax         = time.Minute
	PeersSaveInterval = 30 * time.Second
	// peersSaveMin is the shortest gap between two saves: a peer met that the
	// last save did not know is written within this, so that a crash soon after
	// meeting peers does not forget them.
	peersSaveMin     = 5 * time.Second
	redialJitter     = 0.2
	dialTimeout      = 10 * time.Second
	maxParallelDials = 8
)

// redialDelay is the pause after the attempts-th attempt (attempts ≥ 1) before the
// next: RedialMin doubled attempts-1 times, capped at RedialMax, times a random
// factor in [1-redialJitter, 1+redialJitter).
func redialDelay(attempts int) time.Duration {
	d := RedialMin
	for i := 1; i < attempts && d < RedialMax; i++ {
		d *= 2
	}
	d = min(d, RedialMax)
	f := 1 - redialJitter + 2*redialJitter*rand.Float64()
	return time.Duration(float64(d) * f)
}

// dialTarget is the rejoin loop's state of one peer of the dial set.
type dialTarget struct {
	ai        peer.AddrInfo
	bootstrap bool
	attempts  int       // since the backoff last started over
	next      time.Time // no attempt before this
	since     time.Time // when it was first seen connected in the current connection; zero: not connected
	dialing   bool
	failing   bool // the last attempt failed (logged once per streak)
}

type dialResult struct {
	id  peer.ID
	err error
}

// rejoinLoop keeps the node joined (see MinPeers) and, when a peers file is
// configured, refreshes it every PeersSaveInterval. It owns n.remembered while it
// runs; Close saves the file once more after it has returned.
func (n *Node) rejoinLoop(ctx context.Context, bootstrap []peer.AddrInfo) {
	defer n.wg.Done()
	targets := map[peer.ID]*dialTarget{}
	for _, ai := range bootstrap {
		if ai.ID == n.Host.ID() {
			continue
		}
		t := targets[ai.ID]
		if t == nil {
			t = &dialTarget{ai: peer.AddrInfo{ID: ai.ID}, bootstrap: true}
			targets[ai.ID] = t
		}
		t.ai.Addrs = appendNew(t.ai.Addrs, ai.Addrs...)
	}
	n.addRemembered(targets)
	results := make(chan dialResult)
	var save <-chan time.Time
	if n.cfg.PeersFile != "" {
		tk := time.NewTicker(PeersSaveInterval)
		defer tk.Stop()
		save = tk.C
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	var saved time.Time
	known := map[peer.ID]bool{} // the peers connected at the last save
	for {
		due := false
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case r := <-results:
			n.dialed(targets[r.id], r.err)
		case <-save:
			due = true
		}
		if n.cfg.PeersFile != "" && !due && time.Since(saved) >= peersSaveMin {
			for _, p := range n.Host.Network().Peers() {
				if !known[p] {
					due = true
					break
				}
			}
		}
		if due {
			clear(known)
			for _, p := range n.Host.Network().Peers() {
				known[p] = true
			}
			n.refreshRemembered()
			n.savePeers()
			n.addRemembered(targets)
			saved = time.Now()
		}
		timer.Reset(n.dialDue(ctx, targets, results))
	}
}

// dialDue starts the attempts that are due and returns how long to wait before
// looking again.
func (n *Node) dialDue(ctx context.Context, targets map[peer.ID]*dialTarget, results chan<- dialResult) time.Duration {
	now := time.Now()
	wait := time.Second // the peer count is checked at least this often
	nw := n.Host.Network()
	few := len(nw.Peers()) < MinPeers
	inFlight := 0
	for _, t := range targets {
		if t.dialing {
			inFlight++
		}
	}
	for _, t := range targets {
		if nw.Connectedness(t.ai.ID) == network.Connected {
			if t.since.IsZero() {
				t.since = now
			} else if now.Sub(t.since) >= RedialMax {
				t.attempts = 0
			}
			continue
		}
		t.since = time.Time{}
		if !few || t.dialing {
			continue
		}
		if d := t.next.Sub(now); d > 0 {
			wait = min(wait, d)
			continue
		}
		if inFlight >= maxParallelDials {
			continue
		}
		inFlight++
		t.dialing = true
		ai := t.ai
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			// This schedule replaces the swarm's own dial backoff (5 s growing
			// to 5 min per address, which would refuse the early retries).
			if sw, ok := n.Host.Network().(*swarm.Swarm); ok {
				sw.Backoff().Clear(ai.ID)
			}
			dctx, cancel := context.WithTimeout(ctx, dialTimeout)
			err := n.Host.Connect(dctx, ai)
			cancel()
			select {
			case results <- dialResult{ai.ID, err}:
			case <-ctx.Done():
			}
		}()
	}
	return wait
}

// dialed records the outcome of one attempt on t.
func (n *Node) dialed(t *dialTarget, err error) {
	if t == nil {
		return
	}
	t.dialing = false
	t.attempts++
	delay := redialDelay(t.attempts)
	t.next = time.Now().Add(delay)
	kind := "remembered"
	if t.bootstrap {
		kind = "bootstrap"
	}
	switch {
	case err != nil && t.bootstrap && !t.failing:
		n.log.Warn("bootstrap peer unreachable: retrying with backoff", "peer", t.ai.ID, "err", err)
	case err != nil:
		n.log.Debug(kind+" peer unreachable", "peer", t.ai.ID, "attempts", t.attempts, "retry_in", delay, "err", err)
	case t.failing || !t.bootstrap:
		n.log.Info(kind+" peer reached", "peer", t.ai.ID, "attempts", t.attempts)
	default:
		n.log.Debug("bootstrap peer reached", "peer", t.ai.ID)
	}
	t.failing = err != nil
}

// addRemembered brings the remembered peers into targets: new ones are added (due
// at once), known ones get their remembered addresses, and remembered peers that
// fell out of the set are dropped unless a dial to them is in flight.
func (n *Node) addRemembered(targets map[peer.ID]*dialTarget) {
	keep := make(map[peer.ID]bool, len(n.remembered))
	for _, p := range n.remembered {
		if p.ID == n.Host.ID() {
			continue
		}
		keep[p.ID] = true
		t := targets[p.ID]
		if t == nil {
			t = &dialTarget{ai: peer.AddrInfo{ID: p.ID}}
			targets[p.ID] = t
		}
		t.ai.Addrs = appendNew(t.ai.Addrs, p.Addrs...)
		if len(t.ai.Addrs) > 2*maxPeerAddrs { // a bootstrap peer's configured ones come first
			t.ai.Addrs = t.ai.Addrs[:2*maxPeerAddrs]
		}
	}
	for id, t := range targets {
		if !t.bootstrap && !keep[id] && !t.dialing {
			delete(targets, id)
		}
	}
}

// refreshRemembered folds the peers connected now into n.remembered.
func (n *Node) refreshRemembered() {
	now := time.Now().UTC().Truncate(time.Second)
	var fresh []RememberedPeer
	for _, p := range n.Host.Network().Peers() {
		if p == n.Host.ID() {
			continue
		}
		if addrs := n.dialableAddrs(p); len(addrs) > 0 {
			fresh = append(fresh, RememberedPeer{ID: p, Addrs: addrs, Seen: now})
		}
	}
	n.remembered = mergePeers(n.remembered, fresh)
}

// dialableAddrs lists up to maxPeerAddrs addresses of p: first those this node
// dialled it at (proven), then those it announced or was seen at.
func (n *Node) dialableAddrs(p peer.ID) []ma.Multiaddr {
	var cand []ma.Multiaddr
	for _, c := range n.Host.Network().ConnsToPeer(p) {
		if c.Stat().Direction == network.DirOutbound {
			cand = append(cand, c.RemoteMultiaddr())
		}
	}
	cand = append(cand, n.Host.Peerstore().Addrs(p)...)
	var out []ma.Multiaddr
	for _, a := range cand {
		if len(out) == maxPeerAddrs {
			break
		}
		if len(a) == 0 || len(a.String()) > maxAddrLen {
			continue
		}
		if _, last := ma.SplitLast(a); last != nil && last.Code() == ma.P_P2P {
			continue
		}
		out = appendNew(out, a)
	}
	return out
}

// savePeers writes n.remembered to the peers file, if one is configured and there is
// anything to remember.
func (n *Node) savePeers() {
	if n.cfg.PeersFile == "" || len(n.remembered) == 0 {
		return
	}
	if err := savePeersFile(n.cfg.PeersFile, n.remembered); err != nil {
		n.log.Warn("cannot save the peers file", "err", err)
	}
}

// appendNew appends the addresses of add that dst does not hold yet.
func appendNew(dst []ma.Multiaddr, add ...ma.Multiaddr) []ma.Multiaddr {
	for _, a := range add {
		dup := false
		for _, b := range dst {
			if a.Equal(b) {
				dup = true
				break
			}
		}
		if !dup {
			dst = append(dst, a)
		}
	}
	return dst
}
