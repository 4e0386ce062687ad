package runner

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/internal/testmodel"
	"github.com/cocoon-network/cocoon/runtime"
)

// start runs the shared test model in a child of this test binary (the
// package's init makes it a runner).
func start(t testing.TB, parallel int, tweak func(*Config)) *Backend {
	t.Helper()
	cfg := Config{
		LibDir:     testmodel.LibDir(),
		Models:     []runtime.ModelConfig{{Path: testmodel.ModelPath(t)}},
		Threads:    1,
		Parallel:   parallel,
		Logger:     slog.New(slog.DiscardHandler),
		MinBackoff: 50 * time.Millisecond,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := New(ctx, cfg)
	if err != nil {
		t.Fatalf("runner: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func greedy(prompt string, max int) runtime.Request {
	return runtime.Request{Model: testmodel.ModelID, Prompt: prompt, MaxTokens: max}
}

// collect reads a stream to its end.
func collect(t testing.TB, s runtime.Stream) (string, int, error) {
	t.Helper()
	defer s.Close()
	var sb strings.Builder
	n := 0
	for {
		d, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return sb.String(), n, nil
		}
		if err != nil {
			return sb.String(), n, err
		}
		sb.WriteString(d.Text)
		n += d.Tokens
	}
}

// waitUp waits until the model's child runs again and returns its pid.
func waitUp(t *testing.T, b *Backend, notPID int) int {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		c := b.Children()[0]
		if c.PID != 0 && c.PID != notPID {
			return c.PID
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("the engine child did not come back within 20 s")
	return 0
}

// The child answers exactly what the engine answers in process.
func TestSameAnswerAsInProcess(t *testing.T) {
	b := start(t, 1, nil)
	ref := testmodel.Backend(t, 1)
	for _, req := range []runtime.Request{
		greedy("Once upon a time", 48),
		{Model: testmodel.ModelID, Messages: []runtime.Message{{Role: "user", Content: "Tell me a story"}}, MaxTokens: 32},
		{Model: testmodel.ModelID, Prompt: "The cat", MaxTokens: 40, Stop: []string{"."}},
	} {
		rs, err := ref.Generate(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		want, wantN, err := collect(t, rs)
		if err != nil {
			t.Fatal(err)
		}
		cs, err := b.Generate(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		got, gotN, err := collect(t, cs)
		if err != nil {
			t.Fatal(err)
		}
		if got != want || gotN != wantN {
			t.Errorf("child answered %q (%d tokens), in process %q (%d)", got, gotN, want, wantN)
		}
		if u := cs.Usage(); u.CompletionTokens != gotN || u.PromptTokens == 0 {
			t.Errorf("usage %+v, deltas carried %d tokens", u, gotN)
		}
		if cs.FinishReason() != rs.FinishReason() {
			t.Errorf("finish %q, in process %q", cs.FinishReason(), rs.FinishReason())
		}
	}
}

// Errors cross the pipe as the sentinels callers map to status codes.
func TestErrorsKeepTheirKind(t *testing.T) {
	b := start(t, 1, nil)
	_, err := b.Generate(context.Background(), runtime.Request{Model: "nope", Prompt: "x"})
	if !errors.Is(err, runtime.ErrUnknownModel) {
		t.Errorf("unknown model: %v", err)
	}
	long := strings.Repeat("once upon a time ", 2000) // far past the 512-token context
	_, err = b.Generate(context.Background(), greedy(long, 8))
	if !errors.Is(err, runtime.ErrInvalidRequest) {
		t.Errorf("over-long prompt: %v", err)
	}
	_, err = b.Generate(context.Background(), greedy("a\x00b", 8))
	if !errors.Is(err, runtime.ErrInvalidRequest) || !strings.Contains(err.Error(), "prompt") {
		t.Errorf("NUL prompt: %v, want invalid request naming prompt", err)
	}
}

// A real native abort in the child (llama.cpp's tokenizer given a string
// with a NUL, which is what took whole nodes down) fails that request, leaves
// this process running, and the child comes back; the request that crashed it
// twice is refused from then on.
func TestNativeAbortFailsOnlyTheJob(t *testing.T) {
	b := start(t, 2, nil)
	e := b.engines[testmodel.ModelID]
	crasher := greedy("a\x00b", 8) // past Check: straight to the engine
	for i := 1; i <= 2; i++ {
		pid := waitUp(t, b, 0)
		s, err := e.generate(context.Background(), crasher)
		if err == nil {
			_, _, err = collect(t, s)
		}
		if !errors.Is(err, ErrEngineCrashed) || !errors.Is(err, runtime.ErrUpstream) {
			t.Fatalf("crash %d: %v, want ErrEngineCrashed", i, err)
		}
		t.Logf("crash %d: %v", i, err)
		waitUp(t, b, pid)
	}
	if _, err := e.generate(context.Background(), crasher); !errors.Is(err, ErrRefused) || !errors.Is(err, runtime.ErrInvalidRequest) {
		t.Fatalf("third try of the crashing request: %v, want ErrRefused", err)
	}
	s, err := b.Generate(context.Background(), greedy("Once upon a time", 16))
	if err != nil {
		t.Fatal(err)
	}
	if text, _, err := collect(t, s); err != nil || text == "" {
		t.Fatalf("after the crashes: %q, %v", text, err)
	}
	if c := b.Children()[0]; c.Restarts != 2 || c.Refused != 1 {
		t.Errorf("children %+v, want 2 restarts and 1 refused shape", c)
	}
}

// SIGKILL and SIGABRT of the child mid-stream end the streams in flight
// with ErrEngineCrashed; the child is back within seconds and serves.
func TestKillMidStream(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGABRT} {
		t.Run(sig.String(), func(t *testing.T) {
			b := start(t, 2, nil)
			pid := waitUp(t, b, 0)
			var wg sync.WaitGroup
			errs := make(chan error, 2)
			started := make(chan struct{}, 2)
			for range 2 {
				s, err := b.Generate(context.Background(), greedy("Once upon a time", 400))
				if err != nil {
					t.Fatal(err)
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer s.Close()
					first := true
					for {
						_, err := s.Recv()
						if first {
							started <- struct{}{}
							first = false
						}
						if err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			<-started
			<-started
			at := time.Now()
			if err := syscall.Kill(pid, sig); err != nil {
				t.Fatal(err)
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if !errors.Is(err, ErrEngineCrashed) {
					t.Errorf("stream ended with %v, want ErrEngineCrashed", err)
				}
			}
			// A job that arrives while the child restarts waits for it.
			s, err := b.Generate(context.Background(), greedy("Once upon a time", 16))
			if err != nil {
				t.Fatal(err)
			}
			if _, n, err := collect(t, s); err != nil || n == 0 {
				t.Fatalf("after the kill: %d tokens, %v", n, err)
			}
			t.Logf("%v: served by the next child %v after the kill", sig, time.Since(at).Round(time.Millisecond))
			if waitUp(t, b, pid); b.Children()[0].Restarts != 1 {
				t.Errorf("children %+v, want 1 restart", b.Children())
			}
		})
	}
}

// A child that stops answering (SIGSTOP: as hung as a process gets) is
// killed after missing its pongs and replaced.
func TestHungChildIsReplaced(t *testing.T) {
	b := start(t, 1, func(c *Config) { c.Ping = 50 * time.Millisecond })
	pid := waitUp(t, b, 0)
	s, err := b.Generate(context.Background(), greedy("Once upon a time", 400))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	_, _, err = collect(t, s)
	if !errors.Is(err, ErrEngineCrashed) {
		t.Fatalf("stream on a hung child: %v, want ErrEngineCrashed", err)
	}
	waitUp(t, b, pid)
}

// Closing streams mid-way, from another goroutine and before reading, frees
// the child's contexts for the next requests.
func TestCloseFreesContexts(t *testing.T) {
	b := start(t, 1, nil)
	for range 5 {
		s, err := b.Generate(context.Background(), greedy("Once upon a time", 400))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			t.Fatal(err)
		}
		s.Close()
		if _, err := s.Recv(); err == nil {
			t.Fatal("Recv after Close returned no error")
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := b.Generate(ctx, greedy("Once upon a time", 8)); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled start: %v", err)
	}
	s, err := b.Generate(context.Background(), greedy("Once upon a time", 8))
	if err != nil {
		t.Fatal(err)
	}
	if _, n, err := collect(t, s); err != nil || n == 0 {
		t.Fatalf("after closes: %d tokens, %v", n, err)
	}
}

// A start that cannot load the model says why, in one line, from the child.
func TestStartErrorsComeFromTheChild(t *testing.T) {
	ctx := context.Background()
	_, err := New(ctx, Config{LibDir: t.TempDir(), Models: []runtime.ModelConfig{{Path: testmodel.ModelPath(t)}},
		Logger: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), "lacks libllama.so") {
		t.Errorf("no libraries: %v", err)
	}
}
