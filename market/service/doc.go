// Package service mounts the market on a libp2p node, the way go-libp2p's
// ping and identify each mount themselves on a host: it is all of the market's
// contact with libp2p hosts, settle's channel store and the OpenAI types, so
// that package market stays a protocol over io.ReadWriter.
//
//   - Worker sells a runtime.Backend: it serves the job protocol
//     (/cocoon/job/1.0.0, one stream per job) and the attestation protocol,
//     publishes a capacity ad on each of its models' topics every 10 s and
//     when its capacity changes (never sooner than 1 s apart), its model ids
//     on the catalogue topic every 5 min, and provides its models in the DHT.
//   - Client buys: the validator of the ads topics it joined (the models it
//     sells, market.models, and those asked for, until idle) feeds its ad
//     book and holds each peer to an ad rate (a flooder is blocked), a cold
//     book asks the DHT, it attests a worker before the job stream opens, runs
//     any number of jobs at once per worker, probes a silent worker and
//     fails over. It is
//     a runtime.Backend, and lists the book's models, then the catalogue's,
//     for GET /v1/models.
//   - AdGate is the client's validator of the ads topics on its own (the
//     book's checks, then the ad rate rule), which testnet/sim runs on each
//     simulated node.
//   - Attestations serves and verifies evidence on /cocoon/attest/1.0.0,
//     caching each verdict for its connection.
//   - Payers and Payees pay and take the jobs' vouchers through settle's
//     channel lanes (many jobs at once on one channel); CachedChannels reads
//     the channels clients name from the chain.
//
// Every goroutine here has an owner that stops it: a service's Close waits
// for the service's own, a NetStream's Close for its answer's; the tests check
// that none is left with goleak. Imported by node, which starts a Client on
// every node and a Worker on a node that sells, and by testnet/sim for
// AdGate.
package service
