// Package openaiapi is the OpenAI HTTP API of the runtime (chat
// completions, completions, embeddings, models): the wire types,
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
// A chunk's delta may instead carry pieces of tool calls, the first piece of
// call i with its id, type and name, later ones only arguments to append:
//
//	{"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]}}
//	{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"x\":1}"}}]}}
//	{"delta":{},"finish_reason":"tool_calls"}
//
// or the text of a refusal ("refusal":"..."), and with logprobs asked for,
// choices[0].logprobs is {"content":[{"token","logprob","bytes":[ints],
// "top_logprobs":[...]}],"refusal":null} for the chunk's tokens (null in
// chunks without tokens). The whole answer's message is {"role":"assistant",
// "content": text, or null when it only calls tools or refuses,
// "refusal": null or text, "tool_calls": [{"id","type":"function",
// "function":{"name","arguments"}}] (absent when none)}, and its logprobs
// the same object for all tokens, or null when not asked for. A log
// probability of -Inf is written -9999, as OpenAI does.
//
// POST /v1/embeddings answers {"object":"list","data":[{"object":"embedding",
// "index","embedding"}],"model","usage":{"prompt_tokens","total_tokens",
// "cost_nanoton" (when the embeddings were bought on the network)}}.
//
// # Fields: honoured, neutral, refused
//
// A request is never answered as if it had asked for less: a field the
// network cannot honour is refused by name (400, invalid_request_error, param
// the field, code unsupported_parameter; unknown_parameter for a key no table
// has; unsupported_value for a value of a known key that is not served: a
// content part type, a tool type, an http(s) image, n above 1), with a
// message that says "refused rather than ignored". A value that is
// malformed or out of range is a 400 naming the field, without a code. The
// one allow-list is in params.go.
//
// Honoured: model, messages (role; content as a string, null, or "text" and
// "image_url" parts; an assistant's tool_calls, with content null; a tool
// message's tool_call_id), max_tokens, max_completion_tokens, temperature,
// top_p, stop, seed, n (1), stream, stream_options.include_usage;
// response_format (type "text", "json_object", or "json_schema" with
// json_schema's name, schema and strict; its description only empty): the
// schema must be one runtime/grammar converts (else 400, param
// response_format.json_schema.schema, the message naming the keyword);
// tools (type "function" only, with name, description, parameters, whose
// schema runtime/grammar must convert, and strict), tool_choice ("none",
// "auto", "required" or a function by name), parallel_tool_calls (false:
// at most one call), logprobs, top_logprobs (0 to 20, with logprobs),
// presence_penalty, frequency_penalty (each in [-2, 2]), logit_bias (token
// ids in decimal, in int32 range, to biases in [-100, 100]; a zero bias is
// dropped); vLLM's continue_final_message and add_generation_prompt (false
// only with continue_final_message); on /v1/completions model, prompt (one
// string), max_tokens, temperature, top_p, stop, seed, n (1), stream,
// stream_options.include_usage, presence_penalty, frequency_penalty,
// logit_bias; on /v1/embeddings model, input (a string or an array of at
// most 2048 non-empty strings), encoding_format ("float" or "base64": the
// little-endian float32s).
//
// An image_url part must hold the image inline, a data:image/...;base64,
// URL: workers fetch nothing from the internet, so an http(s) URL is
// refused (param messages[i].content[j].image_url.url, code
// unsupported_value). The image becomes a runtime.Image at the byte
// offset of the joined text where its part stood.
//
// What a request asks of its model is the model's to refuse: tools,
// tool_choice other than none, tool calls and tool messages, logprobs,
// logit_bias, images and response_format reach only a model that declares
// the capability (runtime.Model.Serves); otherwise the answer is a 400
// naming the field (tools, logprobs, logit_bias, messages[i].content,
// response_format). Embeddings likewise: a model that serves none is a 400
// naming model, and a handler whose backend is not a runtime.Embedder
// answers /v1/embeddings with 404.
//
// Accepted because they change no answer: user, safety_identifier,
// prompt_cache_key (chat), user (completions, embeddings); a string or
// null. The index of an assistant's tool call (which the openai npm SDK's
// stream helper leaves in the message it assembles).
//
// Refused unless neutral (the neutral values, which SDKs send as defaults, in
// brackets; null is always neutral):
//
//	chat: functions [[]]; function_call ["none", "auto"];
//	      n [1]; store [false]; metadata [{}];
//	      modalities [["text"], []]; service_tier ["auto", "default"];
//	      audio, prediction, reasoning_effort, verbosity, web_search_options
//	      [null only: even {} turns the web search on]
//	tools[i]: type other than "function" (code unsupported_value);
//	      tool_choice: a type other than "function" (allowed_tools, custom)
//	messages[i]: name, refusal [""]; annotations [[]]; function_call,
//	      audio [null only]; tool_calls[j].type other than "function";
//	      content parts other than "text" and "image_url" (input_audio,
//	      file, ...; code unsupported_value) and keys of a part other than
//	      its type's
//	completions: echo [false]; best_of [1]; suffix [""];
//	      logprobs [null only: 0 still asks for the sampled tokens'
//	      logprobs]
//	embeddings: dimensions [null only: no served model shortens its
//	      vectors]; input as token ids (numbers, arrays of numbers; param
//	      input, code unsupported_value)
//	stream_options: continuous_usage_stats (vLLM's; the handler sends the
//	      usage only in the last chunk), include_obfuscation [false]
//
//	response_format.json_schema: description [""]
//
// Any other key, such as vLLM's top_k or a known key in another case, is
// refused as unknown.
package openaiapi
