package local

import (
	"context"

	"github.com/cocoon-network/cocoon/node/gateway"
)

// Status is GET /api/v0/status: the node's identity, addresses, peers, models
// and slots.
func (c *Client) Status(ctx context.Context) (gateway.Status, error) {
	var st gateway.Status
	err := c.getJSON(ctx, "/api/v0/status", &st)
	return st, err
}

// Peers is GET /api/v0/peers: the connected peers.
func (c *Client) Peers(ctx context.Context) ([]gateway.Peer, error) {
	var ps []gateway.Peer
	err := c.getJSON(ctx, "/api/v0/peers", &ps)
	return ps, err
}

// Overview is GET /api/v0/overview: everything the status page shows.
func (c *Client) Overview(ctx context.Context) (gateway.Overview, error) {
	var o gateway.Overview
	err := c.getJSON(ctx, "/api/v0/overview", &o)
	return o, err
}
