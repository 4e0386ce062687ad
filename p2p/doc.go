// Package p2p is cocoon's libp2p overlay: one host (TCP and QUIC-v1, Noise and TLS,
// yamux), the Kademlia DHT under the /cocoon prefix, model provider records, one
// gossipsub ads topic per model (a node carries only the ads of the models it
// joined, so the gossip a node carries grows with what it buys and sells, not
// with the network), the catalogue topic of model names, a blocklist, mDNS,
// NAT traversal and resource limits. It also keeps a node
// joined: bootstrap peers are redialled with backoff for as long as the node runs,
// and the peers it met are kept in a file so that a restart whose bootstrap peers are
// gone rejoins through them (rejoin.go, peersfile.go).
//
// It knows nothing of jobs, money or enclaves; node wires it, market and testnet use
// its handles. It imports libp2p only.
package p2p
