// Package openaiapi is the OpenAI HTTP API of the runtime: the wire types,
// their decoders (with a 4 MiB body cap), the server-sent-events codec, and
// Handler, an http.Handler over any runtime.Backend. A worker serves its
// backend with it; the node's gateway serves its network backend with it, and
// shapes the answers through optional hooks on its streams:
//
//	Header() http.Header   headers of the response (the worker, its TEE kind)
//	CostNanoTON() uint64   "cost_nanoton" in the usage object
//
// and, on the backend, ListModels(ctx) ([]Model, error) for GET /v1/models
// (entries with Extra fields such as prices). Errors choose their status by
// the runtime's sentinel errors or an HTTPStatus() int method.
//
// A streaming answer is:
//
//	data: {"object":"chat.completion.chunk","choices":[{"delta":{"role":"assistant","content":""}}]}
//	data: {"object":"chat.completion.chunk","choices":[{"delta":{"content":"Once"}}]}
//	...
//	data: {"object":"chat.completion.chunk","choices":[{"delta":{},"finish_reason":"stop"}]}
//	data: {"object":"chat.completion.chunk","choices":[],"usage":{...}}   (with stream_options.include_usage)
//	data: [DONE]
//
// and ends instead with data: {"error":{...}} and no [DONE] if it fails midway.
package openaiapi
