package runner

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/llamalib"
)

// Config configures a Backend: the llama.cpp settings each child loads with,
// and how the children are supervised. Zero durations take the defaults.
type Config struct {
	LibDir string // llama.cpp's libraries when Libs is empty; empty: $COCOON_LLAMA_LIB
	// Libs are the library folders to try, best first (llamalib.Choose): a
	// child that fails to start on a GPU build is started again on the next,
	// and the reason logged in one line. Empty: LibDir alone.
	Libs []llamalib.Lib
	// GPULayers is how many layers a GPU build offloads: -1 all, 0 none.
	GPULayers   int
	Models      []runtime.ModelConfig // one child per model
	Threads     int
	ContextSize int
	Parallel    int
	Logger      *slog.Logger

	// Exe is the runner binary; empty: this process's own executable.
	Exe string
	// StartTimeout bounds a child's start (process and model load); 0: 2 min.
	StartTimeout time.Duration
	// Ping is how often a child is pinged; it is killed as hung after
	// missing pongs for 5 × Ping. 0: 2 s.
	Ping time.Duration
	// MinBackoff and MaxBackoff bound the wait before a restart; the wait
	// doubles on each crash and starts over once a child ran for a minute.
	// 0: 200 ms and 30 s.
	MinBackoff, MaxBackoff time.Duration
	// RefuseAfter is the number of crashes a request shape may be in flight
	// for before it is refused; 0: 2.
	RefuseAfter int
	// RestartWait is how long Generate waits for a restarting child before it
	// answers runtime.ErrBusy; 0: 5 s. A restart takes well under a second,
	// so a job that arrives during one is served rather than refused, while a
	// child that keeps crashing (backoff up to MaxBackoff) sends callers
	// elsewhere.
	RestartWait time.Duration
}

// Backend serves each model from its own supervised child process. It is
// safe for concurrent use.
type Backend struct {
	engines map[string]*engine
	order   []runtime.Model
}

// New starts one child per model and waits until each has loaded its model.
// A child that cannot start (libraries missing, model rejected) makes New
// fail with the child's own one-line reason.
func New(ctx context.Context, cfg Config) (*Backend, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Exe == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("runner: find own executable: %w", err)
		}
		cfg.Exe = exe
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 2 * time.Minute
	}
	if cfg.Ping <= 0 {
		cfg.Ping = 2 * time.Second
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 200 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.RefuseAfter <= 0 {
		cfg.RefuseAfter = 2
	}
	if cfg.RestartWait <= 0 {
		cfg.RestartWait = 5 * time.Second
	}
	if len(cfg.Libs) == 0 {
		cfg.Libs = []llamalib.Lib{{Dir: cfg.LibDir, Kind: llamalib.KindOf(cfg.LibDir)}}
	}
	b := &Backend{engines: map[string]*engine{}}
	var fallback string
	for _, mc := range cfg.Models {
		e, err := startEngine(ctx, cfg, mc, fallback)
		if err != nil {
			b.Close()
			return nil, err
		}
		// The next models start on the build this one ended on: a GPU
		// build that failed once is not tried again.
		cfg.Libs, fallback = e.cfg.Libs, e.fallback
		for _, m := range e.models {
			if _, dup := b.engines[m.ID]; dup {
				e.close()
				b.Close()
				return nil, fmt.Errorf("load model %s: id %q used twice", mc.Path, m.ID)
			}
			b.engines[m.ID] = e
			b.order = append(b.order, m)
		}
	}
	return b, nil
}

// Models lists the served models in configuration order.
func (b *Backend) Models() []runtime.Model { return append([]runtime.Model(nil), b.order...) }

// Generate checks req (runtime.Request.Check) and starts it in the model's
// child. While that child is restarting it waits up to Config.RestartWait,
// then answers runtime.ErrBusy.
func (b *Backend) Generate(ctx context.Context, req runtime.Request) (runtime.Stream, error) {
	if err := req.Check(); err != nil {
		return nil, err
	}
	e, ok := b.engines[req.Model]
	if !ok {
		return nil, fmt.Errorf("%w: %q", runtime.ErrUnknownModel, req.Model)
	}
	return e.generate(ctx, req)
}

// Embed checks req and computes it in the model's child, as Generate.
func (b *Backend) Embed(ctx context.Context, req runtime.EmbedRequest) (runtime.Embeddings, error) {
	if err := req.Check(); err != nil {
		return runtime.Embeddings{}, err
	}
	e, ok := b.engines[req.Model]
	if !ok {
		return runtime.Embeddings{}, fmt.Errorf("%w: %q", runtime.ErrUnknownModel, req.Model)
	}
	for _, m := range e.models {
		if m.ID == req.Model {
			if err := m.ServesEmbeddings(); err != nil {
				return runtime.Embeddings{}, err
			}
		}
	}
	return e.embed(ctx, req)
}

// Close stops every child and waits for them to exit.
func (b *Backend) Close() error {
	seen := map[*engine]bool{}
	for _, e := range b.engines {
		if !seen[e] {
			seen[e] = true
			e.close()
		}
	}
	return nil
}

// Offload says where model runs: the llama.cpp build its child loaded, the
// layers offloaded, and why a GPU build was passed over. It implements
// runtime.OffloadReporter.
func (b *Backend) Offload(model string) (runtime.Offload, bool) {
	e, ok := b.engines[model]
	if !ok {
		return runtime.Offload{}, false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	o, ok := e.offloads[model]
	o.Fallback = e.fallback
	return o, ok
}

var _ runtime.OffloadReporter = (*Backend)(nil)

// Child describes one model's engine process, for status and tests.
type Child struct {
	Model    string
	PID      int // 0 while restarting
	Restarts int
	Refused  int // request shapes refused after crashes
}

// Children lists the engine processes.
func (b *Backend) Children() []Child {
	var out []Child
	for _, m := range b.order {
		e := b.engines[m.ID]
		e.mu.Lock()
		c := Child{Model: m.ID, Restarts: e.restarts, Refused: e.refusedShapes()}
		if e.cur != nil {
			c.PID = e.cur.pid
		}
		e.mu.Unlock()
		out = append(out, c)
	}
	return out
}

// engine supervises the child of one model.
type engine struct {
	cfg      Config
	mc       runtime.ModelConfig
	log      *slog.Logger
	models   []runtime.Model
	lib      int    // index in cfg.Libs of the build the children load
	fallback string // why builds before lib were passed over

	mu       sync.Mutex
	offloads map[string]runtime.Offload // the last ready's
	cur      *child                     // nil while restarting
	up       chan struct{}              // closed when cur is set (or the engine closed)
	closed   bool
	restarts int
	crashes  map[[32]byte]int // request shape → crashes it was in flight for
	stop     chan struct{}
	done     chan struct{} // closed when the supervisor returned
}

func startEngine(ctx context.Context, cfg Config, mc runtime.ModelConfig, fallback string) (*engine, error) {
	id := mc.ID
	if id == "" {
		id = runtime.ModelIDFromPath(mc.Path)
	}
	e := &engine{cfg: cfg, mc: mc, log: cfg.Logger.With("subsys", "runner", "model", id), fallback: fallback,
		crashes: map[[32]byte]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	var c *child
	for {
		var err error
		c, err = e.spawn(ctx)
		if err == nil {
			break
		}
		// purego cannot unload a half-loaded library, so a GPU build that
		// fails (libraries missing, CUDA runtime absent, no device, a crash
		// in its init) is retried in a fresh child on the next build.
		cur := cfg.Libs[e.lib]
		if !cur.Kind.GPU() || e.lib+1 >= len(cfg.Libs) || ctx.Err() != nil {
			return nil, err
		}
		next := cfg.Libs[e.lib+1]
		e.fallback = fmt.Sprintf("llama.cpp %s build in %s failed: %v", cur.Kind, cur.Dir, oneLine(err))
		e.log.Warn("llama.cpp "+string(cur.Kind)+" build failed to start; falling back to the "+string(next.Kind)+" build",
			"reason", oneLine(err), "from", cur.Dir, "to", next.Dir)
		e.lib++
	}
	// From here on (restarts included) this engine knows only the build it
	// started on and those after it.
	e.cfg.Libs, e.lib = cfg.Libs[e.lib:], 0
	e.models = c.models
	e.cur = c
	e.up = make(chan struct{})
	close(e.up)
	go e.supervise(c)
	return e, nil
}

// supervise waits for the child to exit and starts the next one, with
// backoff, until the engine is closed.
func (e *engine) supervise(c *child) {
	defer close(e.done)
	backoff := e.cfg.MinBackoff
	for {
		started := time.Now()
		select {
		case <-c.exited:
		case <-e.stop:
			c.shutdown()
			return
		}
		e.mu.Lock()
		e.cur = nil
		e.up = make(chan struct{})
		e.mu.Unlock()
		shapes := c.failAll(fmt.Errorf("%w: %s", ErrEngineCrashed, c.why()))
		e.recordCrash(shapes)
		e.log.Warn("engine process exited; its jobs failed, restarting", "pid", c.pid, "why", c.why(),
			"jobs", len(shapes), "backoff", backoff)
		if time.Since(started) > time.Minute {
			backoff = e.cfg.MinBackoff
		}
		for {
			select {
			case <-time.After(backoff):
			case <-e.stop:
				return
			}
			backoff = min(2*backoff, e.cfg.MaxBackoff)
			ctx, cancel := context.WithTimeout(context.Background(), e.cfg.StartTimeout)
			next, err := e.spawn(ctx)
			cancel()
			if err == nil {
				c = next
				break
			}
			e.log.Warn("engine restart failed", "err", err, "backoff", backoff)
		}
		e.mu.Lock()
		e.restarts++
		if e.closed {
			e.mu.Unlock()
			c.shutdown()
			return
		}
		e.cur = c
		close(e.up)
		e.mu.Unlock()
		e.log.Info("engine process restarted", "pid", c.pid)
	}
}

// shape identifies a request for crash accounting: everything but the seed.
func shape(req runtime.Request) [32]byte {
	req.Seed = nil
	b, _ := json.Marshal(req)
	return sha256.Sum256(b)
}

// maxShapes bounds the crash memory.
const maxShapes = 4096

func (e *engine) recordCrash(shapes [][32]byte) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, s := range shapes {
		if len(e.crashes) >= maxShapes {
			for k := range e.crashes { // forget an arbitrary one
				delete(e.crashes, k)
				break
			}
		}
		e.crashes[s]++
		if e.crashes[s] == e.cfg.RefuseAfter {
			e.log.Warn("request shape refused from now on: it was in flight at every crash", "crashes", e.cfg.RefuseAfter)
		}
	}
}

func (e *engine) refusedShapes() int {
	n := 0
	for _, c := range e.crashes {
		if c >= e.cfg.RefuseAfter {
			n++
		}
	}
	return n
}

func (e *engine) generate(ctx context.Context, req runtime.Request) (runtime.Stream, error) {
	sh := shape(req)
	c, err := e.live(ctx, sh)
	if err != nil {
		return nil, err
	}
	return c.generate(ctx, req, sh)
}

// embed runs req in the current child, waiting for a restart as generate.
func (e *engine) embed(ctx context.Context, req runtime.EmbedRequest) (runtime.Embeddings, error) {
	b, _ := json.Marshal(req)
	sh := sha256.Sum256(append([]byte("embed\x00"), b...))
	c, err := e.live(ctx, sh)
	if err != nil {
		return runtime.Embeddings{}, err
	}
	return c.embed(ctx, req, sh)
}

// live is the running child for a request of shape sh: at once, or after a
// restart that comes within Config.RestartWait (else runtime.ErrBusy); a
// shape in flight at RefuseAfter crashes is refused.
func (e *engine) live(ctx context.Context, sh [32]byte) (*child, error) {
	var wait <-chan time.Time
	for {
		e.mu.Lock()
		c, up, closed, crashes := e.cur, e.up, e.closed, e.crashes[sh]
		e.mu.Unlock()
		switch {
		case closed:
			return nil, runtime.ErrClosed
		case crashes >= e.cfg.RefuseAfter:
			return nil, fmt.Errorf("%w (%d times)", ErrRefused, crashes)
		case c != nil:
			return c, nil
		}
		if wait == nil {
			t := time.NewTimer(e.cfg.RestartWait)
			defer t.Stop()
			wait = t.C
		}
		select {
		case <-up:
		case <-wait:
			return nil, fmt.Errorf("%w: the engine process is restarting after a crash", runtime.ErrBusy)
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for the engine process to restart: %w", ctx.Err())
		}
	}
}

func (e *engine) close() {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.closed = true
	select {
	case <-e.up:
	default:
		close(e.up) // wake the waiters: they see closed
	}
	e.mu.Unlock()
	close(e.stop)
	<-e.done
}

// child is one running engine process.
type child struct {
	cmd    *exec.Cmd
	pid    int
	models []runtime.Model
	w      *frameWriter
	in     io.Closer // the pipe the child reads; closing it asks the child to exit
	log    *slog.Logger
	tail   *tailBuffer
	exited chan struct{} // closed once the process is reaped and the reader ended

	mu      sync.Mutex
	streams map[uint64]*stream
	nextID  uint64
	pongAt  time.Time
	dead    bool
	err     error // why it exited
}

// spawn starts a child, sends it the load frame and waits for ready.
func (e *engine) spawn(ctx context.Context) (*child, error) {
	cfg := e.cfg
	toChild, ourW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("runner: pipe: %w", err)
	}
	ourR, fromChild, err := os.Pipe()
	if err != nil {
		toChild.Close()
		ourW.Close()
		return nil, fmt.Errorf("runner: pipe: %w", err)
	}
	tail := &tailBuffer{log: e.log}
	cmd := exec.Command(cfg.Exe)
	cmd.Env = append(os.Environ(), ChildEnv+"=1")
	cmd.ExtraFiles = []*os.File{toChild, fromChild}
	cmd.Stdout = tail
	cmd.Stderr = tail
	// The child dies with the node even if the node is killed with SIGKILL.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		toChild.Close()
		ourW.Close()
		ourR.Close()
		fromChild.Close()
		return nil, fmt.Errorf("runner: start %s: %w", cfg.Exe, err)
	}
	toChild.Close()
	fromChild.Close()
	c := &child{cmd: cmd, pid: cmd.Process.Pid, w: newFrameWriter(ourW), in: ourW, log: e.log, tail: tail,
		exited: make(chan struct{}), streams: map[uint64]*stream{}, pongAt: time.Now()}
	r := bufio.NewReaderSize(ourR, 64<<10)

	level := "INFO"
	if e.log.Enabled(context.Background(), slog.LevelDebug) {
		level = "DEBUG"
	}
	lib := cfg.Libs[e.lib]
	load := frame{Op: opLoad, Config: &childConfig{LibDir: lib.Dir, Lib: string(lib.Kind), GPULayers: cfg.GPULayers,
		Models: []runtime.ModelConfig{e.mc}, Threads: cfg.Threads, ContextSize: cfg.ContextSize, Parallel: cfg.Parallel,
		LogLevel: level}}
	ready := make(chan error, 1)
	go func() {
		if err := c.w.send(load); err != nil {
			ready <- fmt.Errorf("send load: %w", err)
			return
		}
		f, err := readFrame(r)
		switch {
		case err != nil:
			ready <- fmt.Errorf("exited before it was ready: %s", tail.last())
		case f.Op == opFatal:
			ready <- errors.New(f.Msg)
		case f.Op != opReady:
			ready <- fmt.Errorf("answered %q to load", f.Op)
		default:
			c.models = f.Models
			e.mu.Lock()
			e.offloads = f.Offloads
			e.mu.Unlock()
			ready <- nil
		}
	}()
	select {
	case err = <-ready:
	case <-ctx.Done():
		err = fmt.Errorf("runner: start: %w", ctx.Err())
	}
	if err != nil {
		ourW.Close()
		cmd.Process.Kill()
		cmd.Wait()
		ourR.Close()
		return nil, err
	}
	go func() {
		rerr := c.read(r)
		// The reader ends when the child's end of the pipe closes: it exited,
		// or it broke the protocol (then it is killed).
		cmd.Process.Kill()
		werr := cmd.Wait()
		ourR.Close()
		c.mu.Lock()
		c.dead = true
		c.err = errors.Join(rerr, werr)
		c.mu.Unlock()
		close(c.exited)
	}()
	go c.watch(cfg.Ping)
	return c, nil
}

// read dispatches the child's frames to their streams until the pipe ends.
func (c *child) read(r *bufio.Reader) error {
	for {
		f, err := readFrame(r)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if f.Op == opPong {
			c.mu.Lock()
			c.pongAt = time.Now()
			c.mu.Unlock()
			continue
		}
		c.mu.Lock()
		s := c.streams[f.ID]
		c.mu.Unlock()
		if s == nil {
			continue // a stream closed while its frames were on the way
		}
		if !s.deliver(f) {
			return fmt.Errorf("stream %d: %s frame beyond the window", f.ID, f.Op)
		}
	}
}

// watch pings the child and kills it when it stops answering (a hang: a
// native call that never returns, a deadlock).
func (c *child) watch(every time.Duration) {
	var pinging atomic.Bool
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-c.exited:
			return
		case <-t.C:
		}
		c.mu.Lock()
		silent := time.Since(c.pongAt)
		c.mu.Unlock()
		if silent > 5*every {
			c.log.Warn("engine process stopped answering pings: killing it", "pid", c.pid, "silent", silent)
			c.cmd.Process.Kill()
			return
		}
		// Sent aside: a write to a child that stopped reading blocks, and
		// the silence must still be noticed (the kill then ends the write).
		if pinging.CompareAndSwap(false, true) {
			go func() {
				_ = c.w.send(frame{Op: opPing})
				pinging.Store(false)
			}()
		}
	}
}

// shutdown asks the child to exit (by closing its input) and kills it if it
// has not within 5 s.
func (c *child) shutdown() {
	c.in.Close()
	select {
	case <-c.exited:
	case <-time.After(5 * time.Second):
		c.cmd.Process.Kill()
		<-c.exited
	}
	c.failAll(runtime.ErrClosed)
}

// failAll ends every stream in flight with err and returns their request
// shapes.
func (c *child) failAll(err error) [][32]byte {
	c.mu.Lock()
	streams := c.streams
	c.streams = map[uint64]*stream{}
	c.mu.Unlock()
	var shapes [][32]byte
	for _, s := range streams {
		shapes = append(shapes, s.shape)
		s.end(err)
	}
	return shapes
}

func (c *child) why() string {
	c.mu.Lock()
	err := c.err
	c.mu.Unlock()
	why := "exited"
	if err != nil {
		why = err.Error()
	}
	if t := c.tail.last(); t != "" {
		why += ": " + t
	}
	return why
}

func (c *child) generate(ctx context.Context, req runtime.Request, sh [32]byte) (runtime.Stream, error) {
	s := &stream{c: c, shape: sh, frames: make(chan frame, Window+2), gone: make(chan struct{})}
	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return nil, fmt.Errorf("%w: the engine process is restarting after a crash", runtime.ErrBusy)
	}
	c.nextID++
	s.id = c.nextID
	c.streams[s.id] = s
	c.mu.Unlock()
	if err := c.w.send(frame{Op: opGenerate, ID: s.id, Req: &req}); err != nil {
		s.forget()
		return nil, fmt.Errorf("%w: send to the engine process: %v", ErrEngineCrashed, err)
	}
	select {
	case f := <-s.frames:
		if f.Op == opStarted {
			return s, nil
		}
		s.forget()
		return nil, errorFrom(f)
	case <-s.gone:
		return nil, s.ended()
	case <-ctx.Done():
		s.Close()
		return nil, fmt.Errorf("start generation: %w", ctx.Err())
	}
}

// embed sends req to the child and waits for its vectors. It is a stream
// whose one answer is an embedded frame, so that a crash fails it as it
// fails generations.
func (c *child) embed(ctx context.Context, req runtime.EmbedRequest, sh [32]byte) (runtime.Embeddings, error) {
	s := &stream{c: c, shape: sh, frames: make(chan frame, Window+2), gone: make(chan struct{})}
	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return runtime.Embeddings{}, fmt.Errorf("%w: the engine process is restarting after a crash", runtime.ErrBusy)
	}
	c.nextID++
	s.id = c.nextID
	c.streams[s.id] = s
	c.mu.Unlock()
	if err := c.w.send(frame{Op: opEmbed, ID: s.id, Model: req.Model, Inputs: req.Inputs}); err != nil {
		s.forget()
		return runtime.Embeddings{}, fmt.Errorf("%w: send to the engine process: %v", ErrEngineCrashed, err)
	}
	select {
	case f := <-s.frames:
		s.forget()
		if f.Op != opEmbedded {
			return runtime.Embeddings{}, errorFrom(f)
		}
		if len(f.Vectors) != len(req.Inputs) || f.Usage == nil {
			return runtime.Embeddings{}, fmt.Errorf("%w: the engine answered %d vectors for %d inputs", runtime.ErrUpstream, len(f.Vectors), len(req.Inputs))
		}
		return runtime.Embeddings{Vectors: f.Vectors, PromptTokens: f.Usage.PromptTokens}, nil
	case <-s.gone:
		return runtime.Embeddings{}, s.ended()
	case <-ctx.Done():
		s.Close()
		return runtime.Embeddings{}, fmt.Errorf("embed: %w", ctx.Err())
	}
}

// stream is one generation in a child, seen from the parent. Recv is called
// by one goroutine; Close may come from any.
type stream struct {
	c      *child
	id     uint64
	shape  [32]byte
	frames chan frame    // from the child's reader: started, then at most Window deltas and one end
	gone   chan struct{} // closed by end: the child died, or Close

	mu       sync.Mutex
	usage    runtime.Usage
	finish   string
	err      error // sticky once set: io.EOF after the last delta, or why it ended
	consumed int   // deltas read and not yet credited
}

// deliver hands a frame to the stream; false when the child ran past the window.
func (s *stream) deliver(f frame) bool {
	select {
	case s.frames <- f:
		return true
	default:
		return false
	}
}

// end ends the stream with err unless it already ended.
func (s *stream) end(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = err
		close(s.gone)
	}
}

func (s *stream) ended() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *stream) forget() {
	s.c.mu.Lock()
	delete(s.c.streams, s.id)
	s.c.mu.Unlock()
}

func (s *stream) Recv() (runtime.Delta, error) {
	if err := s.ended(); err != nil {
		return runtime.Delta{}, err
	}
	var f frame
	select {
	case f = <-s.frames:
	case <-s.gone:
		return runtime.Delta{}, s.ended()
	}
	switch f.Op {
	case opDelta:
		s.mu.Lock()
		s.consumed++
		grant := 0
		if s.consumed >= Window/2 {
			grant, s.consumed = s.consumed, 0
		}
		s.mu.Unlock()
		if grant > 0 {
			_ = s.c.w.send(frame{Op: opCredit, ID: s.id, N: grant})
		}
		return runtime.Delta{Text: f.Text, Tokens: f.Tokens, ToolCalls: f.Calls, Logprobs: f.Logprobs, Refusal: f.Refusal}, nil
	case opEnd:
		s.mu.Lock()
		if f.Usage != nil {
			s.usage = *f.Usage
		}
		s.finish = f.Finish
		s.mu.Unlock()
		s.forget()
		s.end(io.EOF)
	default:
		s.forget()
		s.end(errorFrom(f))
	}
	return runtime.Delta{}, s.ended()
}

func (s *stream) Usage() runtime.Usage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.usage
}

func (s *stream) FinishReason() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.finish
}

// errStreamClosed ends Recv after Close.
var errStreamClosed = errors.New("runner: stream closed")

// Close aborts the generation in the child (if it still runs) and frees the
// stream. A Recv blocked in another goroutine returns errStreamClosed.
func (s *stream) Close() error {
	if s.ended() != nil {
		return nil
	}
	s.end(errStreamClosed)
	s.forget()
	_ = s.c.w.send(frame{Op: opClose, ID: s.id})
	return nil
}

// tailBuffer keeps the last lines a child wrote to stdout and stderr, to say
// why it died ("terminate called …", a Go panic's first line).
type tailBuffer struct {
	log    *slog.Logger // each line at debug level
	mu     sync.Mutex
	lines  []string
	part   []byte
	reason string // the first line that says why a process died
}

// crashMarkers start the lines that say why a process died: C++'s
// terminate, a Go fatal error, panic or signal.
var crashMarkers = []string{"terminate called", "fatal error:", "panic:", "SIGABRT", "SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "GGML_ASSERT", "runner:"}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.part = append(t.part, p...)
	for {
		i := bytes.IndexByte(t.part, '\n')
		if i < 0 {
			break
		}
		line := strings.TrimSpace(string(t.part[:i]))
		t.part = t.part[i+1:]
		if line == "" || strings.HasPrefix(line, "goroutine ") {
			continue
		}
		if t.log != nil {
			t.log.Debug("engine", "line", line)
		}
		if t.reason == "" {
			for _, m := range crashMarkers {
				if strings.Contains(line, m) {
					t.reason = line
					break
				}
			}
		}
		t.lines = append(t.lines, line)
		if len(t.lines) > 6 {
			t.lines = t.lines[len(t.lines)-6:]
		}
	}
	if len(t.part) > 4096 {
		t.part = t.part[:0]
	}
	return len(p), nil
}

func (t *tailBuffer) last() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.reason != "" {
		return t.reason
	}
	return strings.Join(t.lines, " | ")
}
