// Package settle pays for inference: signed cumulative states of TON's asynchronous
// payment-channel contract (vouchers), a crash-safe channel store, and the Chain
// interface with a TON implementation and an offline dev ledger.
//
// It imports tonutils-go and storage only; market and node use it.
//
// # Roles
//
// A channel runs from a client to a worker. The client is party A: it
// deposits and signs vouchers. The worker is party B: it is paid and never
// pays. Each node's wallet key (V5R1, from a 24-word TON mnemonic) is also its
// channel key.
//
// # Vouchers
//
// A voucher is the client's signed semi-channel state: seqno and the
// cumulative nanoTON sent on the channel (over its whole life, across jobs).
// On the wire it is the BOC of one cell, at most MaxVoucherSize bytes:
//
//	signature:bits512 | #43685374 channel_id:uint128 seqno:uint64 sent:Coins
//	                    conditionals:(HashmapE 32 …)=empty counterparty:(Maybe ^…)=nothing
//
// The signature is ed25519 over the hash of the cell after the signature; the
// contract checks the same bytes (see tlb.go for every layout).
//
//	client: PayerLane.Pay(job, total) → voucher → send   (commit loop writes it behind)
//	worker: PayeeJob.Accept(voucher, total, most) → given to the job
//	        → PayeeJob.Durable rises when the commit loop has written it
//
// Each channel in use has one lane per side, which owns its money for any
// number of concurrent jobs (lane.go says what a crash can cost each side).
// A worker's lane refuses a bad signature, another channel, a state that
// contradicts its newest, an amount above the deposit, and a job total that
// decreases, exceeds what the job cost or what the states paid. Payer.Pay and
// Payee.Accept are the same for no job, waiting for the disk (the CLI, tests).
// Payee.Balance is the worker's provable balance: the amount of the newest
// voucher on disk.
//
// # Closing
//
// Cooperative: Payer.CloseState gives the close (worker gets the paid total,
// client the rest) with the client's signature; Payee.Countersign checks it
// and signs; either side submits with Chain.CooperativeClose.
// Uncooperative: the worker sends its newest voucher with Payee.OwnState (its
// own zero-amount state naming that voucher) to Chain.UncooperativeClose,
// answers a close the client started with a stale or forged state with
// Chain.Challenge (the contract then fines the client), and calls
// Chain.Finish after the quarantine and settle windows.
//
// # Networks
//
// Chain is implemented by OnChain over a Ledger: settle/tonchain (TON through
// a liteserver) or settle/devledger (an offline ledger that runs the real
// contract and wallet code in tonutils-go's TVM: a simulated chain, not TON).
// LookupChannel rebuilds a Channel from its contract address alone, checking
// the code and that the storage hashes to that address: how a worker learns a
// channel a client opened without telling it.
package settle
