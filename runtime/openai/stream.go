package openai

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

// stream reads one upstream SSE answer. Recv is called by one goroutine;
// Close may come from any.
type stream struct {
	url    string
	ctx    context.Context // the request's, cancelled by the watchdog with a cause
	parent context.Context // the caller's
	cancel context.CancelCauseFunc
	watch  *time.Timer
	// streaming is set at the first event: from then on the watchdog
	// measures the idle time between events.
	streaming atomic.Bool
	idle      time.Duration
	body      io.ReadCloser
	events    *openaiapi.EventReader

	dec     decoder
	counted int  // completion tokens handed out in deltas so far
	ended   bool // [DONE] seen and the token delta handed out
	err     error
	closeMu sync.Once
}

// wrap turns a transport error into the error to return: the watchdog's cause
// when it fired, the caller's context error when it was cancelled, otherwise
// an upstream failure.
func (s *stream) wrap(err error) error {
	if s.parent.Err() != nil {
		return fmt.Errorf("openai backend: %w", s.parent.Err())
	}
	if c := context.Cause(s.ctx); c != nil && !errors.Is(c, context.Canceled) {
		return c
	}
	return upstreamError("%w", err)
}

// Recv returns the next event that has text, tool calls, logprobs or a
// refusal. A delta carries the
// tokens the upstream has counted since the last one: with continuous usage
// (vLLM) every chunk says so; otherwise content deltas carry 0 and a last
// delta before io.EOF, with empty Text, carries all the completion tokens.
func (s *stream) Recv() (runtime.Delta, error) {
	if s.err != nil {
		return runtime.Delta{}, s.err
	}
	for {
		if s.ended {
			return runtime.Delta{}, s.fail(io.EOF)
		}
		data, done, err := s.events.Next()
		if err != nil {
			if err == io.EOF {
				err = errors.New("stream ended without [DONE]")
			}
			return runtime.Delta{}, s.fail(s.wrap(fmt.Errorf("read %s: %w", s.url, err)))
		}
		// An event arrived: the next may take at most the idle timeout.
		s.streaming.Store(true)
		s.watch.Reset(s.idle)
		if done {
			if !s.dec.gotUsage {
				return runtime.Delta{}, s.fail(fmt.Errorf("%w: %s streamed no usage (is stream_options.include_usage supported?); not billing by guesswork", runtime.ErrUnbillable, s.url))
			}
			if s.dec.finish == "" {
				return runtime.Delta{}, s.fail(upstreamError("%s ended without a finish reason", s.url))
			}
			s.ended = true
			if rest := s.dec.usage.CompletionTokens - s.counted; rest > 0 {
				s.counted += rest
				return runtime.Delta{Tokens: rest}, nil
			}
			continue
		}
		if msg := errorMessage(data); msg != "" {
			return runtime.Delta{}, s.fail(upstreamError("%s sent an error mid-stream: %s", s.url, msg))
		}
		d, err := s.dec.chunk(data)
		if err != nil {
			return runtime.Delta{}, s.fail(err)
		}
		if d.Text != "" || len(d.ToolCalls) > 0 || len(d.Logprobs) > 0 || d.Refusal != "" {
			if s.dec.gotUsage && s.dec.usage.CompletionTokens > s.counted {
				d.Tokens = s.dec.usage.CompletionTokens - s.counted
				s.counted = s.dec.usage.CompletionTokens
			}
			return d, nil
		}
	}
}

// fail ends the stream with err (io.EOF at a clean end). After an error the
// usage is zero: nothing of a failed generation is billed.
func (s *stream) fail(err error) error {
	s.err = err
	if err != io.EOF {
		s.dec.usage = runtime.Usage{}
		s.dec.finish = ""
	}
	s.Close()
	return err
}

func (s *stream) Usage() runtime.Usage { return s.dec.usage }
func (s *stream) FinishReason() string { return s.dec.finish }

// Close aborts the upstream request if it still runs.
func (s *stream) Close() error {
	s.closeMu.Do(func() {
		s.watch.Stop()
		s.cancel(context.Canceled)
		if s.body != nil {
			s.body.Close()
		}
	})
	return nil
}
