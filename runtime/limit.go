package runtime

import (
	"context"
	"fmt"
	"sync"
)

// DefaultQueue is the queue length of Limit when none is given.
const DefaultQueue = 64

// Limited bounds the number of concurrent generations of a Backend: at most
// Slots streams are open at once, further Generate calls wait in a FIFO queue of
// bounded length and fail with ErrBusy when it is full. A waiting call honours
// its context. A slot is held from Generate until the stream ends (Recv returns
// an error, io.EOF included) or is closed.
//
// Limited is safe for concurrent use. Its Slots figures are what capacity ads
// report.
type Limited struct {
	b        Backend
	total    int
	maxQueue int

	mu     sync.Mutex
	free   int
	queue  []chan struct{} // FIFO of waiters; a waiter is woken by closing its channel
	closed bool
}

// Limit wraps b so that at most slots generations run at once (slots < 1 means
// 1), with a queue of at most queue waiting requests (queue < 0 means none,
// 0 means DefaultQueue).
func Limit(b Backend, slots, queue int) *Limited {
	if slots < 1 {
		slots = 1
	}
	if queue == 0 {
		queue = DefaultQueue
	}
	if queue < 0 {
		queue = 0
	}
	return &Limited{b: b, total: slots, maxQueue: queue, free: slots}
}

// Slots reports the number of slots, how many are free, and how many requests
// wait in the queue.
func (l *Limited) Slots() (total, free, queued int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total, l.free, len(l.queue)
}

// QueueCap is how many requests may wait for a slot (the queue's capacity,
// where Slots reports how many wait now).
func (l *Limited) QueueCap() int { return l.maxQueue }

// Unwrap returns the wrapped backend.
func (l *Limited) Unwrap() Backend { return l.b }

// Models returns the wrapped backend's models.
func (l *Limited) Models() []Model { return l.b.Models() }

// Generate waits for a free slot (or fails with ErrBusy when the queue is full,
// or with ctx's error while waiting) and starts the generation on it.
func (l *Limited) Generate(ctx context.Context, req Request) (Stream, error) {
	if err := l.acquire(ctx); err != nil {
		return nil, err
	}
	s, err := l.b.Generate(ctx, req)
	if err != nil {
		l.release()
		return nil, err
	}
	return &limitedStream{Stream: s, release: l.release}, nil
}

// Embed takes a slot as Generate does and computes the embeddings on it.
// A wrapped backend that serves no embeddings refuses naming the model.
func (l *Limited) Embed(ctx context.Context, req EmbedRequest) (Embeddings, error) {
	e, ok := l.b.(Embedder)
	if !ok {
		return Embeddings{}, &FieldError{Field: "model", Msg: fmt.Sprintf("model %q: this backend serves no embeddings", truncate(req.Model))}
	}
	if err := l.acquire(ctx); err != nil {
		return Embeddings{}, err
	}
	defer l.release()
	return e.Embed(ctx, req)
}

func (l *Limited) acquire(ctx context.Context) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	if l.free > 0 && len(l.queue) == 0 {
		l.free--
		l.mu.Unlock()
		return nil
	}
	if len(l.queue) >= l.maxQueue {
		n := len(l.queue)
		l.mu.Unlock()
		return fmt.Errorf("all %d slots taken and %d requests queued: %w", l.total, n, ErrBusy)
	}
	ready := make(chan struct{})
	l.queue = append(l.queue, ready)
	l.mu.Unlock()

	select {
	case <-ready:
		// release handed its slot to us (free was not incremented).
		if l.isClosed() {
			l.release()
			return ErrClosed
		}
		return nil
	case <-ctx.Done():
		l.mu.Lock()
		for i, w := range l.queue {
			if w == ready {
				l.queue = append(l.queue[:i], l.queue[i+1:]...)
				l.mu.Unlock()
				return fmt.Errorf("wait for a slot: %w", ctx.Err())
			}
		}
		l.mu.Unlock()
		// Woken concurrently with the cancel: we own a slot, give it back.
		l.release()
		return fmt.Errorf("wait for a slot: %w", ctx.Err())
	}
}

func (l *Limited) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

// release hands the slot to the first waiter, or frees it.
func (l *Limited) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.queue) > 0 {
		w := l.queue[0]
		l.queue = l.queue[1:]
		close(w)
		return
	}
	l.free++
}

// Close refuses new generations, wakes queued ones with ErrClosed and closes
// the wrapped backend.
func (l *Limited) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	waiters := l.queue
	l.queue = nil
	l.mu.Unlock()
	for _, w := range waiters {
		close(w) // each sees closed, and returns ErrClosed
	}
	return l.b.Close()
}

// limitedStream gives its slot back once, when the stream ends or is closed.
type limitedStream struct {
	Stream
	release func()
	once    sync.Once
}

func (s *limitedStream) Recv() (Delta, error) {
	d, err := s.Stream.Recv()
	if err != nil {
		s.once.Do(s.release)
	}
	return d, err
}

func (s *limitedStream) Close() error {
	err := s.Stream.Close()
	s.once.Do(s.release)
	return err
}

// Unwrap returns the wrapped stream, so that optional interfaces (headers, cost)
// of the backend's stream stay reachable.
func (s *limitedStream) Unwrap() Stream { return s.Stream }
