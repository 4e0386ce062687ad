package p2p

import (
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// blocklist is the node's connection gater: a blocked peer is neither dialled
// nor accepted (after the security handshake names it) until its time is up.
// On a Host given to New it is not installed as a gater; Block and the
// node's connection notifee cut the peer's connections instead.
type blocklist struct {
	mu    sync.Mutex
	until map[peer.ID]time.Time
}

func newBlocklist() *blocklist { return &blocklist{until: map[peer.ID]time.Time{}} }

func (b *blocklist) add(p peer.ID, d time.Duration) {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	for q, t := range b.until { // few entries: drop the lapsed ones on the way
		if !t.After(now) {
			delete(b.until, q)
		}
	}
	b.until[p] = now.Add(d)
}

func (b *blocklist) blocked(p peer.ID) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	t, ok := b.until[p]
	return ok && time.Now().Before(t)
}

func (b *blocklist) InterceptPeerDial(p peer.ID) bool             { return !b.blocked(p) }
func (b *blocklist) InterceptAddrDial(peer.ID, ma.Multiaddr) bool { return true }
func (b *blocklist) InterceptAccept(network.ConnMultiaddrs) bool  { return true }
func (b *blocklist) InterceptSecured(_ network.Direction, p peer.ID, _ network.ConnMultiaddrs) bool {
	return !b.blocked(p)
}
func (b *blocklist) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) {
	return true, 0
}

// pubsubBlacklist is gossipsub's view of the blocklist (pubsub's own
// time-cached blacklist runs a goroutine nothing stops).
type pubsubBlacklist struct{ b *blocklist }

func (p pubsubBlacklist) Add(id peer.ID) bool {
	p.b.add(id, BlockTime)
	return true
}

func (p pubsubBlacklist) Contains(id peer.ID) bool { return p.b.blocked(id) }

// Block disconnects p and keeps it out for BlockTime: its connections are
// closed, new ones refused (or cut at once on a Host given to New), and
// gossipsub drops every message it sends or signs (its time-cached blacklist).
// It is for a peer that broke the rules beyond doubt (market: an ad flood).
func (n *Node) Block(p peer.ID) {
	if p == n.Host.ID() {
		return
	}
	n.blocks.add(p, BlockTime)
	n.PubSub.BlacklistPeer(p)
	if err := n.Host.Network().ClosePeer(p); err != nil {
		n.log.Debug("close blocked peer", "peer", p, "err", err)
	}
	n.log.Info("peer blocked", "peer", p, "for", BlockTime)
}

// Blocked reports whether p is blocked now.
func (n *Node) Blocked(p peer.ID) bool { return n.blocks.blocked(p) }
