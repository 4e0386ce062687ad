// Package node wires every stage of a cocoon node (p2p, market, enclave, runtime,
// settle, gateway) from a Config and owns their lifecycles. It is the only package
// that imports every stage; cmd/cocoon and testnet import it.
//
// New starts, in order: the libp2p node; the channel store and the wallet
// ([settle]); the market's service.Client (every node runs one; it installs the
// ads validator, so it starts before any ad of this node is published); the
// runtime backend ([runtime]); the service.Worker when the node serves models
// that [market] prices and has a wallet; the local API. Close stops them in
// reverse order.
//
// The local API's /v1 is the market's client: a request for a model this node
// does not run itself is bought on the network (the answer names the worker in
// X-Cocoon-Worker and its TEE in X-Cocoon-TEE, and usage.cost_nanoton says what
// it cost). A model the node runs itself is answered by its own backend, free and
// without leaving the node (X-Cocoon-Worker names the node itself): the market
// never sells a node its own capacity.
package node
