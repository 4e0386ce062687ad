package node

import (
	"context"
	"net/http"

	"github.com/cocoon-network/cocoon/market/service"
	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

// gatewayBackend is what a node's /v1 serves. A request for a model this node
// runs itself goes to its own backend: the node would otherwise buy from itself
// (the market never selects its own peer) or pay another worker for what it
// runs free, and the prompt never leaves the node. Every other request is
// bought on the network through the market's service.Client. A client-only node
// (no [runtime] models) therefore routes everything through the market.
type gatewayBackend struct {
	local  runtime.Backend // nil on a client-only node
	net    *service.Client
	header http.Header // names this node on local answers
}

func (g *gatewayBackend) servesLocally(model string) bool {
	if g.local == nil {
		return false
	}
	for _, m := range g.local.Models() {
		if m.ID == model {
			return true
		}
	}
	return false
}

// Models implements runtime.Backend: the local models, then the network's.
func (g *gatewayBackend) Models() []runtime.Model {
	var out []runtime.Model
	seen := map[string]bool{}
	if g.local != nil {
		for _, m := range g.local.Models() {
			seen[m.ID] = true
			out = append(out, m)
		}
	}
	for _, m := range g.net.Models() {
		if !seen[m.ID] {
			out = append(out, m)
		}
	}
	return out
}

// ListModels is openaiapi's hook for GET /v1/models: the network's models with
// their prices and TEE kinds, and the local ones not sold by anyone else.
func (g *gatewayBackend) ListModels(ctx context.Context) ([]openaiapi.Model, error) {
	out, err := g.net.ListModels(ctx)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, m := range out {
		seen[m.ID] = true
	}
	if g.local != nil {
		for _, m := range g.local.Models() {
			if !seen[m.ID] {
				out = append(out, openaiapi.Model{ID: m.ID, Object: "model", OwnedBy: "cocoon", ContextLength: m.ContextLength,
					Extra: map[string]any{"local": true}})
			}
		}
	}
	return out, nil
}

// Generate implements runtime.Backend.
func (g *gatewayBackend) Generate(ctx context.Context, req runtime.Request) (runtime.Stream, error) {
	if g.servesLocally(req.Model) {
		s, err := g.local.Generate(ctx, req)
		if err != nil {
			return nil, err
		}
		return localStream{s, g.header}, nil
	}
	return g.net.Generate(ctx, req)
}

// Close implements runtime.Backend; the node closes the parts itself.
func (g *gatewayBackend) Close() error { return nil }

// localStream is an answer of this node's own backend, with headers naming it.
type localStream struct {
	runtime.Stream
	header http.Header
}

// Header implements openaiapi.HeaderStream.
func (s localStream) Header() http.Header { return s.header }
