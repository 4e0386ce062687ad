// Package gateway is every node's local HTTP API, in one place so that what a
// caller can reach, and behind which checks, reads from one package: bearer-
// token auth and its throttle, the limits on slow requests and connections,
// the OpenAI-compatible /v1 and where its requests go, the node's own /api/v0
// status API, the status page and /metrics. It is bound to 127.0.0.1 by
// default. node builds one Server from its parts (New with WithV1 and
// WithMetrics); client/local imports it for the wire types of /api/v0.
//
// /v1 is runtime/openaiapi's Handler, which the gateway mounts over route: a
// model this node runs itself is answered by its own backend (Local), every
// other is bought on the Network (market/service.Client, which the gateway
// knows only by that interface, so it imports no libp2p and node wires the
// two). The answer's X-Cocoon-Worker and X-Cocoon-TEE headers name who served
// it and usage.cost_nanoton says what it cost. /metrics serves the handler it
// is given (node/metrics' registry); the gateway only puts it behind the token.
//
// The status page (GET /) is rendered here from the node's Overview with
// html/template and files embedded in the binary; its script refreshes the live
// part from GET /api/v0/overview.html every second. A browser cannot send the
// bearer token, so GET /?token=T sets a cookie derived from the token, which
// authorizes GET / and GET /api/v0/* only (see cookieAllowed for why).
package gateway
