package market

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/market/pb"
	"github.com/cocoon-network/cocoon/runtime"
)

// Limits of a capacity ad.
const (
	MaxAdSize     = 4 << 10          // bytes on the wire, the gossipsub topic's cap
	MaxAdTTL      = 10 * time.Minute // longer TTLs are refused
	MaxClockSkew  = 30 * time.Second // how far in the future issued_at may be
	MaxAdModels   = 32
	MaxAdGPUs     = 16
	maxIDLen      = 128 // model IDs, GPU names, digests
	maxMeasureLen = 128
	maxWalletLen  = 128
	maxKeyLen     = 64
)

// The ad cadence: a worker re-publishes its ad every DefaultAdInterval (and
// when its capacity changes), and each ad is valid for DefaultAdTTL, so a
// worker that stops publishing leaves the books within a minute.
const (
	DefaultAdInterval = 10 * time.Second
	DefaultAdTTL      = 60 * time.Second
)

// teeToPB and teeFromPB convert a kind to and from the ad's wire enum, whose
// numbers are the protobuf's own (TEE_KIND_UNSPECIFIED is no kind).
func teeToPB(k tee.Kind) pb.TEEKind {
	switch k {
	case tee.None:
		return pb.TEEKind_TEE_KIND_NONE
	case tee.Sim:
		return pb.TEEKind_TEE_KIND_SIM
	case tee.TDX:
		return pb.TEEKind_TEE_KIND_TDX
	case tee.SEVSNP:
		return pb.TEEKind_TEE_KIND_SEV_SNP
	}
	return pb.TEEKind_TEE_KIND_UNSPECIFIED
}

func teeFromPB(k pb.TEEKind) (tee.Kind, bool) {
	switch k {
	case pb.TEEKind_TEE_KIND_NONE:
		return tee.None, true
	case pb.TEEKind_TEE_KIND_SIM:
		return tee.Sim, true
	case pb.TEEKind_TEE_KIND_TDX:
		return tee.TDX, true
	case pb.TEEKind_TEE_KIND_SEV_SNP:
		return tee.SEVSNP, true
	}
	return "", false
}

// Ad is a worker's capacity advertisement.
type Ad struct {
	Peer       peer.ID
	Seq        uint64 // strictly increasing per peer
	IssuedAt   time.Time
	TTL        time.Duration
	Models     []ModelOffer
	Capacity   Capacity
	TEE        TEE
	Settlement Settlement
}

// ModelOffer is one model a worker serves and what it charges for it.
type ModelOffer struct {
	ID            string
	WeightsDigest string // "sha256:<hex>", "" when unknown
	ContextLength uint32
	Price         Price
	TTFT          time.Duration // p50 time to first token (millisecond resolution on the wire)
	TimePerToken  time.Duration // p50 time per output token (microsecond resolution)
	// What the worker's model offers beyond plain text, as runtime.Model
	// says (StructuredOutput, Tools, Logprobs, LogitBias, Images,
	// Embeddings): a client sends a job that uses one only to a worker whose
	// offer says so (Policy, through runtime.Model.Serves).
	StructuredOutput bool
	Tools            bool
	Logprobs         bool
	LogitBias        bool
	Images           bool
	Embeddings       bool
	EmbeddingDims    uint32
	// Where the embedded backend runs it (runtime.Offload): the llama.cpp
	// build ("cpu", "cuda", "vulkan"; "" for an upstream) and how many of its
	// layers are on a GPU.
	Llama     string
	Layers    uint32
	GPULayers uint32
}

// Model is the offer as the runtime rules see it: its id, context and
// capabilities, for runtime.Model.Serves.
func (o ModelOffer) Model() runtime.Model {
	return runtime.Model{ID: o.ID, Digest: o.WeightsDigest, ContextLength: int(o.ContextLength),
		StructuredOutput: o.StructuredOutput, Tools: o.Tools, Logprobs: o.Logprobs, LogitBias: o.LogitBias,
		Images: o.Images, Embeddings: o.Embeddings, EmbeddingDims: int(o.EmbeddingDims)}
}

// OfferOf is the offer of a model a backend serves, at price.
func OfferOf(m runtime.Model, price Price) ModelOffer {
	return ModelOffer{ID: m.ID, WeightsDigest: m.Digest, ContextLength: uint32(min(max(m.ContextLength, 0), runtime.MaxContextLength)),
		Price: price, StructuredOutput: m.StructuredOutput, Tools: m.Tools, Logprobs: m.Logprobs, LogitBias: m.LogitBias,
		Images: m.Images, Embeddings: m.Embeddings, EmbeddingDims: uint32(min(max(m.EmbeddingDims, 0), maxEmbeddingDims))}
}

// GPU is one accelerator of a worker.
type GPU struct {
	Name string
	VRAM uint64 // bytes
}

// Capacity is how much work a worker can take now.
type Capacity struct {
	GPUs        []GPU
	SlotsTotal  uint32
	SlotsFree   uint32
	QueueLength uint32
}

// TEE is the worker's enclave kind and the measurement its attestation will show.
type TEE struct {
	Kind        tee.Kind
	Measurement []byte
}

// Settlement says how a worker is paid.
type Settlement struct {
	WalletAddress string // TON address
	ChannelKey    []byte // public key that signs the worker's channel states
	MinDeposit    uint64 // nanoTON
}

// Expires is when a stops being valid.
func (a *Ad) Expires() time.Time { return a.IssuedAt.Add(a.TTL) }

// Offer returns a's offer for model, if any.
func (a *Ad) Offer(model string) (ModelOffer, bool) {
	for _, m := range a.Models {
		if m.ID == model {
			return m, true
		}
	}
	return ModelOffer{}, false
}

func (s Settlement) toPB() *pb.Settlement {
	return &pb.Settlement{WalletAddress: s.WalletAddress, ChannelKey: s.ChannelKey, MinDeposit: s.MinDeposit}
}

func settlementFromPB(s *pb.Settlement) Settlement {
	return Settlement{WalletAddress: s.GetWalletAddress(), ChannelKey: s.GetChannelKey(), MinDeposit: s.GetMinDeposit()}
}

// Encode returns the wire form of a; it fails if the ad is larger than MaxAdSize
// or does not pass the schema checks that receivers apply.
func (a *Ad) Encode() ([]byte, error) {
	if err := a.check(); err != nil {
		return nil, fmt.Errorf("encode ad: %w", err)
	}
	m := a.toPB()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode ad: %w", err)
	}
	if len(b) > MaxAdSize {
		return nil, fmt.Errorf("encode ad: %d bytes: %w", len(b), ErrAdTooLarge)
	}
	return b, nil
}

func (a *Ad) toPB() *pb.Ad {
	m := &pb.Ad{
		PeerId:     []byte(a.Peer),
		Seq:        a.Seq,
		IssuedAtMs: a.IssuedAt.UnixMilli(),
		TtlS:       uint32(a.TTL / time.Second),
		Capacity: &pb.Capacity{
			SlotsTotal:  a.Capacity.SlotsTotal,
			SlotsFree:   a.Capacity.SlotsFree,
			QueueLength: a.Capacity.QueueLength,
		},
		Tee:        &pb.TEE{Kind: teeToPB(a.TEE.Kind), Measurement: a.TEE.Measurement},
		Settlement: a.Settlement.toPB(),
	}
	for _, o := range a.Models {
		m.Models = append(m.Models, &pb.ModelOffer{
			Id:               o.ID,
			WeightsDigest:    o.WeightsDigest,
			ContextLength:    o.ContextLength,
			PricePrompt:      o.Price.Prompt,
			PriceCompletion:  o.Price.Completion,
			TtftP50Ms:        durUnits(o.TTFT, time.Millisecond),
			TpotP50Us:        durUnits(o.TimePerToken, time.Microsecond),
			StructuredOutput: o.StructuredOutput,
			Tools:            o.Tools,
			Logprobs:         o.Logprobs,
			LogitBias:        o.LogitBias,
			Images:           o.Images,
			Embeddings:       o.Embeddings,
			EmbeddingDims:    o.EmbeddingDims,
			Llama:            o.Llama,
			Layers:           o.Layers,
			GpuLayers:        o.GPULayers,
		})
	}
	for _, g := range a.Capacity.GPUs {
		m.Capacity.Gpus = append(m.Capacity.Gpus, &pb.GPU{Name: g.Name, VramBytes: g.VRAM})
	}
	return m
}

func durUnits(d, unit time.Duration) uint32 {
	n := d / unit
	if n < 0 {
		return 0
	}
	if n > 1<<32-1 {
		return 1<<32 - 1
	}
	return uint32(n)
}

// Errors of DecodeAd and Ad.Encode; each maps to a DropReason.
var (
	ErrAdTooLarge  = errors.New("market: ad larger than 4 KiB")
	ErrAdMalformed = errors.New("market: ad is not a valid protobuf")
	ErrAdSchema    = errors.New("market: ad violates the schema")
)

// DecodeAd parses and schema-checks an ad. It does not check time or the sender:
// that is Book.Offer's work.
func DecodeAd(b []byte) (*Ad, error) {
	if len(b) > MaxAdSize {
		return nil, fmt.Errorf("decode ad: %d bytes: %w", len(b), ErrAdTooLarge)
	}
	var m pb.Ad
	if err := proto.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("decode ad: %w: %v", ErrAdMalformed, err)
	}
	id, err := peer.IDFromBytes(m.GetPeerId())
	if err != nil {
		return nil, fmt.Errorf("decode ad: peer id: %w: %v", ErrAdSchema, err)
	}
	kind, ok := teeFromPB(m.GetTee().GetKind())
	if !ok {
		return nil, fmt.Errorf("decode ad: %w: tee kind %v", ErrAdSchema, m.GetTee().GetKind())
	}
	a := &Ad{
		Peer:     id,
		Seq:      m.GetSeq(),
		IssuedAt: time.UnixMilli(m.GetIssuedAtMs()),
		TTL:      time.Duration(m.GetTtlS()) * time.Second,
		Capacity: Capacity{
			SlotsTotal:  m.GetCapacity().GetSlotsTotal(),
			SlotsFree:   m.GetCapacity().GetSlotsFree(),
			QueueLength: m.GetCapacity().GetQueueLength(),
		},
		TEE:        TEE{Kind: kind, Measurement: m.GetTee().GetMeasurement()},
		Settlement: settlementFromPB(m.GetSettlement()),
	}
	if m.Models != nil {
		a.Models = make([]ModelOffer, 0, len(m.Models))
	}
	for _, o := range m.Models {
		a.Models = append(a.Models, ModelOffer{
			ID:               o.GetId(),
			WeightsDigest:    o.GetWeightsDigest(),
			ContextLength:    o.GetContextLength(),
			Price:            Price{Prompt: o.GetPricePrompt(), Completion: o.GetPriceCompletion()},
			TTFT:             time.Duration(o.GetTtftP50Ms()) * time.Millisecond,
			TimePerToken:     time.Duration(o.GetTpotP50Us()) * time.Microsecond,
			StructuredOutput: o.GetStructuredOutput(),
			Tools:            o.GetTools(),
			Logprobs:         o.GetLogprobs(),
			LogitBias:        o.GetLogitBias(),
			Images:           o.GetImages(),
			Embeddings:       o.GetEmbeddings(),
			EmbeddingDims:    o.GetEmbeddingDims(),
			Llama:            o.GetLlama(),
			Layers:           o.GetLayers(),
			GPULayers:        o.GetGpuLayers(),
		})
	}
	for _, g := range m.GetCapacity().GetGpus() {
		a.Capacity.GPUs = append(a.Capacity.GPUs, GPU{Name: g.GetName(), VRAM: g.GetVramBytes()})
	}
	if err := a.check(); err != nil {
		return nil, fmt.Errorf("decode ad: %w", err)
	}
	return a, nil
}

// check applies the schema rules: what every field must hold regardless of time.
func (a *Ad) check() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrAdSchema, fmt.Sprintf(format, args...))
	}
	if err := a.Peer.Validate(); err != nil {
		return bad("peer id: %v", err)
	}
	if a.Seq == 0 {
		return bad("seq is 0")
	}
	if a.IssuedAt.UnixMilli() <= 0 {
		return bad("issued_at not set")
	}
	if a.TTL < time.Second || a.TTL > MaxAdTTL || a.TTL%time.Second != 0 {
		return bad("ttl %v not whole seconds in [1s, %v]", a.TTL, MaxAdTTL)
	}
	if len(a.Models) == 0 || len(a.Models) > MaxAdModels {
		return bad("%d models, want 1..%d", len(a.Models), MaxAdModels)
	}
	seen := make(map[string]bool, len(a.Models))
	for _, m := range a.Models {
		if m.ID == "" || len(m.ID) > maxIDLen || len(m.WeightsDigest) > maxIDLen {
			return bad("model id %q or digest too long or empty", m.ID)
		}
		if seen[m.ID] {
			return bad("model %q listed twice", m.ID)
		}
		seen[m.ID] = true
		if m.ContextLength == 0 {
			return bad("model %q: context length 0", m.ID)
		}
		if m.Embeddings != (m.EmbeddingDims > 0) || m.EmbeddingDims > maxEmbeddingDims {
			return bad("model %q: embeddings %v with %d dimensions", m.ID, m.Embeddings, m.EmbeddingDims)
		}
		switch m.Llama {
		case "", "cpu", "cuda", "vulkan":
		default:
			return bad("model %q: llama.cpp build %q", m.ID, m.Llama)
		}
		if m.GPULayers > m.Layers {
			return bad("model %q: %d of %d layers on a GPU", m.ID, m.GPULayers, m.Layers)
		}
	}
	if len(a.Capacity.GPUs) > MaxAdGPUs {
		return bad("%d gpus, want at most %d", len(a.Capacity.GPUs), MaxAdGPUs)
	}
	for _, g := range a.Capacity.GPUs {
		if g.Name == "" || len(g.Name) > maxIDLen {
			return bad("gpu name %q", g.Name)
		}
	}
	if a.Capacity.SlotsTotal == 0 || a.Capacity.SlotsFree > a.Capacity.SlotsTotal {
		return bad("slots free %d of total %d", a.Capacity.SlotsFree, a.Capacity.SlotsTotal)
	}
	switch a.TEE.Kind {
	case tee.None:
		if len(a.TEE.Measurement) != 0 {
			return bad("tee none with a measurement")
		}
	case tee.Sim, tee.TDX, tee.SEVSNP:
		if len(a.TEE.Measurement) == 0 || len(a.TEE.Measurement) > maxMeasureLen {
			return bad("tee %v: measurement of %d bytes", a.TEE.Kind, len(a.TEE.Measurement))
		}
	default:
		return bad("tee kind %q", a.TEE.Kind)
	}
	if a.Settlement.WalletAddress == "" || len(a.Settlement.WalletAddress) > maxWalletLen {
		return bad("wallet address of %d bytes", len(a.Settlement.WalletAddress))
	}
	if len(a.Settlement.ChannelKey) == 0 || len(a.Settlement.ChannelKey) > maxKeyLen {
		return bad("channel key of %d bytes", len(a.Settlement.ChannelKey))
	}
	return nil
}

// Equal reports whether a and b hold the same ad (times compared to the millisecond
// the wire keeps).
func (a *Ad) Equal(b *Ad) bool {
	if a.Peer != b.Peer || a.Seq != b.Seq || a.IssuedAt.UnixMilli() != b.IssuedAt.UnixMilli() || a.TTL != b.TTL ||
		len(a.Models) != len(b.Models) || len(a.Capacity.GPUs) != len(b.Capacity.GPUs) ||
		a.Capacity.SlotsTotal != b.Capacity.SlotsTotal || a.Capacity.SlotsFree != b.Capacity.SlotsFree ||
		a.Capacity.QueueLength != b.Capacity.QueueLength || a.TEE.Kind != b.TEE.Kind ||
		!bytes.Equal(a.TEE.Measurement, b.TEE.Measurement) ||
		a.Settlement.WalletAddress != b.Settlement.WalletAddress ||
		!bytes.Equal(a.Settlement.ChannelKey, b.Settlement.ChannelKey) ||
		a.Settlement.MinDeposit != b.Settlement.MinDeposit {
		return false
	}
	for i := range a.Models {
		x, y := a.Models[i], b.Models[i]
		if x.ID != y.ID || x.WeightsDigest != y.WeightsDigest || x.ContextLength != y.ContextLength || x.Price != y.Price ||
			x.StructuredOutput != y.StructuredOutput || x.Tools != y.Tools || x.Logprobs != y.Logprobs ||
			x.LogitBias != y.LogitBias || x.Images != y.Images || x.Embeddings != y.Embeddings || x.EmbeddingDims != y.EmbeddingDims ||
			x.Llama != y.Llama || x.Layers != y.Layers || x.GPULayers != y.GPULayers ||
			x.TTFT.Truncate(time.Millisecond) != y.TTFT.Truncate(time.Millisecond) ||
			x.TimePerToken.Truncate(time.Microsecond) != y.TimePerToken.Truncate(time.Microsecond) {
			return false
		}
	}
	for i := range a.Capacity.GPUs {
		if a.Capacity.GPUs[i] != b.Capacity.GPUs[i] {
			return false
		}
	}
	return true
}
