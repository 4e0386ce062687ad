// Package local is the client of a running node's local HTTP API: the one way
// the cocoon command, the testnet launcher and the tests talk to a node, so that
// finding the node, authenticating and decoding its answers are written once.
//
// A node started on a datadir writes where its API listens and the bearer token
// it wants there (see package node):
//
//	<datadir>/api.addr   HOST:PORT, written while the node runs, removed when it stops
//	<datadir>/api.token  the token, hex, mode 0600, written by `cocoon init`
//
// FromDatadir reads both; New takes them directly (an in-process node's
// APIAddr and Token). The typed calls cover the node's own API (Status, Peers,
// Overview under /api/v0) and the OpenAI-compatible one under /v1 (Models,
// ChatCompletion, Completion, each also streamed); Do sends anything else with
// the token and hands back the raw answer.
//
// A non-2xx answer is an *Error carrying the status and the OpenAI error
// message. Every call takes a context; the client sets no timeout of its own.
//
// It is the shape of tailscale's client/local. cmd/cocoon, client/batch,
// testnet (Proc.API), testnet/inproc (Member.API) and tests import it; it
// imports node only for the datadir's file names, and node/gateway and
// runtime/openaiapi for the wire types.
package local
