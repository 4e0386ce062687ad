// Package gateway is every node's local HTTP API: the OpenAI-compatible endpoints,
// the node's own /api/v0 status API, the status page and /metrics. It is bound to
// 127.0.0.1 by default and guarded by a bearer token. Its Limits bound slow
// request bodies, connections and failed authentications per source. node
// imports it.
//
// The status page (GET /) is rendered here from the node's Overview with
// html/template and files embedded in the binary; its script refreshes the live
// part from GET /api/v0/overview.html every second. A browser cannot send the
// bearer token, so GET /?token=T sets a cookie derived from the token, which
// authorizes GET / and GET /api/v0/* only (see cookieAllowed for why).
package gateway
