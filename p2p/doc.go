// Package p2p is cocoon's libp2p overlay: one host (TCP and QUIC-v1, Noise and TLS,
// yamux), the Kademlia DHT under the /cocoon prefix, model provider records, the
// gossipsub ads topic, mDNS, NAT traversal and resource limits.
//
// It knows nothing of jobs, money or enclaves; node wires it, market and testnet use
// its handles. It imports libp2p only.
package p2p
