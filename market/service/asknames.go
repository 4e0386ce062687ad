package service

import (
	"context"
	"io"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/cocoon-network/cocoon/p2p"
)

// A node that has just joined knows no model until the catalogue's next
// round (up to CatalogueEvery, 5 min) or an ad on a topic it follows. So it
// asks its first peers, on p2p.ProtocolModels, which model ids they know:
// each answers with the ids of its ad book and its catalogue, in the
// catalogue's encoding and limits (one message, at most MaxCatalogueModels
// ids and p2p.MaxCatalogueSize bytes), and the asker lists them as catalogue
// names heard from that peer ("joined": false, unverified hints, kept
// CatalogueTTL). A node asks at most AskNamesPeers peers, once each, while
// it knows no model; it answers a peer at most AskNamesBurst times, then
// once per AskNamesEvery, and resets the stream beyond that.
const (
	AskNamesPeers   = 3
	AskNamesBurst   = 2
	AskNamesEvery   = 10 * time.Second
	askNamesTimeout = 5 * time.Second
)

var askNamesRule = rateRule{
	perSec: 1 / AskNamesEvery.Seconds(), burst: AskNamesBurst,
	// No block: an asker past its rate is answered nothing, which costs us
	// nothing more than the refusal.
	floodPerSec: 1, floodBurst: 1e9,
}

// askNamesKey is the limiter's key of the names protocol (model ids never
// contain a newline).
const askNamesKey = "\n" + string(p2p.ProtocolModels)

// serveNames answers a peer's question with the model ids this node knows.
func (c *Client) serveNames(s network.Stream) {
	defer s.Close()
	if ok, _ := c.rates.take(rateKey{s.Conn().RemotePeer(), askNamesKey}, askNamesRule, c.now()); !ok {
		s.Reset()
		return
	}
	ids := c.knownNames()
	b := EncodeCatalogue(ids)
	for len(ids) > 0 { // the catalogue's limits: drop ids until it decodes
		if _, ok := DecodeCatalogue(b); ok {
			break
		}
		ids = ids[:len(ids)-1]
		b = EncodeCatalogue(ids)
	}
	_ = s.SetWriteDeadline(time.Now().Add(askNamesTimeout))
	_, _ = s.Write(b)
}

// knownNames is every model id of the ad book and the catalogue, sorted.
func (c *Client) knownNames() []string {
	ids := c.catalogued()
	for _, a := range c.book.All() {
		for _, o := range a.Models {
			ids = append(ids, o.ID)
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// connected asks a new peer for the model ids it knows while this node knows
// none and has asked fewer than AskNamesPeers peers.
func (c *Client) connected(_ network.Network, conn network.Conn) {
	p := conn.RemotePeer()
	c.mu.Lock()
	ask := c.askedNames < AskNamesPeers && !c.askedPeer[p]
	if ask {
		c.askedNames++
		c.askedPeer[p] = true
	}
	c.mu.Unlock()
	if !ask || len(c.knownNames()) > 0 {
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.askNames(p)
	}()
}

// askNames asks p for the model ids it knows and lists them as its
// catalogue entry.
func (c *Client) askNames(p peer.ID) {
	ctx, cancel := context.WithTimeout(c.ctx, askNamesTimeout)
	defer cancel()
	s, err := c.node.Host.NewStream(ctx, p, p2p.ProtocolModels)
	if err != nil {
		c.log.Debug("ask model names", "peer", p, "err", err)
		return
	}
	defer s.Close()
	_ = s.CloseWrite()
	_ = s.SetReadDeadline(time.Now().Add(askNamesTimeout))
	b, err := io.ReadAll(io.LimitReader(s, p2p.MaxCatalogueSize+1))
	if err != nil {
		return
	}
	models, ok := DecodeCatalogue(b)
	if !ok || len(models) == 0 {
		return
	}
	now := c.now()
	c.cat.mu.Lock()
	defer c.cat.mu.Unlock()
	if _, known := c.cat.ads[p]; !known && len(c.cat.ads) >= MaxCatalogueOrigins {
		return
	}
	c.cat.ads[p] = catalogueEntry{models: models, at: now}
}
