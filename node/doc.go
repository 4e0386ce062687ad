// Package node wires every stage of a cocoon node (p2p, market, enclave, runtime,
// settle, gateway) from a Config and owns their lifecycles. It is the only package
// that imports every stage; cmd/cocoon and testnet import it.
package node
