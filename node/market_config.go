package node

import (
	"encoding/hex"
	"fmt"
	"slices"

	"github.com/cocoon-network/cocoon/enclave"
	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/market/service"
	"github.com/cocoon-network/cocoon/settle/tonchain"
)

// MarketConfig is the [market] section: what this node charges for the models it
// serves (the worker side) and what it pays at most when it buys (the client
// side). Which workers it buys from is [enclave.policy]'s allowed_kinds.
type MarketConfig struct {
	// Prices lists the price of every model sold; a served model without a price
	// is not sold on the network.
	Prices []ModelPrice `toml:"prices"`
	// CreditTokens is how many tokens a worker delivers before it waits for a
	// voucher (0: the market's default).
	CreditTokens int `toml:"credit_tokens"`
	// ClientCreditTokens bounds the unpaid tokens one client's jobs on this
	// worker hold together: each job takes up to credit_tokens of it, and a job
	// that would get fewer than 8 is refused as busy (0: no bound beyond the
	// worker's slots and queue times credit_tokens).
	ClientCreditTokens int `toml:"client_credit_tokens"`
	// MinDeposit is the smallest channel deposit this worker asks for, nanoTON.
	MinDeposit int64 `toml:"min_deposit"`
	// MaxPromptPrice and MaxCompletionPrice cap what this node pays as a client,
	// nanoTON per 1M tokens; 0: no cap.
	MaxPromptPrice     int64 `toml:"max_prompt_price"`
	MaxCompletionPrice int64 `toml:"max_completion_price"`
	// Models are the models whose ads this node always follows as a client
	// (it joins their ads topics at start); any other model's topic is joined
	// on the first request for it and left after TopicIdle without one. The
	// models it sells are followed anyway.
	Models []string `toml:"models"`
	// TopicIdle is how long the node follows the ads of a model asked for
	// once (not served, not in Models) after the last request for it.
	TopicIdle Duration `toml:"topic_idle"`
}

// ModelPrice is one [[market.prices]] entry. Amounts are signed in the file so
// that a negative one is refused rather than wrapped to a huge price.
type ModelPrice struct {
	Model      string `toml:"model"`
	Prompt     int64  `toml:"prompt"`     // nanoTON per 1M prompt tokens
	Completion int64  `toml:"completion"` // nanoTON per 1M completion tokens
}

// EnclaveConfig is the [enclave] section: the evidence this node makes as a
// worker (Attester) and, as a client, the workers it buys from and the evidence
// it accepts of them (Policy: one setting for both).
type EnclaveConfig struct {
	// Attester is none (no TEE), tdx or sev-snp (through configfs-tsm), or sim
	// (simulated, not confidential; refused unless policy.allow_sim is on).
	Attester tee.Kind `toml:"attester"`
	// Measurement, for tdx (MRTD) or sev-snp, is the hex measurement this worker
	// expects its own hardware to report; the node refuses to start when the
	// report says otherwise. Empty: whatever the report says is announced.
	Measurement string         `toml:"measurement"`
	Policy      enclave.Policy `toml:"policy"`
}

// SettleConfig is the [settle] section: the chain and the local money files.
type SettleConfig struct {
	// Chain is "none", "ton" (TON itself, through liteservers) or "devledger" (a
	// simulated chain, not TON, at DevLedgerURL).
	Chain        string `toml:"chain"`
	DevLedgerURL string `toml:"devledger_url"`
	// TONNetwork is "mainnet" or "testnet" for chain ton; TONConfig the URL or
	// file of its liteserver global config ("": the network's public one).
	TONNetwork string `toml:"ton_network"`
	TONConfig  string `toml:"ton_config"`
	// Store is the channel store; "": <datadir>/channels.db.
	Store string `toml:"store"`
	// Wallet is the wallet's mnemonic file; "": <datadir>/wallet.key.
	Wallet string `toml:"wallet"`
}

// Chains a node can settle on.
const (
	ChainNone      = "none"
	ChainDevLedger = "devledger"
	ChainTON       = "ton"
)

func (c *Config) validateMarket() error {
	seen := map[string]bool{}
	for i, p := range c.Market.Prices {
		if p.Model == "" {
			return fmt.Errorf("market.prices[%d].model: empty", i)
		}
		if seen[p.Model] {
			return fmt.Errorf("market.prices[%d].model: %q is priced twice", i, p.Model)
		}
		seen[p.Model] = true
		if p.Prompt < 0 {
			return fmt.Errorf("market.prices[%d].prompt: %d is negative", i, p.Prompt)
		}
		if p.Completion < 0 {
			return fmt.Errorf("market.prices[%d].completion: %d is negative", i, p.Completion)
		}
		if p.Prompt == 0 && p.Completion == 0 {
			return fmt.Errorf("market.prices[%d]: model %q has neither a prompt nor a completion price", i, p.Model)
		}
	}
	for i, m := range c.Market.Models {
		if m == "" {
			return fmt.Errorf("market.models[%d]: empty", i)
		}
		if !service.ValidModelID(m) {
			return fmt.Errorf("market.models[%d]: %q is not a model id (at most 256 bytes, no control characters)", i, m)
		}
	}
	if c.Market.TopicIdle.Duration <= 0 {
		return fmt.Errorf("market.topic_idle: %s is not positive", c.Market.TopicIdle)
	}
	for _, f := range []struct {
		name string
		v    int64
	}{{"min_deposit", c.Market.MinDeposit}, {"max_prompt_price", c.Market.MaxPromptPrice}, {"max_completion_price", c.Market.MaxCompletionPrice}} {
		if f.v < 0 {
			return fmt.Errorf("market.%s: %d is negative", f.name, f.v)
		}
	}
	if c.Market.CreditTokens < 0 {
		return fmt.Errorf("market.credit_tokens: %d is negative", c.Market.CreditTokens)
	}
	if c.Market.ClientCreditTokens < 0 {
		return fmt.Errorf("market.client_credit_tokens: %d is negative", c.Market.ClientCreditTokens)
	}
	switch a := c.Enclave.Attester; {
	case !a.Valid():
		return fmt.Errorf("enclave.attester: %q is not none, tdx, sev-snp or sim", a)
	case a == tee.Sim && !c.Enclave.Policy.AllowSim:
		return fmt.Errorf("enclave.attester: sim (simulated TEE, not confidential) needs enclave.policy.allow_sim = true (testnets only)")
	}
	if c.Enclave.Measurement != "" {
		if b, err := hex.DecodeString(c.Enclave.Measurement); err != nil || len(b) > enclave.MeasurementSize {
			return fmt.Errorf("enclave.measurement: %q is not a hex measurement of at most %d bytes", c.Enclave.Measurement, enclave.MeasurementSize)
		}
		if !c.Enclave.Attester.Confidential() {
			return fmt.Errorf("enclave.measurement: only for attester tdx or sev-snp, not %q", c.Enclave.Attester)
		}
	}
	if err := c.Enclave.Policy.Validate(); err != nil {
		return fmt.Errorf("enclave.policy: %w", err)
	}
	if c.Settle.Chain != ChainTON && (c.Settle.TONNetwork != "" || c.Settle.TONConfig != "") {
		field := "settle.ton_network"
		if c.Settle.TONNetwork == "" {
			field = "settle.ton_config"
		}
		return fmt.Errorf("%s: set, but settle.chain is %s", field, c.Settle.Chain)
	}
	switch c.Settle.Chain {
	case ChainNone:
		if c.Settle.DevLedgerURL != "" {
			return fmt.Errorf("settle.devledger_url: set, but settle.chain is none")
		}
	case ChainDevLedger:
		if c.Settle.DevLedgerURL == "" {
			return fmt.Errorf("settle.devledger_url: empty, but settle.chain is devledger")
		}
	case ChainTON:
		if c.Settle.DevLedgerURL != "" {
			return fmt.Errorf("settle.devledger_url: set, but settle.chain is ton")
		}
		if _, err := tonchain.GlobalIDOf(c.Settle.TONNetwork); err != nil {
			return fmt.Errorf("settle.ton_network: %q is not mainnet or testnet", c.Settle.TONNetwork)
		}
	default:
		return fmt.Errorf("settle.chain: %q is not none, ton or devledger", c.Settle.Chain)
	}
	return nil
}

// prices returns the [market] prices by model.
func (c *Config) prices() map[string]market.Price {
	out := make(map[string]market.Price, len(c.Market.Prices))
	for _, p := range c.Market.Prices {
		out[p.Model] = market.Price{Prompt: uint64(p.Prompt), Completion: uint64(p.Completion)}
	}
	return out
}

// clientPolicy is service.Client's default policy: the prices from [market],
// and the kinds from [enclave.policy], the same list the client's verifier
// checks evidence against, so that the workers it selects are the workers
// whose evidence it accepts.
func (c *Config) clientPolicy() market.Policy {
	return market.Policy{
		TEE:      c.Enclave.Policy.Kinds(),
		MaxPrice: market.Price{Prompt: uint64(c.Market.MaxPromptPrice), Completion: uint64(c.Market.MaxCompletionPrice)},
	}
}

// adModels are the models whose ads topics the node joins for good: those it
// prices (it sells them) and market.models.
func (c Config) adModels() []string {
	var out []string
	for _, p := range c.Market.Prices {
		if !slices.Contains(out, p.Model) {
			out = append(out, p.Model)
		}
	}
	for _, m := range c.Market.Models {
		if !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	return out
}
