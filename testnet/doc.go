// Package testnet builds multi-node cocoon networks for tests and for the local
// testnet command: real node instances in one process over libp2p's mocknet or
// real 127.0.0.1 hosts, and a launcher of real node processes.
//
// It is the project's harness for every multi-node test; cmd/cocoon and tests import it.
package testnet
