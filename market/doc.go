// Package market matches jobs to workers and runs the job protocol, with no
// central matcher: capacity ads (Ad) that workers gossip, an ad book per node
// (Book), client-side selection (Selector), the per-job stream (Run on the
// client, Worker on the worker), failover across workers (Failover) and
// pricing (Cost).
//
// One stream per job on /cocoon/job/1.0.0, length-delimited protobuf frames
// (market/pb), each size-capped:
//
//	C→W  Open{job, model, params (sampling, response format), max prices, channel}
//	W→C  Accept{price, credit tokens, settlement} | Reject{code}
//	     (the client checks the worker's attestation here, before the prompt leaves)
//	C→W  Prompt{messages or prompt, continuation}
//	W→C  Chunk…, while C→W Voucher every half credit window
//	     (the worker stops sending once a whole window is unpaid)
//	W→C  Done{usage, finish reason, receipt}
//	C→W  Voucher (the final one, prompt tokens included)
//	either side, any time: Cancel{code}
//
// Everything here is written over io.ReadWriter, so that the state machines
// are tested over net.Pipe without a network; the package imports no libp2p
// host, no settle and no OpenAI types. market/service mounts it on a
// p2p.Node (streams, gossip, DHT, attestation) and pays through settle's
// channels. Imported by market/service, node (configuration and wiring),
// node/activity and node/metrics (its Observer events) and testnet/inproc.
package market
