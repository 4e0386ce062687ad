package gateway

import (
	"context"
	"net/http"

	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

// Network is the market as the gateway buys from it: market/service.Client
// implements it. Its methods are called from request goroutines, concurrently.
type Network interface {
	// Models are the models some worker offers.
	Models() []runtime.Model
	// ListModels is GET /v1/models' list of them, with prices and TEE kinds.
	ListModels(ctx context.Context) ([]openaiapi.Model, error)
	// Generate buys req from a worker. The stream's Header names the worker
	// and its TEE tier, and its CostNanoTON says what the answer cost (the
	// openaiapi hooks).
	Generate(ctx context.Context, req runtime.Request) (runtime.Stream, error)
	// Embed buys embeddings from a worker; CostNanoTON says what they cost.
	Embed(ctx context.Context, req runtime.EmbedRequest) (runtime.Embeddings, error)
}

// Local is this node's own inference, which its /v1 answers without the market.
type Local struct {
	Backend runtime.Backend // the node's backend; nil on a client-only node
	Worker  string          // the node's peer ID, for X-Cocoon-Worker
	TEE     string          // the node's TEE tier, for X-Cocoon-TEE
}

// route is what the gateway's /v1 serves: a runtime.Backend that sends each
// request to this node or to the network. A request for a model the node runs
// itself goes to its own backend: the node would otherwise buy from itself
// (the market never selects its own peer) or pay another worker for what it
// runs free, and the prompt never leaves the node. Every other request is
// bought on the network. A client-only node therefore routes everything
// through the market.
type route struct {
	local  runtime.Backend // nil on a client-only node
	net    Network
	header http.Header // names this node on local answers
}

func newRoute(net Network, local Local) *route {
	r := &route{net: net, local: local.Backend, header: http.Header{"X-Cocoon-Worker": {local.Worker}}}
	if local.Backend != nil {
		r.header.Set("X-Cocoon-TEE", local.TEE)
	}
	return r
}

func (g *route) servesLocally(model string) bool {
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
func (g *route) Models() []runtime.Model {
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
// their prices and TEE kinds, and the local ones not sold by anyone else;
// the capabilities of a model this node runs are its own backend's, since
// this node answers it.
func (g *route) ListModels(ctx context.Context) ([]openaiapi.Model, error) {
	out, err := g.net.ListModels(ctx)
	if err != nil {
		return nil, err
	}
	seen := map[string]int{}
	for i, m := range out {
		seen[m.ID] = i
	}
	if g.local != nil {
		for _, m := range g.local.Models() {
			i, ok := seen[m.ID]
			if !ok {
				out = append(out, openaiapi.Model{ID: m.ID, Object: "model", OwnedBy: "cocoon", ContextLength: m.ContextLength,
					Extra: openaiapi.CapabilityFields(m, map[string]any{"local": true})})
				continue
			}
			// This node answers the model itself: what it follows is its own.
			out[i].Extra = openaiapi.CapabilityFields(m, out[i].Extra)
		}
	}
	return out, nil
}

// Generate implements runtime.Backend.
func (g *route) Generate(ctx context.Context, req runtime.Request) (runtime.Stream, error) {
	if g.servesLocally(req.Model) {
		s, err := g.local.Generate(ctx, req)
		if err != nil {
			return nil, err
		}
		return localStream{s, g.header}, nil
	}
	return g.net.Generate(ctx, req)
}

// Embed implements runtime.Embedder, routed as Generate: a model this node
// runs is embedded by its own backend (which refuses, naming the model, if
// it serves no embeddings), any other is bought on the network.
func (g *route) Embed(ctx context.Context, req runtime.EmbedRequest) (runtime.Embeddings, error) {
	if g.servesLocally(req.Model) {
		e, ok := g.local.(runtime.Embedder)
		if !ok {
			return runtime.Embeddings{}, &runtime.FieldError{Field: "model", Msg: "this node runs the model and its backend serves no embeddings"}
		}
		return e.Embed(ctx, req)
	}
	return g.net.Embed(ctx, req)
}

// Close implements runtime.Backend; the node closes the parts itself.
func (g *route) Close() error { return nil }

// localStream is an answer of this node's own backend, with headers naming it.
type localStream struct {
	runtime.Stream
	header http.Header
}

// Header implements openaiapi.HeaderStream.
func (s localStream) Header() http.Header { return s.header }
