package openaiapi

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"

	"github.com/cocoon-network/cocoon/runtime"
)

// EmbeddingRequest is the body of POST /v1/embeddings: a vector for each
// input. The decoder refuses any other field by name unless it is neutral
// (params.go): dimensions only null, user inert.
type EmbeddingRequest struct {
	Model string     `json:"model"`
	Input EmbedInput `json:"input"`
	// EncodingFormat is "float" (the default) or "base64": each vector as
	// the base64 of its little-endian float32s, as OpenAI sends it.
	EncodingFormat string `json:"encoding_format,omitempty"`
}

// EmbedInput is "input": a string, or an array of strings. Arrays of token
// ids are refused (params.go); it encodes as an array.
type EmbedInput []string

func (in *EmbedInput) UnmarshalJSON(b []byte) error {
	many, err := stringOrStrings(b)
	if err != nil {
		return fmt.Errorf("input must be a string or an array of strings")
	}
	*in = many
	return nil
}

// EmbeddingList is the answer of /v1/embeddings.
type EmbeddingList struct {
	Object string         `json:"object"` // "list"
	Data   []Embedding    `json:"data"`
	Model  string         `json:"model"`
	Usage  EmbeddingUsage `json:"usage"`
}

// Embedding is one vector of an EmbeddingList, in the order of the inputs.
type Embedding struct {
	Object    string `json:"object"` // "embedding"
	Index     int    `json:"index"`
	Embedding Vector `json:"embedding"`
}

// Vector is an embedding: a JSON array of numbers, or with Base64 the
// base64 of its little-endian float32s. It decodes from either.
type Vector struct {
	Values []float32
	Base64 bool
}

func (v Vector) MarshalJSON() ([]byte, error) {
	if !v.Base64 {
		if v.Values == nil {
			return []byte("[]"), nil
		}
		return json.Marshal(v.Values)
	}
	b := make([]byte, 4*len(v.Values))
	for i, f := range v.Values {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
	}
	return json.Marshal(base64.StdEncoding.EncodeToString(b))
}

func (v *Vector) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '"' {
		*v = Vector{}
		return json.Unmarshal(b, &v.Values)
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	raw, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(raw)%4 != 0 {
		return fmt.Errorf("embedding is not base64 of float32s")
	}
	*v = Vector{Values: make([]float32, len(raw)/4), Base64: true}
	for i := range v.Values {
		v.Values[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
	}
	return nil
}

// EmbeddingUsage is an embeddings answer's usage; CostNanoTON is cocoon's
// addition, present when the embeddings were bought on the network.
type EmbeddingUsage struct {
	PromptTokens int     `json:"prompt_tokens"`
	TotalTokens  int     `json:"total_tokens"`
	CostNanoTON  *uint64 `json:"cost_nanoton,omitempty"`
}

// DecodeEmbeddingRequest reads and checks an embeddings request and
// converts it, as DecodeChatRequest. Errors are *Error with status 400 or
// 413.
func DecodeEmbeddingRequest(r io.Reader) (EmbeddingRequest, runtime.EmbedRequest, error) {
	var req EmbeddingRequest
	if err := decodeJSON(r, &req, checkEmbeddingFields); err != nil {
		return req, runtime.EmbedRequest{}, err
	}
	er, err := req.Runtime()
	return req, er, err
}

// Runtime checks the request and converts it.
func (req EmbeddingRequest) Runtime() (runtime.EmbedRequest, error) {
	switch req.EncodingFormat {
	case "", "float", "base64":
	default:
		return runtime.EmbedRequest{}, refuse("encoding_format", "unsupported_value",
			`encoding_format %.32q is not supported: "float" or "base64"`, req.EncodingFormat)
	}
	if req.Model == "" {
		return runtime.EmbedRequest{}, badRequest("model", "model is required")
	}
	er := runtime.EmbedRequest{Model: req.Model, Inputs: req.Input}
	if err := check(er.Check()); err != nil {
		return runtime.EmbedRequest{}, err
	}
	return er, nil
}

// embeddings serves POST /v1/embeddings.
func (h *Handler) embeddings(w http.ResponseWriter, r *http.Request) {
	emb, ok := h.Backend.(runtime.Embedder)
	if !ok {
		h.writeError(w, &Error{Status: http.StatusNotFound, Type: "invalid_request_error", Code: "unknown_url",
			Message: "embeddings are not served here (this server has /v1/chat/completions, /v1/completions and /v1/models)"})
		return
	}
	body := &bodyReader{r: http.MaxBytesReader(w, r.Body, MaxBodyBytes)}
	req, er, err := DecodeEmbeddingRequest(body)
	if err != nil {
		h.writeError(w, body.errorFor(w, err))
		return
	}
	// A listed model that serves no embeddings is refused naming the
	// capability; an unlisted one is the backend's to refuse, as for chat.
	for _, m := range h.Backend.Models() {
		if m.ID == er.Model {
			if err := m.ServesEmbeddings(); err != nil {
				h.writeError(w, ErrorFor(err))
				return
			}
			break
		}
	}
	out, err := emb.Embed(r.Context(), er)
	if err != nil {
		h.writeError(w, ErrorFor(err))
		return
	}
	if len(out.Vectors) != len(er.Inputs) {
		h.writeError(w, ErrorFor(fmt.Errorf("%w: %d vectors for %d inputs", runtime.ErrUpstream, len(out.Vectors), len(er.Inputs))))
		return
	}
	list := EmbeddingList{Object: "list", Data: make([]Embedding, len(out.Vectors)), Model: er.Model,
		Usage: EmbeddingUsage{PromptTokens: out.PromptTokens, TotalTokens: out.PromptTokens, CostNanoTON: out.CostNanoTON}}
	for i, v := range out.Vectors {
		for _, f := range v {
			if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
				h.writeError(w, ErrorFor(fmt.Errorf("%w: vector %d is not finite", runtime.ErrUpstream, i)))
				return
			}
		}
		list.Data[i] = Embedding{Object: "embedding", Index: i, Embedding: Vector{Values: v, Base64: req.EncodingFormat == "base64"}}
	}
	h.writeJSON(w, http.StatusOK, list)
}
