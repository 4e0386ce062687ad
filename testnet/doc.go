// Package testnet launches a local testnet of real cocoon processes on
// 127.0.0.1: a dev ledger service (a simulated chain, not TON) and N `cocoon
// node` processes, the last of them workers serving a GGUF model behind the
// simulated TEE (sim, NOT confidential), each client funded and holding a
// channel to each worker. Launch starts one; its state file lets a later
// command (LoadCluster) show or stop it.
//
// It is the engine of `cocoon testnet up|status|down`, and the tests that run
// the binary as separate processes use it too; cmd/cocoon imports it. The
// in-process test kit (nodes in the test's own process, over mocknet) is
// testnet/inproc, kept apart so that the binary links neither package testing
// nor mocknet.
package testnet
