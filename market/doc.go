// Package market matches jobs to workers and runs the job protocol, with no central
// matcher: capacity ads over gossipsub, an ad book per node, client-side selection,
// and the per-job stream.
//
// One stream per job on /cocoon/job/1.0.0:
//
//	Open → Accept | Reject{code}
//	Prompt + Voucher → Chunk… (Voucher every credit window) → Done{usage, receipt}
//
// The protocols are written over io.ReadWriter so that the state machines are
// testable without a network; this package also mounts enclave's attestation
// protocol on libp2p streams. WorkerService and ClientService (net.go) mount the
// market on a p2p.Node: the worker side serves jobs and attestation, publishes
// its ad and provides its models; the client side keeps the ad book from the ads
// topic, selects, attests, pays through settle's channels (netpay.go) and fails
// over, as a runtime.Backend for the gateway. A worker learns a client's new
// channel from the chain when the client names it in Open (SettlePayee.Learn,
// LedgerChannels). Imported by node and node/gateway.
package market
