// Package testnet builds multi-node cocoon networks for tests and for the local
// testnet command: real node instances in one process over libp2p's mocknet or
// real 127.0.0.1 hosts, and a launcher of real node processes.
//
// With Workers(k), the last k nodes serve the test model on the embedded
// llama.cpp behind the simulated TEE (sim, NOT confidential), every node has a
// wallet, and one in-process dev ledger (a simulated chain, not TON) funds the
// clients and holds a channel from each client to each worker.
//
// It is the project's harness for every multi-node test; cmd/cocoon and tests import it.
package testnet
