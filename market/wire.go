package market

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/libp2p/go-msgio/pbio"
	"github.com/xssnick/tonutils-go/address"
	"google.golang.org/protobuf/proto"

	"github.com/cocoon-network/cocoon/market/pb"
	"github.com/cocoon-network/cocoon/runtime"
)

// The job stream, one per job, each message a varint-length-delimited pb.Frame:
//
//	client                                   worker
//	[client: the worker's attestation verified before the stream opens]
//	Open{job_id, model, params, max_price, channel} →
//	                                       [worker: a channel it does not know
//	                                        is read from the chain (Payee.Open)]
//	                                       ← Accept{prices, credit_tokens, settlement, channel_state}
//	                                         | Reject{code}            (stream ends)
//	[client: checks the price; Payer.Sync(channel_state), continuing from
//	 the worker's state if newer]
//	Prompt{messages | prompt, continuation} →
//	                                       ← Chunk{delta, tokens_so_far} …
//	Voucher{state, job_id, cumulative} → (each credit_tokens/2 delivered tokens)
//	                                       ← Done{usage, finish_reason, receipt}
//	Voucher{state, job_id, cumulative = Cost(price, prompt, completion)} →
//
// Money: during the stream cumulative vouchers cover the completion tokens
// delivered so far, ceil(completion·price/1e6); the worker sends a chunk only
// while at most credit_tokens of its tokens are unpaid (creditAllows), and stops
// with Cancel{NO_PAYMENT} when no voucher comes within Timeouts.Voucher. The
// prompt is paid with the final voucher, because the worker's runtime counts
// prompt tokens and reports them in Done: the worker's risk is the prompt plus one
// credit window, the client's is nothing it did not receive. The state in a
// Voucher is cumulative over the whole channel, which the client's concurrent
// jobs on the worker share; job_id and cumulative say what the message gives
// this job, and the worker extends credit only on payments on its disk
// (Account.Durable). Either side may send
// Cancel{code}; the worker answers a client's Cancel with Done.
//
// Channels: Open.channel (optional) is the TON address of the client's payment
// channel contract to the worker. A worker with WorkerConfig.Channels reads that
// contract from the chain before it accepts; it stores the channel (with the
// deposit on the chain) only if the contract runs the channel code, its storage
// hashes to that address, it is open, the client's balance is above zero and
// its worker key is the worker's wallet key; otherwise Reject{NO_CHANNEL}, before
// any token or voucher. Nothing about the channel is taken from the client's word.

// ProtocolID is the libp2p protocol of the job stream.
const ProtocolID = "/cocoon/job/1.0.0"

// Size caps of job-protocol messages. A frame whose length prefix exceeds the
// reader's cap is refused before its buffer is allocated.
const (
	// MaxWorkerFrame caps every message a client reads (Accept, Reject, Chunk,
	// Done, Cancel).
	MaxWorkerFrame = 128 << 10
	// DefaultMaxPromptFrame caps every message a worker reads; the Prompt is the
	// large one: runtime.MaxTextBytes of text and runtime.MaxImageBytes of
	// images, with their framing. Worker.MaxPromptBytes overrides it.
	DefaultMaxPromptFrame = 5 << 20

	maxModelLen    = 128
	maxStops       = 8
	maxStopLen     = 256
	maxNonceLen    = 64
	maxChannelAddr = 80 // a TON address: 48 characters user-friendly, 66 raw
	maxFormatType  = 16
	maxFormatName  = runtime.MaxFormatNameBytes
	maxSchemaLen   = runtime.MaxSchemaBytes
	maxMessages    = 4096
	maxBlobLen     = 4 << 10 // vouchers, receipts, channel keys
	maxChunkText   = 16 << 10
	maxCreditToken = 1 << 20
	jobIDLen       = 16
)

// JobID names one job (one stream, one worker). A job that fails over gets a new
// ID on each worker.
type JobID [jobIDLen]byte

// NewJobID returns a random job ID.
func NewJobID() JobID {
	var id JobID
	_, _ = rand.Read(id[:]) // crypto/rand.Read never fails
	return id
}

func (id JobID) String() string { return hex.EncodeToString(id[:]) }

// RejectCode is why a worker declined a job, as sent on the wire.
type RejectCode int32

// Reject codes.
const (
	RejectBusy         = RejectCode(pb.RejectCode_REJECT_BUSY)
	RejectUnknownModel = RejectCode(pb.RejectCode_REJECT_UNKNOWN_MODEL)
	RejectPrice        = RejectCode(pb.RejectCode_REJECT_PRICE)
	RejectNoChannel    = RejectCode(pb.RejectCode_REJECT_NO_CHANNEL)
	RejectPolicy       = RejectCode(pb.RejectCode_REJECT_POLICY)
	RejectBadRequest   = RejectCode(pb.RejectCode_REJECT_BAD_REQUEST)
	RejectInternal     = RejectCode(pb.RejectCode_REJECT_INTERNAL)
)

func (c RejectCode) String() string { return pb.RejectCode(c).String() }

// CancelCode is why a side stopped a job, as sent on the wire.
type CancelCode int32

// Cancel codes.
const (
	CancelClient     = CancelCode(pb.CancelCode_CANCEL_CLIENT)
	CancelNoPayment  = CancelCode(pb.CancelCode_CANCEL_NO_PAYMENT)
	CancelBadVoucher = CancelCode(pb.CancelCode_CANCEL_BAD_VOUCHER)
	CancelTimeout    = CancelCode(pb.CancelCode_CANCEL_TIMEOUT)
	CancelProtocol   = CancelCode(pb.CancelCode_CANCEL_PROTOCOL)
	CancelPrice      = CancelCode(pb.CancelCode_CANCEL_PRICE)
	// CancelAttestation was sent by clients that attested after Accept; the
	// attestation is now checked before the job stream opens, so no client
	// of this version sends it, and a worker still takes it as a cancel.
	CancelAttestation = CancelCode(pb.CancelCode_CANCEL_ATTESTATION)
	CancelOverReport  = CancelCode(pb.CancelCode_CANCEL_OVER_REPORT)
	CancelInternal    = CancelCode(pb.CancelCode_CANCEL_INTERNAL)
	// CancelBadRequest: the worker refuses the prompt as given (it fails the
	// input checks, or is longer than the model's context). Every worker of
	// the model would refuse it too, so the client tries no other and its
	// caller gets a 400.
	CancelBadRequest = CancelCode(pb.CancelCode_CANCEL_BAD_REQUEST)
)

func (c CancelCode) String() string { return pb.CancelCode(c).String() }

// Errors of Run and Serve. The typed errors below match these with errors.Is.
var (
	ErrRejected    = errors.New("market: job rejected")
	ErrCancelled   = errors.New("market: job cancelled")
	ErrTimeout     = errors.New("market: phase deadline passed")
	ErrProtocol    = errors.New("market: protocol violation")
	ErrStreamEnded = errors.New("market: stream ended")
	ErrAttestation = errors.New("market: attestation check failed")
	ErrPrice       = errors.New("market: price above the client's maximum")
	ErrOverReport  = errors.New("market: worker claimed more tokens than it delivered")
	ErrIgnoredStop = errors.New("market: worker kept sending after cancel")
	ErrCredit      = errors.New("market: worker sent beyond its credit window")
	ErrNoPayment   = errors.New("market: client stopped paying")
	ErrUnderpaid   = errors.New("market: job not paid in full")
)

// RejectError carries the worker's reject code.
type RejectError struct{ Code RejectCode }

func (e *RejectError) Error() string { return fmt.Sprintf("market: job rejected: %v", e.Code) }

// Is matches ErrRejected, and runtime.ErrInvalidRequest for
// RejectBadRequest: the caller's request is at fault, not the worker.
func (e *RejectError) Is(target error) bool {
	return target == ErrRejected || (e.Code == RejectBadRequest && target == runtime.ErrInvalidRequest)
}

// CancelError carries the peer's cancel code.
type CancelError struct{ Code CancelCode }

func (e *CancelError) Error() string {
	if e.Code == CancelBadRequest {
		return "market: the worker refused the prompt as given (longer than the model's context, or it fails the input checks): CANCEL_BAD_REQUEST"
	}
	return fmt.Sprintf("market: job cancelled by peer: %v", e.Code)
}

// Is matches ErrCancelled, and runtime.ErrInvalidRequest for
// CancelBadRequest: the caller's request is at fault, not the worker.
func (e *CancelError) Is(target error) bool {
	return target == ErrCancelled || (e.Code == CancelBadRequest && target == runtime.ErrInvalidRequest)
}

// TimeoutError names the phase whose deadline passed.
type TimeoutError struct{ Phase string }

func (e *TimeoutError) Error() string        { return fmt.Sprintf("market: %s deadline passed", e.Phase) }
func (e *TimeoutError) Is(target error) bool { return target == ErrTimeout }

// Timeouts bound every phase of a job. Zero fields take the defaults in brackets.
type Timeouts struct {
	Open       time.Duration // worker: Open after the stream starts [10s]
	Accept     time.Duration // client: Accept or Reject after Open [10s]
	Prompt     time.Duration // worker: Prompt after Accept (the client attested before it opened the stream) [10s]
	FirstChunk time.Duration // client: the first Chunk after Prompt [60s]
	Chunk      time.Duration // client: each later Chunk or Done; longer is a stall [20s]
	Voucher    time.Duration // worker: a Voucher once the credit window is spent, and the final one after Done [10s]
	Done       time.Duration // client: Done after it sent Cancel [5s]
	Write      time.Duration // either: one message write, where the stream has write deadlines [10s]
	Channel    time.Duration // worker: the chain lookup of the channel a client names in Open [10s]
}

func (t Timeouts) withDefaults() Timeouts {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&t.Open, 10*time.Second)
	def(&t.Accept, 10*time.Second)
	def(&t.Prompt, 10*time.Second)
	def(&t.FirstChunk, 60*time.Second)
	def(&t.Chunk, 20*time.Second)
	def(&t.Voucher, 10*time.Second)
	def(&t.Done, 5*time.Second)
	def(&t.Write, 10*time.Second)
	def(&t.Channel, 10*time.Second)
	return t
}

type readDeadliner interface{ SetReadDeadline(time.Time) error }
type writeDeadliner interface{ SetWriteDeadline(time.Time) error }

// frameReader decodes frames on its own goroutine so that the state machines can
// wait for a frame, a timer and their context at once.
type frameReader struct {
	rw     io.Reader
	frames chan frameItem
	quit   chan struct{}
	done   chan struct{}
	timer  *time.Timer // next's, owned by the reading state machine
}

type frameItem struct {
	f   *pb.Frame
	err error
}

func startReader(r io.Reader, maxSize int, check func(*pb.Frame) error) *frameReader {
	fr := &frameReader{rw: r, frames: make(chan frameItem, 8), quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(fr.done)
		pr := pbio.NewDelimitedReader(r, maxSize)
		for {
			f := new(pb.Frame)
			err := pr.ReadMsg(f)
			switch {
			case errors.Is(err, io.ErrShortBuffer):
				err = fmt.Errorf("read frame: length over %d bytes: %w", maxSize, ErrProtocol)
			case errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe) || errors.Is(err, io.ErrUnexpectedEOF):
				err = fmt.Errorf("read frame: %w: %v", ErrStreamEnded, err)
			case err != nil:
				var perr interface{ Timeout() bool }
				if errors.As(err, &perr) {
					err = fmt.Errorf("read frame: %w: %v", ErrStreamEnded, err)
				} else {
					err = fmt.Errorf("read frame: %w: %v", ErrProtocol, err)
				}
			default:
				if cerr := check(f); cerr != nil {
					err = fmt.Errorf("read frame: %w: %v", ErrProtocol, cerr)
				}
			}
			select {
			case fr.frames <- frameItem{f, err}:
			case <-fr.quit:
				if err == nil { // the rest of the stream is discarded (detach)
					for pr.ReadMsg(new(pb.Frame)) == nil {
					}
				}
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return fr
}

// next waits up to d for the next frame. It reuses one timer (Reset on a fired
// or stopped timer delivers no stale tick since Go 1.23).
func (fr *frameReader) next(ctx context.Context, d time.Duration, phase string) (*pb.Frame, error) {
	if fr.timer == nil {
		fr.timer = time.NewTimer(d)
	} else {
		fr.timer.Reset(d)
	}
	f, err := fr.nextTimer(ctx, fr.timer.C, phase)
	fr.timer.Stop()
	return f, err
}

func (fr *frameReader) nextTimer(ctx context.Context, deadline <-chan time.Time, phase string) (*pb.Frame, error) {
	if err := ctx.Err(); err != nil {
		return nil, err // a cancelled caller takes no more frames, even ones already here
	}
	select {
	case it := <-fr.frames:
		return it.f, it.err
	case <-deadline:
		return nil, &TimeoutError{Phase: phase}
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// stop ends the reader. Where the stream has read deadlines it wakes a blocked
// read and waits for the goroutine; otherwise the goroutine ends when the caller
// closes the stream.
// detach stops delivering frames without waiting for the reader: its
// goroutine reads and discards the rest of the stream until the stream ends
// (the other side's close, a read deadline, a reset), which whoever closes
// the stream bounds. The client detaches, so that its caller's answer never
// waits for a blocked Read to be woken (a deadline in the past took a
// millisecond to do that on a loaded box); its job stream's Close bounds the
// rest (service's jobStream).
func (fr *frameReader) detach() {
	close(fr.quit)
}

func (fr *frameReader) stop() {
	close(fr.quit)
	if d, ok := fr.rw.(readDeadliner); ok {
		_ = d.SetReadDeadline(time.Unix(1, 0))
		<-fr.done
		_ = d.SetReadDeadline(time.Time{})
	}
}

// frameWriter writes each frame, length prefix included, in one Write: on
// unbuffered streams (net.Pipe, yamux) that halves the round trips per frame.
type frameWriter struct {
	rw       io.Writer
	timeout  time.Duration
	deadline time.Time // the write deadline last set
	buf      []byte
}

func newWriter(w io.Writer, timeout time.Duration) *frameWriter {
	return &frameWriter{rw: w, timeout: timeout}
}

func (fw *frameWriter) send(f *pb.Frame) error {
	n := proto.Size(f)
	buf := binary.AppendUvarint(fw.buf[:0], uint64(n))
	buf, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(buf, f)
	if err != nil {
		return fmt.Errorf("encode %s frame: %w", frameName(f), err)
	}
	fw.buf = buf
	if d, ok := fw.rw.(writeDeadliner); ok {
		// Refresh the deadline only when half of it is used up: setting one costs
		// a timer on some streams, and it stays at least timeout/2 ahead.
		if now := time.Now(); fw.deadline.Sub(now) < fw.timeout/2 {
			fw.deadline = now.Add(fw.timeout)
			_ = d.SetWriteDeadline(fw.deadline)
		}
	}
	if _, err := fw.rw.Write(buf); err != nil {
		return fmt.Errorf("write frame: %w: %v", ErrStreamEnded, err)
	}
	return nil
}

func (fw *frameWriter) cancel(code CancelCode) error {
	return fw.send(&pb.Frame{Msg: &pb.Frame_Cancel{Cancel: &pb.Cancel{Code: pb.CancelCode(code)}}})
}

func frameName(f *pb.Frame) string {
	if f == nil || f.Msg == nil {
		return "empty"
	}
	return string(f.ProtoReflect().WhichOneof(f.ProtoReflect().Descriptor().Oneofs().ByName("msg")).Name())
}

// checkClientFrame accepts the frames a client may send and checks their fields.
func checkClientFrame(f *pb.Frame) error {
	switch m := f.Msg.(type) {
	case *pb.Frame_Open:
		return checkOpen(m.Open)
	case *pb.Frame_Prompt:
		return checkPrompt(m.Prompt)
	case *pb.Frame_Voucher:
		return checkVoucher(m.Voucher)
	case *pb.Frame_Cancel:
		return checkCancel(m.Cancel)
	}
	return fmt.Errorf("unexpected %s from a client", frameName(f))
}

// checkWorkerFrame accepts the frames a worker may send and checks their fields.
func checkWorkerFrame(f *pb.Frame) error {
	switch m := f.Msg.(type) {
	case *pb.Frame_Accept:
		return checkAccept(m.Accept)
	case *pb.Frame_Reject:
		return checkReject(m.Reject)
	case *pb.Frame_Chunk:
		return checkChunk(m.Chunk)
	case *pb.Frame_Embedding:
		if m.Embedding.GetIndex() >= runtime.MaxEmbedInputs || len(m.Embedding.GetVector()) > 4*maxEmbeddingDims || len(m.Embedding.GetVector())%4 != 0 {
			return fmt.Errorf("embedding: index %d, %d bytes", m.Embedding.GetIndex(), len(m.Embedding.GetVector()))
		}
		return nil
	case *pb.Frame_Done:
		return checkDone(m.Done)
	case *pb.Frame_Cancel:
		return checkCancel(m.Cancel)
	}
	return fmt.Errorf("unexpected %s from a worker", frameName(f))
}

func checkOpen(m *pb.Open) error {
	if len(m.GetJobId()) != jobIDLen {
		return fmt.Errorf("open: job id of %d bytes, want %d", len(m.GetJobId()), jobIDLen)
	}
	if m.GetModel() == "" || len(m.GetModel()) > maxModelLen {
		return fmt.Errorf("open: model name of %d bytes", len(m.GetModel()))
	}
	if len(m.GetNonce()) > maxNonceLen {
		return fmt.Errorf("open: nonce of %d bytes", len(m.GetNonce()))
	}
	if c := m.GetChannel(); c != "" {
		if len(c) > maxChannelAddr {
			return fmt.Errorf("open: channel address of %d bytes", len(c))
		}
		if err := checkChannelAddr(c); err != nil {
			return fmt.Errorf("open: channel: %w", err)
		}
	}
	if m.GetEmbed() && m.GetParams() != nil {
		return errors.New("open: an embeddings job with generation parameters")
	}
	return checkParams(m.GetParams())
}

// formatToPB and formatFromPB carry a request's response format in Params.
func formatToPB(f *runtime.ResponseFormat) *pb.ResponseFormat {
	if f == nil {
		return nil
	}
	return &pb.ResponseFormat{Type: f.Type, Name: f.Name, Schema: f.Schema, Strict: f.Strict}
}

func formatFromPB(f *pb.ResponseFormat) *runtime.ResponseFormat {
	if f == nil {
		return nil
	}
	return &runtime.ResponseFormat{Type: f.GetType(), Name: f.GetName(), Schema: f.GetSchema(), Strict: f.GetStrict()}
}

// checkChannelAddr accepts the TON addresses settle.ParseAddress does
// (user-friendly or raw). It is written out here so that the protocol does not
// import settle, and with it the channel store.
func checkChannelAddr(s string) error {
	if _, err := address.ParseAddr(s); err == nil {
		return nil
	}
	if _, err := address.ParseRawAddr(s); err != nil {
		return fmt.Errorf("parse address %q: %w", s, err)
	}
	return nil
}

func checkAccept(m *pb.Accept) error {
	if c := m.GetCreditTokens(); c == 0 || c > maxCreditToken {
		return fmt.Errorf("accept: credit of %d tokens", c)
	}
	s := m.GetSettlement()
	if len(s.GetWalletAddress()) > maxWalletLen || len(s.GetChannelKey()) > maxKeyLen {
		return errors.New("accept: settlement fields too long")
	}
	if len(m.GetChannelState()) > maxBlobLen {
		return fmt.Errorf("accept: channel state of %d bytes", len(m.GetChannelState()))
	}
	return nil
}

func checkReject(m *pb.Reject) error {
	if _, ok := pb.RejectCode_name[int32(m.GetCode())]; !ok || m.GetCode() == pb.RejectCode_REJECT_UNSPECIFIED {
		return fmt.Errorf("reject: code %d", int32(m.GetCode()))
	}
	return nil
}

func checkCancel(m *pb.Cancel) error {
	if _, ok := pb.CancelCode_name[int32(m.GetCode())]; !ok || m.GetCode() == pb.CancelCode_CANCEL_UNSPECIFIED {
		return fmt.Errorf("cancel: code %d", int32(m.GetCode()))
	}
	return nil
}

func checkPrompt(m *pb.Prompt) error {
	if len(m.GetInputs()) > 0 {
		if len(m.GetMessages()) > 0 || m.GetPrompt() != "" || m.GetContinuation() != "" {
			return errors.New("prompt: embedding inputs with a chat or a prompt")
		}
		if len(m.GetInputs()) > runtime.MaxEmbedInputs {
			return fmt.Errorf("prompt: %d inputs", len(m.GetInputs()))
		}
		return nil
	}
	if (len(m.GetMessages()) == 0) == (m.GetPrompt() == "") {
		return errors.New("prompt: want either messages or a prompt")
	}
	if len(m.GetMessages()) > maxMessages {
		return fmt.Errorf("prompt: %d messages", len(m.GetMessages()))
	}
	for _, msg := range m.GetMessages() {
		switch msg.GetRole() {
		case "system", "developer", "user", "assistant", "tool":
		default:
			return fmt.Errorf("prompt: role %q", msg.GetRole())
		}
		if len(msg.GetToolCalls()) > runtime.MaxToolCalls || len(msg.GetImages()) > runtime.MaxImages {
			return fmt.Errorf("prompt: a message with %d tool calls and %d images", len(msg.GetToolCalls()), len(msg.GetImages()))
		}
	}
	return nil
}

func checkVoucher(m *pb.Voucher) error {
	if n := len(m.GetVoucher()); n == 0 || n > maxBlobLen {
		return fmt.Errorf("voucher: %d bytes", n)
	}
	if n := len(m.GetJobId()); n != jobIDLen {
		return fmt.Errorf("voucher: job id of %d bytes", n)
	}
	return nil
}

func checkChunk(m *pb.Chunk) error {
	if len(m.GetDelta()) > maxChunkText {
		return fmt.Errorf("chunk: %d bytes of text", len(m.GetDelta()))
	}
	return checkChunkExtras(m)
}

func checkDone(m *pb.Done) error {
	if m.GetUsage() == nil {
		return errors.New("done: no usage")
	}
	switch m.GetFinishReason() {
	case FinishStop, FinishLength, FinishToolCalls, FinishCancelled, FinishEmbedded:
	default:
		return fmt.Errorf("done: finish reason %q", m.GetFinishReason())
	}
	if len(m.GetReceipt()) > maxBlobLen {
		return fmt.Errorf("done: receipt of %d bytes", len(m.GetReceipt()))
	}
	return nil
}

// Finish reasons in Done: the runtime's, and cancelled.
const (
	FinishStop      = "stop"
	FinishLength    = "length"
	FinishToolCalls = "tool_calls"
	FinishCancelled = "cancelled"
	FinishEmbedded  = "" // an embeddings job
)

// decodeChecked decodes one message of type T and applies check; it is the
// decoder the fuzz targets drive.
func decodeChecked[T proto.Message](b []byte, m T, check func(T) error) (T, error) {
	if err := proto.Unmarshal(b, m); err != nil {
		return m, err
	}
	return m, check(m)
}
