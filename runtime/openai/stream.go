package openai

import (
	"context"
	"encoding/json"
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
	chat   bool
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

	usage    runtime.Usage
	gotUsage bool
	counted  int // completion tokens handed out in deltas so far
	finish   string
	ended    bool // [DONE] seen and the token delta handed out
	err      error
	closeMu  sync.Once
}

// chunk is what either kind of streaming answer holds that matters here.
type chunk struct {
	Choices []struct {
		Text  string `json:"text"` // completions
		Delta struct {
			Content *string `json:"content"`
		} `json:"delta"` // chat
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens     *int `json:"prompt_tokens"`
		CompletionTokens *int `json:"completion_tokens"`
	} `json:"usage"`
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

// Recv returns the text of the next event that has text. A delta carries the
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
			if !s.gotUsage {
				return runtime.Delta{}, s.fail(fmt.Errorf("%w: %s streamed no usage (is stream_options.include_usage supported?); not billing by guesswork", runtime.ErrUnbillable, s.url))
			}
			if s.finish == "" {
				return runtime.Delta{}, s.fail(upstreamError("%s ended without a finish reason", s.url))
			}
			s.ended = true
			if rest := s.usage.CompletionTokens - s.counted; rest > 0 {
				s.counted += rest
				return runtime.Delta{Tokens: rest}, nil
			}
			continue
		}
		if msg := errorMessage(data); msg != "" {
			return runtime.Delta{}, s.fail(upstreamError("%s sent an error mid-stream: %s", s.url, msg))
		}
		var c chunk
		if err := json.Unmarshal(data, &c); err != nil {
			return runtime.Delta{}, s.fail(upstreamError("%s sent an event that is not a completion chunk: %w", s.url, err))
		}
		if c.Usage != nil {
			if c.Usage.PromptTokens == nil || c.Usage.CompletionTokens == nil || *c.Usage.PromptTokens < 0 || *c.Usage.CompletionTokens < 0 {
				return runtime.Delta{}, s.fail(fmt.Errorf("%w: %s sent an incomplete usage object", runtime.ErrUnbillable, s.url))
			}
			if *c.Usage.CompletionTokens < s.usage.CompletionTokens {
				return runtime.Delta{}, s.fail(upstreamError("%s sent a usage going backwards (%d completion tokens after %d)", s.url, *c.Usage.CompletionTokens, s.usage.CompletionTokens))
			}
			s.usage = runtime.Usage{PromptTokens: *c.Usage.PromptTokens, CompletionTokens: *c.Usage.CompletionTokens}
			s.gotUsage = true
		}
		text := ""
		for _, ch := range c.Choices {
			if ch.FinishReason != nil && *ch.FinishReason != "" {
				s.finish = *ch.FinishReason
			}
			if s.chat && ch.Delta.Content != nil {
				text += *ch.Delta.Content
			} else if !s.chat {
				text += ch.Text
			}
		}
		if text != "" {
			d := runtime.Delta{Text: text}
			if s.gotUsage && s.usage.CompletionTokens > s.counted {
				d.Tokens = s.usage.CompletionTokens - s.counted
				s.counted = s.usage.CompletionTokens
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
		s.usage = runtime.Usage{}
		s.finish = ""
	}
	s.Close()
	return err
}

func (s *stream) Usage() runtime.Usage { return s.usage }
func (s *stream) FinishReason() string { return s.finish }

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
