package runner

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/cocoon-network/cocoon/runtime"
)

// MaxFrame caps one frame: a checked request holds at most 4 MiB of text,
// which JSON may escape up to six times over.
const MaxFrame = 32 << 20

// Window is how many deltas the child may send beyond what the parent has
// consumed: enough to hide the pipe's round trip, small enough that a slow
// reader costs little compute.
const Window = 8

// Frame operations.
const (
	opLoad     = "load"
	opReady    = "ready"
	opFatal    = "fatal"
	opGenerate = "generate"
	opStarted  = "started"
	opCredit   = "credit"
	opDelta    = "delta"
	opEnd      = "end"
	opError    = "error"
	opClose    = "close"
	opEmbed    = "embed"    // parent → child: Model and Inputs
	opEmbedded = "embedded" // child → parent: Vectors and Usage
	opPing     = "ping"
	opPong     = "pong"
)

// frame is every message of the protocol; Op says which fields are set.
type frame struct {
	Op     string          `json:"op"`
	ID     uint64          `json:"id,omitempty"`
	Config *childConfig    `json:"config,omitempty"`
	Models []runtime.Model `json:"models,omitempty"`
	// A ready's placement of each model (llama.cpp build, offloaded layers).
	Offloads map[string]runtime.Offload `json:"offloads,omitempty"`
	PID      int                        `json:"pid,omitempty"`
	Req      *runtime.Request           `json:"req,omitempty"`
	N        int                        `json:"n,omitempty"`
	Text     string                     `json:"text,omitempty"`
	Tokens   int                        `json:"tokens,omitempty"`
	// A delta's tool call pieces, logprobs and refusal (runtime.Delta).
	Calls    []runtime.ToolCallDelta `json:"calls,omitempty"`
	Logprobs []runtime.TokenLogprob  `json:"logprobs,omitempty"`
	Refusal  string                  `json:"refusal,omitempty"`
	// An embed's request and answer.
	Model   string         `json:"model,omitempty"`
	Inputs  []string       `json:"inputs,omitempty"`
	Vectors [][]float32    `json:"vectors,omitempty"`
	Usage   *runtime.Usage `json:"usage,omitempty"`
	Finish  string         `json:"finish,omitempty"`
	Kind    string         `json:"kind,omitempty"`
	Field   string         `json:"field,omitempty"` // an error's runtime.FieldError field
	Msg     string         `json:"msg,omitempty"`
}

// childConfig is what the child loads: llamacpp.Config less the logger.
type childConfig struct {
	LibDir      string                `json:"lib_dir"`
	Lib         string                `json:"lib"`        // the build's kind, reported back in Offloads
	GPULayers   int                   `json:"gpu_layers"` // -1 all, 0 none
	Models      []runtime.ModelConfig `json:"models"`
	Threads     int                   `json:"threads"`
	ContextSize int                   `json:"context_size"`
	Parallel    int                   `json:"parallel"`
	LogLevel    string                `json:"log_level"`
}

var errFrameTooLarge = errors.New("runner: frame over MaxFrame")

// readFrame reads one frame. A frame that is too large or not JSON is an
// error: the other side is broken, and the connection is dropped.
func readFrame(r *bufio.Reader) (frame, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return frame{}, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > MaxFrame {
		return frame{}, fmt.Errorf("%w: %d bytes", errFrameTooLarge, n)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		return frame{}, fmt.Errorf("runner: frame body: %w", io.ErrUnexpectedEOF)
	}
	return decodeFrame(buf)
}

func decodeFrame(b []byte) (frame, error) {
	var f frame
	if err := json.Unmarshal(b, &f); err != nil {
		return frame{}, fmt.Errorf("runner: frame is not JSON: %w", err)
	}
	if f.Op == "" {
		return frame{}, errors.New("runner: frame has no op")
	}
	if f.N < 0 || f.N > Window || f.Tokens < 0 {
		return frame{}, fmt.Errorf("runner: %s frame: n %d or tokens %d out of range", f.Op, f.N, f.Tokens)
	}
	return f, nil
}

// frameWriter writes whole frames from many goroutines.
type frameWriter struct {
	mu  sync.Mutex
	w   *bufio.Writer
	buf []byte
}

func newFrameWriter(w io.Writer) *frameWriter { return &frameWriter{w: bufio.NewWriter(w)} }

func (fw *frameWriter) send(f frame) error {
	body, err := json.Marshal(f)
	if err != nil {
		return fmt.Errorf("runner: encode %s: %w", f.Op, err)
	}
	if len(body) > MaxFrame {
		return fmt.Errorf("%w: %s of %d bytes", errFrameTooLarge, f.Op, len(body))
	}
	fw.mu.Lock()
	defer fw.mu.Unlock()
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(body)))
	fw.w.Write(hdr[:])
	fw.w.Write(body)
	return fw.w.Flush()
}
