// Package runtime runs inference on a worker: the Backend interface, its
// implementations (embedded llama.cpp, any OpenAI-compatible server), concurrency
// slots, GPU detection and token metering.
//
// It imports the standard library, backend libraries and runtime/grammar only
// (Request.Check converts a response format's schema, so that every edge
// refuses a schema no backend can follow); market serves jobs
// through it and node builds it from config. The name follows the design card;
// files that need the standard library's runtime import it as goruntime.
//
// Layout:
//
//	runtime            Backend, Request (with its ResponseFormat), Stream, Delta,
//	                   Usage, Model; Limit (slots
//	                   and a FIFO queue, Slots() for ads); Config ([runtime] section)
//	                   and its Validate; DetectGPUs (NVML with build tag nvml)
//	runtime/llamacpp   the embedded default backend: GGUF on the CPU via yzma
//	                   (purego) and the libraries `make deps` installs
//	runtime/grammar    JSON Schema → GBNF for llama.cpp's grammar sampler
//	                   (response_format, forced tool calls)
//	runtime/openai     upstream backend for vLLM, llama-server, Ollama, SGLang
//	runtime/openaiapi  OpenAI wire types, SSE codec, and the http.Handler over any
//	                   Backend that workers and the gateway serve
//	runtime/backends   FromConfig: the configured backend wrapped in Limit
//
// Metering: usage is counted by the backend's own tokenizer (llama.cpp's, or the
// upstream's as it reports it); an upstream that reports none is refused with
// ErrUnbillable rather than estimated.
package runtime
