// Package runtime runs inference on a worker: the Backend interface, its
// implementations (embedded llama.cpp, any OpenAI-compatible server), concurrency
// slots, GPU detection and token metering.
//
// It imports the standard library and backend libraries only; market serves jobs
// through it and node builds it from config. The name follows the design card;
// files that need the standard library's runtime import it as goruntime.
package runtime
