// Package inproc is the in-process test kit: real cocoon nodes started in the
// test's own process, over libp2p's mocknet (fast, hundreds of nodes, link
// latency, partitions) or over real libp2p hosts on 127.0.0.1, with faults
// injected by Kill, Restart, Partition and Heal.
//
//	tn := inproc.New(t, inproc.Nodes(4), inproc.Workers(3), inproc.Latency(20*time.Millisecond))
//
// With Workers(k), the last k nodes serve the test model on the embedded
// llama.cpp (or an upstream, Upstream(url)) behind the simulated TEE (sim, NOT
// confidential), every node has a wallet, and one in-process dev ledger (a
// simulated chain, not TON) funds the clients and holds a channel from each
// client to each worker.
//
// It exists apart from package testnet, the launcher of node processes, because
// it needs package testing and mocknet, which the shipped binary must not link.
// Only tests import it (its own, and any multi-node test of another package).
package inproc
