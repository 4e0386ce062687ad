// Package netlab runs real cocoon node processes in Linux network
// namespaces behind NAT routers, so that tests see what a volunteer on a home
// connection sees: no public address, a NAT that maps ports (or randomises
// them), a relay, hole punching, delay and loss. Every other multi-node test
// of the module is mocknet or loopback, where every node can dial every other.
// It needs root (namespaces, nftables) and runs in `go test ./...` by default
// (COCOON_NETLAB=0 skips it); New skips the test loudly without root,
// or without ip and nft (scripts/netlab-deps.sh installs them when it can).
//
// Topology (one lab per test, namespaces prefixed per process):
//
//	pub: bridge br0, 11.0.0.9 (the ledger's forwarder)
//	 ├─ veth ─ n10: bootstrap 11.0.0.10     one namespace per public node,
//	 ├─ veth ─ n11: relay     11.0.0.11     so each dials from its own
//	 ├─ veth ─ n12: peer1     11.0.0.12     address (AutoNAT dials back
//	 ├─ veth ─ n13: peer2     11.0.0.13     the address it saw)
//	 ├─ WAN link ─ ra 11.0.0.2 ─ ha 192.168.1.2  client   (Config.ClientNAT)
//	 ├─ WAN link ─ rb 11.0.0.3 ─ hb 192.168.2.2  worker1  (Config.WorkerNATs[0])
//	 └─ WAN link ─ rc 11.0.0.4 ─ hc 192.168.3.2  worker2  (Config.WorkerNATs[1])
//
// A router rX masquerades its home's LAN on its WAN address with nftables:
// EIM keeps the source port (endpoint-independent mapping, what hole
// punching gets through), Symmetric picks a random port per destination.
// 11.0.0.0/24 is an address range manet counts as public.
//
// The kernel here has no sch_netem, so each WAN link is two TAP devices
// (one in the router's namespace, one on pub's bridge) joined by a Go pump
// in the test process that holds every frame for Delay and drops Loss of
// them, in each direction (Link.Shape, Lab.Shape); Lab.HandshakeRTT
// measures what it adds. Four public libp2p nodes on four addresses, and
// the home nodes bootstrap from all four, because go-libp2p trusts an
// observed address (the NAT's) only once four distinct IPs report it
// (observedaddrs.ActivationThresh), and hole punching needs it. Worker i
// serves the model under ModelID(model, WorkerNATs[i]), so a request names
// the worker, and so the NAT, it goes to.
package netlab
