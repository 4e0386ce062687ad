package p2p

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	msmux "github.com/multiformats/go-multistream"
)

// Liveness defaults: every connected peer is pinged every LivenessInterval; a
// peer that misses LivenessMisses pings in a row is disconnected. Without this a
// peer that vanished (SIGKILL, cable pulled) stays "connected" over QUIC until
// the transport's idle timeout, about 45 s, and keeps its place in the peer list,
// the status page and the client's view of the network.
const (
	LivenessInterval = 5 * time.Second
	LivenessTimeout  = 4 * time.Second
	LivenessMisses   = 2
	livenessParallel = 16
)

// livenessLoop pings the connected peers until ctx ends.
func (n *Node) livenessLoop(ctx context.Context, interval time.Duration) {
	defer n.wg.Done()
	missed := map[peer.ID]int{}
	var mu sync.Mutex
	t := time.NewTicker(interval)
	defer t.Stop()
	sem := make(chan struct{}, livenessParallel)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		peers := n.Host.Network().Peers()
		live := make(map[peer.ID]bool, len(peers))
		var wg sync.WaitGroup
		for _, p := range peers {
			live[p] = true
			if n.Host.Network().Connectedness(p) != network.Connected {
				continue
			}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				wg.Wait()
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				ok := n.pingOnce(ctx, p)
				mu.Lock()
				defer mu.Unlock()
				if ok || ctx.Err() != nil {
					delete(missed, p)
					return
				}
				missed[p]++
				if missed[p] >= LivenessMisses {
					delete(missed, p)
					n.log.Info("peer stopped answering pings: disconnecting", "peer", p)
					n.Host.Network().ClosePeer(p)
				}
			}()
		}
		wg.Wait()
		for p := range missed { // forget peers that left on their own
			if !live[p] {
				delete(missed, p)
			}
		}
	}
}

// pingOnce reports whether p answered one ping within LivenessTimeout. A peer
// that does not speak the ping protocol counts as alive (it answered).
func (n *Node) pingOnce(ctx context.Context, p peer.ID) bool {
	ctx, cancel := context.WithTimeout(ctx, LivenessTimeout)
	defer cancel()
	select {
	case res := <-ping.Ping(network.WithNoDial(ctx, "liveness"), n.Host, p):
		return res.Error == nil || errors.Is(res.Error, msmux.ErrNotSupported[protocol.ID]{})
	case <-ctx.Done():
		return false
	}
}
