package runner

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"

	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/llamacpp"
)

// ChildEnv set to "1" makes a process that links this package a runner.
const ChildEnv = "COCOON_RUNNER"

// The child's ends of the two pipes (exec.Cmd.ExtraFiles start at fd 3).
const (
	childIn  = 3
	childOut = 4
)

func init() {
	if os.Getenv(ChildEnv) != "1" {
		return
	}
	// Nothing of the host program runs: not its main, not its tests.
	in := os.NewFile(childIn, "runner-in")
	out := os.NewFile(childOut, "runner-out")
	if in == nil || out == nil {
		fmt.Fprintln(os.Stderr, "runner: started without its pipes (fd 3 and 4)")
		os.Exit(2)
	}
	err := serveChild(in, out)
	if err != nil && !errors.Is(err, io.EOF) {
		fmt.Fprintln(os.Stderr, "runner:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// childStream is one generation in the child.
type childStream struct {
	cancel context.CancelFunc
	credit chan int // the parent's credit grants
	mu     sync.Mutex
	st     runtime.Stream // nil until Generate returned
	closed bool
}

// serveChild loads the backend the first frame asks for and serves
// generations until in ends (the parent closed it, or died).
func serveChild(in io.Reader, out io.Writer) error {
	r := bufio.NewReaderSize(in, 64<<10)
	w := newFrameWriter(out)
	f, err := readFrame(r)
	if err != nil {
		return fmt.Errorf("read load: %w", err)
	}
	if f.Op != opLoad || f.Config == nil {
		return fmt.Errorf("first frame is %q, want load", f.Op)
	}
	var level slog.Level
	_ = level.UnmarshalText([]byte(f.Config.LogLevel))
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	b, err := llamacpp.New(llamacpp.Config{
		LibDir: f.Config.LibDir, Models: f.Config.Models, Threads: f.Config.Threads,
		ContextSize: f.Config.ContextSize, Parallel: f.Config.Parallel, GPULayers: f.Config.GPULayers, Logger: log,
	})
	if err != nil {
		_ = w.send(frame{Op: opFatal, Msg: err.Error()})
		return nil
	}
	defer b.Close()
	offloads := map[string]runtime.Offload{}
	for _, m := range b.Models() {
		if o, ok := b.Offload(m.ID); ok {
			o.Lib = f.Config.Lib
			offloads[m.ID] = o
		}
	}
	if err := w.send(frame{Op: opReady, Models: b.Models(), Offloads: offloads, PID: os.Getpid()}); err != nil {
		return err
	}

	var (
		mu      sync.Mutex
		streams = map[uint64]*childStream{}
		wg      sync.WaitGroup
	)
	defer func() {
		mu.Lock()
		for _, cs := range streams {
			cs.stop()
		}
		mu.Unlock()
		wg.Wait()
	}()
	// start registers stream id and runs fn for it on a goroutine of its
	// own; an id in use is refused.
	start := func(id uint64, cs *childStream, fn func()) {
		mu.Lock()
		if _, dup := streams[id]; dup {
			mu.Unlock()
			cs.cancel()
			_ = w.send(frame{Op: opError, ID: id, Kind: "invalid", Msg: "stream id in use"})
			return
		}
		streams[id] = cs
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { mu.Lock(); delete(streams, id); mu.Unlock() }()
			fn()
		}()
	}
	for {
		f, err := readFrame(r)
		if err != nil {
			return err
		}
		switch f.Op {
		case opGenerate:
			if f.Req == nil {
				_ = w.send(frame{Op: opError, ID: f.ID, Kind: "invalid", Msg: "generate without a request"})
				continue
			}
			ctx, cancel := context.WithCancel(context.Background())
			cs := &childStream{cancel: cancel, credit: make(chan int, Window+1)}
			req := *f.Req
			start(f.ID, cs, func() { cs.run(ctx, b, f.ID, req, w) })
		case opCredit:
			mu.Lock()
			cs := streams[f.ID]
			mu.Unlock()
			if cs != nil {
				select {
				case cs.credit <- f.N:
				default: // more grants than the window: a broken parent; the stream waits on what it has
				}
			}
		case opClose:
			mu.Lock()
			cs := streams[f.ID]
			mu.Unlock()
			if cs != nil {
				cs.stop()
			}
		case opEmbed:
			ctx, cancel := context.WithCancel(context.Background())
			cs := &childStream{cancel: cancel}
			id, req := f.ID, runtime.EmbedRequest{Model: f.Model, Inputs: f.Inputs}
			start(id, cs, func() {
				defer cancel()
				e, err := b.Embed(ctx, req)
				if err != nil {
					_ = w.send(errorFrame(id, err))
					return
				}
				_ = w.send(frame{Op: opEmbedded, ID: id, Vectors: e.Vectors, Usage: &runtime.Usage{PromptTokens: e.PromptTokens}})
			})
		case opPing:
			_ = w.send(frame{Op: opPong, ID: f.ID})
		default:
			return fmt.Errorf("unexpected %q frame", f.Op)
		}
	}
}

// stop aborts the generation: before Generate returned through its context,
// after through the stream's Close (which interrupts a Recv in progress).
func (cs *childStream) stop() {
	cs.cancel()
	cs.mu.Lock()
	cs.closed = true
	st := cs.st
	cs.mu.Unlock()
	if st != nil {
		st.Close()
	}
}

func (cs *childStream) run(ctx context.Context, b runtime.Backend, id uint64, req runtime.Request, w *frameWriter) {
	defer cs.cancel()
	st, err := b.Generate(ctx, req)
	if err != nil {
		_ = w.send(errorFrame(id, err))
		return
	}
	cs.mu.Lock()
	cs.st = st
	closed := cs.closed
	cs.mu.Unlock()
	defer st.Close()
	if closed {
		return
	}
	if err := w.send(frame{Op: opStarted, ID: id}); err != nil {
		return
	}
	credit := Window
	for {
		for credit == 0 {
			select {
			case n := <-cs.credit:
				credit += n
			case <-ctx.Done():
				return
			}
		}
		d, err := st.Recv()
		if errors.Is(err, io.EOF) {
			u := st.Usage()
			_ = w.send(frame{Op: opEnd, ID: id, Usage: &u, Finish: st.FinishReason()})
			return
		}
		if err != nil {
			_ = w.send(errorFrame(id, err))
			return
		}
		if err := w.send(frame{Op: opDelta, ID: id, Text: d.Text, Tokens: d.Tokens,
			Calls: d.ToolCalls, Logprobs: d.Logprobs, Refusal: d.Refusal}); err != nil {
			return
		}
		credit--
	}
}
