// Package gateway is every node's local HTTP API: the OpenAI-compatible endpoints,
// the node's own /api/v0 status API, the status page and /metrics. It is bound to
// 127.0.0.1 by default and guarded by a bearer token. node imports it.
package gateway
