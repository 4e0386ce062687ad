package gateway

import "time"

// Overview is everything the status page shows, as GET /api/v0/overview
// answers it. Money is in nanoTON, durations in milliseconds. The node fills it
// (Info.Overview); the gateway only renders it.
type Overview struct {
	Time     time.Time `json:"time"` // when it was taken
	Node     NodeInfo  `json:"node"`
	Peers    []PeerRow `json:"peers"`    // connected peers first, then those only traded with
	Ads      []AdRow   `json:"ads"`      // the ad book: every worker ad this node holds
	InFlight []JobRow  `json:"inflight"` // oldest first
	Done     []JobRow  `json:"done"`     // newest first
	Channels Channels  `json:"channels"`
	Money    Money     `json:"money"`
	GPUs     []GPU     `json:"gpus"`
	// GPUReason says why GPUs is empty.
	GPUReason string `json:"gpu_reason,omitempty"`
}

// NodeInfo is this node as the status page's header shows it.
type NodeInfo struct {
	PeerID        string   `json:"peer_id"`
	Version       string   `json:"version"`
	UptimeSeconds float64  `json:"uptime_seconds"`
	Role          string   `json:"role"` // "worker" (sells inference) or "client"
	Addrs         []string `json:"addrs"`
	// TEE is this node's own enclave kind (none, sim, tdx, sev-snp) and
	// TEETier how the network rates it, e.g. "sim (not confidential)".
	TEE     string `json:"tee"`
	TEETier string `json:"tee_tier"`
	// SimTEE: this node attests with the simulated TEE (not confidential).
	SimTEE bool `json:"sim_tee"`
	// AcceptTEE lists the TEE kinds of the workers this node buys from;
	// AcceptsSim says it includes the simulated one.
	AcceptTEE  []string `json:"accept_tee"`
	AcceptsSim bool     `json:"accepts_sim"`
	// Chain names where this node settles ("none", the ledger's name); DevLedger
	// says it is the dev ledger, a simulated chain, not TON.
	Chain     string  `json:"chain"`
	DevLedger bool    `json:"dev_ledger"`
	Wallet    string  `json:"wallet,omitempty"` // this node's TON wallet address, if it has one
	Models    []Model `json:"models"`           // the models it serves itself
	Slots     Slots   `json:"slots"`
}

// Slots are a serving node's concurrent job slots.
type Slots struct {
	Total  int `json:"total"`
	Free   int `json:"free"`
	Queued int `json:"queued"`
}

// PeerRow is one peer of the peers table: its connection (when connected) and
// what this node's market knows of it.
type PeerRow struct {
	Peer
	Connected bool `json:"connected"`
	// Jobs counts the jobs done with it (either side), OK those that ended ok,
	// InFlight those running now.
	Jobs     uint64    `json:"jobs"`
	OK       uint64    `json:"ok"`
	InFlight int       `json:"inflight"`
	LastJob  time.Time `json:"last_job,omitzero"`
	// Earned and Spent are the nanoTON its vouchers carried to and from this node.
	Earned uint64 `json:"earned_nanoton"`
	Spent  uint64 `json:"spent_nanoton"`
	// TTFTMS is the time to first token this node measured buying from it.
	TTFTMS float64 `json:"ttft_ms,omitempty"`
	// Verdict is this node's last attestation verdict on it ("accepted",
	// "refused", "" when never attested); Tier names the TEE accepted.
	Verdict   string `json:"verdict,omitempty"`
	TEE       string `json:"tee,omitempty"`
	Tier      string `json:"tier,omitempty"`
	AttestErr string `json:"attest_error,omitempty"`
	// Worker says it has an ad in this node's book.
	Worker bool `json:"worker"`
}

// AdRow is one worker's capacity ad.
type AdRow struct {
	Worker string    `json:"worker"`
	Models []AdModel `json:"models"`
	TEE    string    `json:"tee"`           // tdx, sev-snp, sim or none
	Sim    bool      `json:"sim,omitempty"` // the simulated TEE: not confidential
	Slots  Slots     `json:"slots"`
	GPUs   []GPU     `json:"gpus"`
	Issued time.Time `json:"issued"`
	Expiry time.Time `json:"expires"`
	Seq    uint64    `json:"seq"`
	Wallet string    `json:"wallet,omitempty"`
	// MinDeposit is the smallest channel deposit the worker accepts.
	MinDeposit uint64 `json:"min_deposit_nanoton"`
	// Measured is what this node measured of the worker; nil before any job.
	Measured *MeasuredAd `json:"measured,omitempty"`
}

// MeasuredAd is what this node measured of a worker itself, as opposed to
// what its ad claims.
type MeasuredAd struct {
	TTFTMS float64 `json:"ttft_ms"`
	Jobs   uint64  `json:"jobs"`
}

// AdModel is one model of an ad with its prices (nanoTON per 1M tokens) and
// the worker's own p50 latencies.
type AdModel struct {
	ID              string  `json:"id"`
	PromptPrice     uint64  `json:"prompt_price"`
	CompletionPrice uint64  `json:"completion_price"`
	ContextLength   uint32  `json:"context_length"`
	TTFTMS          float64 `json:"ttft_ms"`
	TPOTMS          float64 `json:"tpot_ms"`
	// Where the worker runs it: the llama.cpp build and its layers on a GPU
	// ("" for an upstream).
	Llama     string `json:"llama,omitempty"`
	Layers    uint32 `json:"layers,omitempty"`
	GPULayers uint32 `json:"gpu_layers,omitempty"`
}

// JobRow is one job in flight or done.
type JobRow struct {
	ID               string    `json:"id"`
	Side             string    `json:"side"` // "client": bought by this node; "worker": sold
	Peer             string    `json:"peer"`
	Model            string    `json:"model"`
	Start            time.Time `json:"start"`
	End              time.Time `json:"end,omitzero"`
	TTFTMS           float64   `json:"ttft_ms"`
	DurationMS       float64   `json:"duration_ms"`
	PromptTokens     uint64    `json:"prompt_tokens"`
	CompletionTokens uint64    `json:"completion_tokens"`
	NanoTON          uint64    `json:"nanoton"`
	Outcome          string    `json:"outcome,omitempty"` // empty in flight
	Error            string    `json:"error,omitempty"`
}

// Channels are this node's payment channels from its channel store.
type Channels struct {
	// Payer lists the channels this node pays workers on; Payee those clients
	// pay it on.
	Payer []PayerChannel `json:"payer"`
	Payee []PayeeChannel `json:"payee"`
	// Error says why the store could not be read (the lists are then partial).
	Error string `json:"error,omitempty"`
}

// PayerChannel is one channel this node deposited into to pay a worker.
type PayerChannel struct {
	ID      string    `json:"id"`
	Address string    `json:"address"`
	Worker  string    `json:"worker"`           // the worker's peer ID when an ad names its key, else its wallet
	Deposit uint64    `json:"deposit_nanoton"`  // what the channel holds for the worker
	Sent    uint64    `json:"sent_nanoton"`     // the newest voucher's total
	Left    uint64    `json:"left_nanoton"`     // Deposit − Sent
	Seqno   uint64    `json:"seqno"`            // of the newest voucher
	Closed  bool      `json:"closed,omitempty"` // closed on chain
	Updated time.Time `json:"updated"`
}

// PayeeChannel is one channel a client pays this worker on.
type PayeeChannel struct {
	ID      string    `json:"id"`
	Address string    `json:"address"`
	Client  string    `json:"client"` // the client's wallet
	Deposit uint64    `json:"deposit_nanoton"`
	Balance uint64    `json:"balance_nanoton"` // the newest voucher: what this node can claim
	Seqno   uint64    `json:"seqno"`
	Closed  bool      `json:"closed,omitempty"`
	Updated time.Time `json:"updated"`
}

// Money sums what this node earned and spent since it started (from the
// vouchers of its jobs) and what its channels hold (from its store).
type Money struct {
	EarnedNanoTON uint64 `json:"earned_nanoton"` // as a worker
	SpentNanoTON  uint64 `json:"spent_nanoton"`  // as a client
	JobsSold      uint64 `json:"jobs_sold"`
	JobsBought    uint64 `json:"jobs_bought"`
	TokensSold    uint64 `json:"tokens_sold"`   // completion tokens
	TokensBought  uint64 `json:"tokens_bought"` // completion tokens
	// ToClaimNanoTON sums the payee channels' balances; DepositedNanoTON and
	// SentNanoTON the payer channels' deposits and vouchers (open channels).
	ToClaimNanoTON   uint64 `json:"to_claim_nanoton"`
	DepositedNanoTON uint64 `json:"deposited_nanoton"`
	SentNanoTON      uint64 `json:"sent_nanoton"`
}
