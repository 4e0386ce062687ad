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
//
// # Fields: honoured, neutral, refused
//
// A request is never answered as if it had asked for less: a field the
// network cannot honour is refused by name (400, invalid_request_error, param
// the field, code unsupported_parameter; unknown_parameter for a key no table
// has; unsupported_value for a content part that is not text), with a
// message that ends "refused rather than ignored". The one allow-list is in
// params.go.
//
// Honoured: model, messages (role, content as a string, null or text parts),
// max_tokens, max_completion_tokens, temperature, top_p, stop, seed, n (1),
// stream, stream_options.include_usage; response_format (type "text",
// "json_object", or "json_schema" with json_schema's name, schema and strict;
// its description only empty): the schema must be one runtime/grammar
// converts (else 400, param response_format.json_schema.schema, the message
// naming the keyword), and a model that does not offer structured output
// refuses it (400, param response_format); vLLM's continue_final_message and
// add_generation_prompt (false only with continue_final_message); on
// /v1/completions model, prompt (one string), max_tokens, temperature, top_p,
// stop, seed, n (1), stream, stream_options.include_usage.
//
// Accepted because they change no answer: user, safety_identifier,
// prompt_cache_key (chat), user (completions); a string or null.
//
// Refused unless neutral (the neutral values, which SDKs send as defaults, in
// brackets; null is always neutral):
//
//	chat: tools, functions [[]]; tool_choice, function_call ["none", "auto"];
//	      parallel_tool_calls [true, false: no tool can be called];
//	      logprobs, store [false];
//	      top_logprobs, presence_penalty, frequency_penalty [0];
//	      logit_bias [{}, zero biases]; metadata [{}];
//	      modalities [["text"], []]; service_tier ["auto", "default"];
//	      audio, prediction, reasoning_effort, verbosity, web_search_options
//	      [null only: even {} turns the web search on]
//	messages[i]: name, tool_call_id, refusal [""]; tool_calls, annotations
//	      [[]]; function_call, audio [null only]; content parts other than
//	      "text" (image_url, input_audio, file, ...) and keys of a part
//	      other than type and text
//	completions: echo [false]; best_of [1]; suffix [""];
//	      presence_penalty, frequency_penalty [0]; logit_bias [{}, zero
//	      biases]; logprobs [null only: 0 still asks for the sampled
//	      tokens' logprobs]
//	stream_options: continuous_usage_stats (vLLM's; the handler sends the
//	      usage only in the last chunk), include_obfuscation [false]
//
//	response_format.json_schema: description [""]
//
// Any other key, such as vLLM's top_k or a known key in another case, is
// refused as unknown.
package openaiapi
