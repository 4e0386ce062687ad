// Package settle pays for inference: signed cumulative states of TON's asynchronous
// payment-channel contract (vouchers), a crash-safe channel store, and the Chain
// interface with a TON implementation and an offline dev ledger.
//
// It imports tonutils-go and storage only; market and node use it.
package settle
