package gateway

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// Limits bound what one caller can hold of the API: how long it may take to
// send a request, how many connections are served at once, and how many failed
// authentications a source address may make. Zero fields take the defaults in
// brackets; a negative value turns that limit off (AuthEvery: takes the
// default).
type Limits struct {
	// ReadHeader bounds the request line and headers [10s].
	ReadHeader time.Duration
	// Body bounds the whole request body, counted from the end of the headers
	// [30s]; BodyIdle bounds each wait for the body's next bytes [10s]. A body
	// cut by either ends its connection (the handler answers 408). They cover the
	// body only: once it is read, a streamed answer may last as long as it runs.
	Body, BodyIdle time.Duration
	// Idle bounds a kept-alive connection between two requests [2m].
	Idle time.Duration
	// MaxConns is how many connections are served at once; more wait in the
	// listen backlog until one closes [512].
	MaxConns int
	// AuthBurst failed authentications (a missing or wrong token or cookie) are
	// answered 401 from one source address (an IPv6 source: its /64), then one
	// more per AuthEvery; beyond that the source gets 429 with Retry-After
	// [20, 1s]. A correct token is always served, throttled source or not.
	AuthBurst int
	AuthEvery time.Duration
}

// DefaultLimits are the limits a Server uses for zero fields.
var DefaultLimits = Limits{
	ReadHeader: 10 * time.Second,
	Body:       30 * time.Second,
	BodyIdle:   10 * time.Second,
	Idle:       2 * time.Minute,
	MaxConns:   512,
	AuthBurst:  20,
	AuthEvery:  time.Second,
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits
	dur := func(v *time.Duration, def time.Duration) {
		switch {
		case *v == 0:
			*v = def
		case *v < 0:
			*v = 0 // off
		}
	}
	num := func(v *int, def int) {
		switch {
		case *v == 0:
			*v = def
		case *v < 0:
			*v = 0 // off
		}
	}
	dur(&l.ReadHeader, d.ReadHeader)
	dur(&l.Body, d.Body)
	dur(&l.BodyIdle, d.BodyIdle)
	dur(&l.Idle, d.Idle)
	num(&l.MaxConns, d.MaxConns)
	num(&l.AuthBurst, d.AuthBurst)
	if l.AuthEvery <= 0 {
		l.AuthEvery = d.AuthEvery
	}
	return l
}

// Option configures a Server.
type Option func(*Server)

// WithLimits sets the server's limits (zero fields: DefaultLimits).
func WithLimits(l Limits) Option { return func(s *Server) { s.limits = l } }

// bodyDeadlines bounds the reading of every request body by the Body and
// BodyIdle limits: a conn read deadline, moved before each read of the body
// and never again once the body has ended. A WriteTimeout or ReadTimeout
// cannot do this: they would also cut a streamed answer that runs longer
// (net/http reads the connection in the background once the body is done,
// and a deadline passing there cancels the request).
func (s *Server) bodyDeadlines(next http.Handler) http.Handler {
	total, idle := s.limits.Body, s.limits.BodyIdle
	if total <= 0 && idle <= 0 {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody {
			next.ServeHTTP(w, r)
			return
		}
		b := &deadlineBody{rc: http.NewResponseController(w), body: r.Body, idle: idle}
		if total > 0 {
			b.end = time.Now().Add(total)
		}
		// A body the handler never reads (an unauthenticated request, say) is
		// still bounded while net/http drains it after the handler.
		b.arm()
		r.Body = b
		next.ServeHTTP(w, r)
	})
}

// errBodyTimeout is what a read of a request body returns when the client
// took longer than the Body or BodyIdle limit to send it.
var errBodyTimeout = errors.New("gateway: request body not received in time")

// deadlineBody moves the connection's read deadline before each read of the
// body and clears it at the body's end.
type deadlineBody struct {
	rc   *http.ResponseController
	body io.ReadCloser
	end  time.Time // zero: no total bound
	idle time.Duration

	mu   sync.Mutex
	done bool // the body ended: no deadline any more
}

// arm sets the read deadline for the next read: the nearer of the body's end
// and now + idle.
func (b *deadlineBody) arm() {
	d := b.end
	if b.idle > 0 {
		if next := time.Now().Add(b.idle); d.IsZero() || next.Before(d) {
			d = next
		}
	}
	_ = b.rc.SetReadDeadline(d) // ErrNotSupported (a recorder in tests): nothing to bound
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	if !b.done {
		b.arm()
	}
	b.mu.Unlock()
	n, err := b.body.Read(p)
	switch {
	case err == io.EOF:
		b.finish()
	case err != nil && isTimeout(err):
		err = fmt.Errorf("%w: %w", errBodyTimeout, err)
	}
	return n, err
}

// finish ends the deadlines: the background read that net/http starts at the
// body's end (it clears the deadline itself) must not time out during a long
// answer, so nothing may arm one again.
func (b *deadlineBody) finish() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.done {
		b.done = true
		_ = b.rc.SetReadDeadline(time.Time{})
	}
}

func (b *deadlineBody) Close() error { return b.body.Close() }

func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}
