package node

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/cocoon-network/cocoon/enclave"
	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/market/service"
	"github.com/cocoon-network/cocoon/p2p"
	"github.com/cocoon-network/cocoon/runtime"
)

// Config is the node's file format (<datadir>/config.toml). The zero value, after
// Defaults, is a valid client-only node.
type Config struct {
	P2P     P2PConfig      `toml:"p2p"`
	API     APIConfig      `toml:"api"`
	Log     LogConfig      `toml:"log"`
	Runtime runtime.Config `toml:"runtime"`
	Market  MarketConfig   `toml:"market"`
	Enclave EnclaveConfig  `toml:"enclave"`
	Settle  SettleConfig   `toml:"settle"`

	// Datadir is where the config, keys and state live; set by Load, not read from the file.
	Datadir string `toml:"-"`
}

// P2PConfig is the [p2p] section.
type P2PConfig struct {
	Listen            []string  `toml:"listen"`
	Bootstrap         []string  `toml:"bootstrap"`
	MDNS              bool      `toml:"mdns"`
	DHTMode           string    `toml:"dht_mode"`
	NATPortMap        bool      `toml:"nat_port_map"`
	RelayService      bool      `toml:"relay_service"`
	ReprovideInterval Duration  `toml:"reprovide_interval"`
	Limits            P2PLimits `toml:"limits"`
}

// P2PLimits is the [p2p.limits] section.
type P2PLimits struct {
	MaxMemoryMB int `toml:"max_memory_mb"`
	MaxFDs      int `toml:"max_fds"`
	ConnsLow    int `toml:"conns_low"`
	ConnsHigh   int `toml:"conns_high"`
}

// APIConfig is the [api] section.
type APIConfig struct {
	Listen string `toml:"listen"`
}

// LogConfig is the [log] section.
type LogConfig struct {
	Level  string `toml:"level"`
	Format string `toml:"format"`
}

// Duration is a time.Duration written as a string ("12h", "30s") in the config file.
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("invalid duration %q (want e.g. \"30s\", \"12h\")", b)
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// DefaultAPI is where the local HTTP API listens unless configured otherwise.
const DefaultAPI = "127.0.0.1:8421"

// Defaults returns the configuration written by `cocoon init`.
func Defaults() Config {
	return Config{
		P2P: P2PConfig{
			Listen:            []string{"/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"},
			Bootstrap:         []string{},
			MDNS:              false,
			DHTMode:           p2p.DHTAuto,
			NATPortMap:        false,
			RelayService:      true,
			ReprovideInterval: Duration{12 * time.Hour},
			Limits:            P2PLimits{ConnsLow: 100, ConnsHigh: 400},
		},
		API:     APIConfig{Listen: DefaultAPI},
		Log:     LogConfig{Level: "info", Format: "text"},
		Runtime: runtime.Config{Backend: runtime.KindLlamaCPP},
		Market:  MarketConfig{Prices: []ModelPrice{}, Models: []string{}, TopicIdle: Duration{service.DefaultTopicIdle}},
		Enclave: EnclaveConfig{
			Attester: tee.None,
			Policy: enclave.Policy{
				AllowedKinds:   []tee.Kind{tee.TDX, tee.SEVSNP},
				MaxEvidenceAge: enclave.DefaultMaxEvidenceAge,
			},
		},
		Settle: SettleConfig{Chain: ChainNone},
	}
}

// Files inside a datadir.
const (
	ConfigFile   = "config.toml"
	IdentityFile = "identity.key"
	WalletFile   = "wallet.key" // the TON wallet's 24-word mnemonic, 0600
	TokenFile    = "api.token"
	APIAddrFile  = "api.addr" // written by a running node: the address its API listens on
)

// Load reads <datadir>/config.toml over the defaults. Unknown keys and invalid values
// are errors that name the field.
func Load(datadir string) (Config, error) {
	cfg := Defaults()
	cfg.Datadir = datadir
	path := filepath.Join(datadir, ConfigFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Config{}, fmt.Errorf("%s: no such file (run `cocoon init --datadir %s` first)", path, datadir)
	}
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	if err := Parse(b, &cfg); err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	cfg.Runtime.DataDir = datadir // where `cocoon runtime install` put llama.cpp
	return cfg, nil
}

// removedKeys are keys earlier versions read, each with what replaced it: a
// config that still sets one stops the node with that line, rather than being
// obeyed in part.
var removedKeys = map[string]string{
	"market.accept_tee": "enclave.policy.allowed_kinds, which decides both the workers this node buys from and the evidence it accepts of them (move the kinds there; \"sim\" also needs allow_sim)",
}

// Parse decodes TOML over cfg and validates the result.
func Parse(b []byte, cfg *Config) error {
	md, err := toml.NewDecoder(bytes.NewReader(b)).Decode(cfg)
	if err != nil {
		var perr toml.ParseError
		if errors.As(err, &perr) {
			if perr.LastKey != "" {
				return fmt.Errorf("line %d: %s: %s", perr.Position.Line, perr.LastKey, perr.Message)
			}
			return fmt.Errorf("line %d: %s", perr.Position.Line, perr.Message)
		}
		return err
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
			if now, ok := removedKeys[keys[i]]; ok {
				return fmt.Errorf("%s: removed, replaced by %s", keys[i], now)
			}
		}
		return fmt.Errorf("unknown key %s", strings.Join(keys, ", "))
	}
	return cfg.Validate()
}

// Validate checks every field; the error names the first bad one.
func (c *Config) Validate() error {
	for i, s := range c.P2P.Listen {
		if _, err := ma.NewMultiaddr(s); err != nil {
			return fmt.Errorf("p2p.listen[%d]: invalid multiaddr %q: %v", i, s, err)
		}
	}
	if _, err := p2p.ParseBootstrap(c.P2P.Bootstrap); err != nil {
		return err
	}
	switch c.P2P.DHTMode {
	case p2p.DHTAuto, p2p.DHTServer, p2p.DHTClient:
	default:
		return fmt.Errorf("p2p.dht_mode: %q is not auto, server or client", c.P2P.DHTMode)
	}
	if c.P2P.ReprovideInterval.Duration < time.Minute || c.P2P.ReprovideInterval.Duration > 24*time.Hour {
		return fmt.Errorf("p2p.reprovide_interval: %s is outside 1m..24h (provider records live 48h)", c.P2P.ReprovideInterval)
	}
	l := c.P2P.Limits
	if l.MaxMemoryMB < 0 || l.MaxFDs < 0 || l.ConnsLow < 0 || l.ConnsHigh < 0 {
		return errors.New("p2p.limits: values must not be negative")
	}
	if l.ConnsHigh != 0 && l.ConnsHigh < l.ConnsLow {
		return fmt.Errorf("p2p.limits.conns_high: %d is below conns_low %d", l.ConnsHigh, l.ConnsLow)
	}
	if _, _, err := net.SplitHostPort(c.API.Listen); err != nil {
		return fmt.Errorf("api.listen: %q is not HOST:PORT", c.API.Listen)
	}
	if err := c.Runtime.Validate(); err != nil {
		return err
	}
	if err := c.validateMarket(); err != nil {
		return err
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log.level: %q is not debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		return fmt.Errorf("log.format: %q is not text or json", c.Log.Format)
	}
	return nil
}

// configTemplate is written by `cocoon init`: every field, commented, defaults filled.
const configTemplate = `# cocoon node configuration. Every field is shown with its default.
# Flags given to 'cocoon node' override the values here.

[p2p]
# libp2p listen addresses (TCP and QUIC-v1). Port 0 picks a free port.
listen = ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"]
# Peers to join the network through: multiaddrs ending in /p2p/<peer id>.
bootstrap = []
# Find peers on the local network with mDNS (multicast on every LAN interface).
mdns = false
# Kademlia DHT mode: "auto" (server once publicly reachable), "server" or "client".
dht_mode = "auto"
# Ask the LAN gateway for a port mapping (UPnP / NAT-PMP). Turn on behind a home
# router that allows it; without it, AutoNAT, hole punching and relays still work.
nat_port_map = false
# Offer a limited circuit-relay v2 service to other peers when publicly reachable.
relay_service = true
# How often this node re-announces the models it serves in the DHT (records live 48h).
reprovide_interval = "12h0m0s"

[p2p.limits]
# libp2p resource manager budget; 0 scales from the machine's memory and fd limit.
max_memory_mb = 0
max_fds = 0
# Connection manager water marks: above conns_high, trim down to conns_low.
conns_low = 100
conns_high = 400

[api]
# The local HTTP API (status, OpenAI-compatible endpoints). Keep it on loopback:
# anyone who can reach it and holds api.token can spend this node's money.
listen = "127.0.0.1:8421"

[runtime]
# How this node runs inference when it serves models (a node that serves none is
# a client only). "llamacpp": GGUF files through the embedded llama.cpp, on the
# GPU when a CUDA or Vulkan build of it is installed and the driver is there.
# "openai": any OpenAI-compatible server (vLLM, llama-server, Ollama, SGLang).
backend = "llamacpp"
# llama.cpp's shared libraries; empty: $COCOON_LLAMA_LIB, else what
# 'cocoon runtime install' put in this datadir or in ~/.cache/cocoon.
lib_dir = ""
# Which installed build to load: "" (the best this machine runs: cuda, then
# vulkan, then cpu, falling back to cpu when a GPU build fails to load), "cpu",
# "cuda" or "vulkan".
llama = ""
# Layers to offload to the GPU with a GPU build (-1 or absent: all; 0: none).
# gpu_layers = -1
# Threads per generation (0: min(CPUs, 4)) and context size (0: the model's, at most 4096).
threads = 0
context_size = 0
# Concurrent generations, and how many requests may wait for one (0: default, -1: none).
slots = 0
queue = 0
# For backend = "openai": the server's base URL, and the environment variable
# holding its API key (the key never sits in this file).
upstream_url = ""
api_key_env = ""
# Models to serve, one table each ('cocoon node --serve FILE.gguf' adds more):
# [[runtime.models]]
# path = "/models/stories260K.gguf"
# id = "stories260K"      # default: the file name without .gguf
# For backend = "openai": id only, as the server lists it, and optionally the
# tokens per request where the server does not say them or runs fewer (the
# smaller of the two is served):
# context_length = 8192
# and what the server offers for the model, each off unless set; a request
# that uses one that is off is refused naming the field and never reaches it:
# structured_output = true   # follows response_format (json_object, json_schema)
# tools = true               # follows tools/tool_choice, answers tool calls
# logprobs = true            # returns logprobs/top_logprobs
# logit_bias = true          # follows logit_bias (its own vocabulary's token ids)
# images = true              # reads image_url parts (data: URLs)
# embeddings = true          # answers /v1/embeddings
# embedding_dims = 1024      # its vectors' length; absent: asked of it at start

[market]
# What this node charges for the models it serves, in nanoTON per 1M prompt and
# completion tokens; a served model without a price is not sold on the network.
# Selling needs a wallet (settle.wallet). One table per model:
# [[market.prices]]
# model = "stories260K"
# prompt = 100000000
# completion = 400000000
prices = []
# Tokens a worker delivers before it waits for the next voucher (0: the market's default).
credit_tokens = 0
# The smallest channel deposit this worker asks of its clients, nanoTON.
min_deposit = 0
# As a client: the most this node pays per 1M prompt / completion tokens (0: no cap).
# Which workers it buys from is enclave.policy.allowed_kinds.
max_prompt_price = 0
max_completion_price = 0
# As a client: the models whose ads this node always follows (it joins their
# ads topics at start), e.g. ["stories260K"]. Any other model's ads are followed
# from the first request for it until topic_idle passes without one; the
# models this node sells are followed anyway.
models = []
topic_idle = "10m0s"

[enclave]
# The evidence this node makes as a worker: "none", "tdx" or "sev-snp" (through the
# kernel's configfs-tsm), or "sim" (SIMULATED, not confidential; testnets only,
# refused unless policy.allow_sim = true).
attester = "none"
# For tdx and sev-snp the ads announce the measurement this machine's own report
# carries (TDX MRTD, SNP measurement). Set a hex value here to refuse to start
# when the report says anything else (e.g. after an unplanned image change).
measurement = ""

[enclave.policy]
# As a client: the kinds of the workers this node buys from, and so the evidence it
# accepts of them: tdx, sev-snp, none (no TEE: the worker sees the prompts), sim
# (needs allow_sim).
allowed_kinds = ["tdx", "sev-snp"]
# The guard on simulated TEEs: "sim" may be listed above, or be the attester, only
# when this is on. Testnets only.
allow_sim = false
# Accept debuggable guests, whose memory the host can read.
allow_debug = false
# Oldest signed evidence accepted (sim evidence carries a time).
max_evidence_age = "5m0s"
# Allow-lists of measurements per kind (absent: any measurement):
# [enclave.policy.allowed_measurements]
# tdx = ["<mrtd hex>"]

[settle]
# Where channels are settled: "none"; "ton" (TON itself: ton_network "mainnet" or
# "testnet", ton_config the URL or file of its liteserver global config, empty for
# the network's public one); or "devledger" (a SIMULATED chain, not TON, served by
# 'cocoon ledger serve') at devledger_url.
chain = "none"
devledger_url = ""
ton_network = ""
ton_config = ""
# The channel store; empty: <datadir>/channels.db.
store = ""
# The wallet's 24-word mnemonic file; empty: <datadir>/wallet.key (a node without
# a wallet buys and sells nothing).
wallet = ""

[log]
# debug, info, warn or error.
level = "info"
# text or json.
format = "text"
`
