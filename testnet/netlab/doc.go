// Package netlab runs real cocoon node processes in Linux network
// namespaces behind NAT routers, so that tests see what a volunteer on a home
// connection sees: no public address, a NAT that maps ports (or randomises
// them), a relay, hole punching, delay and loss. Every other multi-node test
// of the module is mocknet or loopback, where every node can dial every other.
// It needs root (namespaces, nftables); New skips the test loudly without it.
//
// Topology (one lab per test, names prefixed per process):
//
//	           pub (bridge, 11.0.0.0/24: addresses manet counts as public)
//	 ledger .9  bootstrap .10  relay .11  peers .12 .13
//	     |                                   |
//	[wan link A]                        [wan link B]       userspace links: delay, loss
//	 11.0.0.2                            11.0.0.3
//	 router A (nft masquerade,           router B (nft masquerade
//	  port-preserving: EIM)               fully-random: symmetric)
//	 192.168.1.1                         192.168.2.1
//	     |                                   |
//	 home A 192.168.1.2                  home B 192.168.2.2
//
// The kernel here has no sch_netem, so each WAN link is two TAP devices
// (one in the router's namespace, one on pub's bridge) joined by a Go pump
// in the test process that holds every frame for Delay and drops Loss of
// them, in each direction (Link.Shape). Four public libp2p nodes on four
// addresses, because go-libp2p trusts an observed address (the NAT's) only
// once four distinct IPs report it (observedaddrs.ActivationThresh), and
// hole punching needs it.
package netlab
