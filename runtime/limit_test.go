package runtime_test

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/runtime"
)

// gate is a backend whose streams end when their release channel is closed.
type gate struct {
	mu      sync.Mutex
	started []string // prompts, in the order generations started
	closed  bool
}

func (g *gate) Models() []runtime.Model { return []runtime.Model{{ID: "m"}} }
func (g *gate) Close() error            { g.closed = true; return nil }
func (g *gate) Generate(ctx context.Context, req runtime.Request) (runtime.Stream, error) {
	g.mu.Lock()
	g.started = append(g.started, req.Prompt)
	g.mu.Unlock()
	return &gateStream{}, nil
}

type gateStream struct{ n int }

func (s *gateStream) Recv() (runtime.Delta, error) {
	if s.n == 0 {
		s.n++
		return runtime.Delta{Text: "x", Tokens: 1}, nil
	}
	return runtime.Delta{}, io.EOF
}
func (s *gateStream) Usage() runtime.Usage { return runtime.Usage{CompletionTokens: s.n} }
func (s *gateStream) FinishReason() string { return runtime.FinishStop }
func (s *gateStream) Close() error         { return nil }

func waitQueued(t *testing.T, l *runtime.Limited, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if _, _, q := l.Slots(); q == n {
			return
		}
	}
	_, _, q := l.Slots()
	t.Fatalf("queue length %d; want %d", q, n)
}

func TestLimitSlotsQueueFIFO(t *testing.T) {
	g := &gate{}
	l := runtime.Limit(g, 2, 2)
	ctx := context.Background()
	s1, err := l.Generate(ctx, runtime.Request{Prompt: "1"})
	if err != nil {
		t.Fatal(err)
	}
	s2, err := l.Generate(ctx, runtime.Request{Prompt: "2"})
	if err != nil {
		t.Fatal(err)
	}
	if total, free, q := l.Slots(); total != 2 || free != 0 || q != 0 {
		t.Fatalf("Slots() = %d %d %d; want 2 0 0", total, free, q)
	}
	// Two wait, in order; a third is refused.
	got := make(chan string, 2)
	for i, p := range []string{"3", "4"} {
		go func() {
			s, err := l.Generate(ctx, runtime.Request{Prompt: p})
			if err != nil {
				t.Error(err)
				return
			}
			got <- p
			for _, err := s.Recv(); err == nil; _, err = s.Recv() {
			}
		}()
		waitQueued(t, l, i+1)
	}
	if _, err := l.Generate(ctx, runtime.Request{Prompt: "5"}); !errors.Is(err, runtime.ErrBusy) {
		t.Fatalf("third waiter: %v; want ErrBusy", err)
	}
	// Draining a stream to its end frees its slot for the first waiter.
	for _, err := s1.Recv(); err == nil; _, err = s1.Recv() {
	}
	if p := <-got; p != "3" {
		t.Fatalf("first served waiter %s; want 3 (FIFO)", p)
	}
	s2.Close()
	if p := <-got; p != "4" {
		t.Fatalf("second served waiter %s; want 4", p)
	}
	s1.Close() // a second release of the same stream must not free a slot twice
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		if _, free, q := l.Slots(); free == 2 && q == 0 {
			break
		}
		if time.Now().After(deadline) {
			total, free, q := l.Slots()
			t.Fatalf("Slots() = %d %d %d after all streams ended; want 2 2 0", total, free, q)
		}
	}
}

func TestLimitQueuedRequestHonoursContext(t *testing.T) {
	l := runtime.Limit(&gate{}, 1, 0)
	s, err := l.Generate(context.Background(), runtime.Request{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error)
	go func() {
		_, err := l.Generate(ctx, runtime.Request{})
		errc <- err
	}()
	waitQueued(t, l, 1)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("queued Generate after cancel: %v", err)
	}
	if _, free, q := l.Slots(); free != 0 || q != 0 {
		t.Fatalf("after the waiter left: free %d queued %d; want 0 0", free, q)
	}
	s.Close()
	if _, free, _ := l.Slots(); free != 1 {
		t.Fatalf("free %d after close; want 1", free)
	}
	// Close wakes waiters with ErrClosed and closes the backend.
	s, _ = l.Generate(context.Background(), runtime.Request{})
	go func() {
		_, err := l.Generate(context.Background(), runtime.Request{})
		errc <- err
	}()
	waitQueued(t, l, 1)
	l.Close()
	if err := <-errc; !errors.Is(err, runtime.ErrClosed) {
		t.Fatalf("queued Generate at Close: %v; want ErrClosed", err)
	}
	s.Close()
	if _, err := l.Generate(context.Background(), runtime.Request{}); !errors.Is(err, runtime.ErrClosed) {
		t.Fatalf("Generate after Close: %v", err)
	}
}

func TestStreamAsFindsWrappedHooks(t *testing.T) {
	l := runtime.Limit(&gate{}, 1, 0)
	s, err := l.Generate(context.Background(), runtime.Request{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if gs, ok := runtime.StreamAs[*gateStream](s); !ok || gs == nil {
		t.Fatalf("StreamAs did not find the inner stream through Limit's wrapper")
	}
	if _, ok := runtime.StreamAs[interface{ CostNanoTON() uint64 }](s); ok {
		t.Fatalf("StreamAs found a hook nobody implements")
	}
}

// QueueCap is the configured queue (runtime.queue): 0 means DefaultQueue,
// -1 none; the worker admits slots plus this many jobs and answers BUSY
// beyond.
func TestLimitQueueCap(t *testing.T) {
	for _, tc := range []struct{ queue, want int }{{0, runtime.DefaultQueue}, {-1, 0}, {3, 3}} {
		if got := runtime.Limit(nil, 2, tc.queue).QueueCap(); got != tc.want {
			t.Errorf("Limit(_, 2, %d).QueueCap() = %d; want %d", tc.queue, got, tc.want)
		}
	}
}
