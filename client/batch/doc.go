// Package batch runs a file of OpenAI batch requests through one node's
// gateway, several at a time, and writes the answers in the OpenAI batch
// output format, resumably: it is `cocoon batch`, kept out of package main so
// that the command is only its flags. cmd/cocoon imports it.
//
// Input, one request per line, checked whole before anything is sent:
//
//	{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions" | "/v1/completions", "body": {...}}
//
// Output, one line per answer in the order answers arrive, each appended whole
// and fsynced:
//
//	{"id": "batch_req_…", "custom_id": "a", "response": {"status_code", "request_id", "body",
//	 "headers": {"x-cocoon-worker", "x-cocoon-tee"}}, "error": null}
//
// A re-run on the same output skips the custom_ids already in it (a last line
// torn by a crash is cut off first), so an interrupted or partly failed batch is
// finished by running it again. A request that got no answer is not written.
// The node is reached through client/local.
package batch
