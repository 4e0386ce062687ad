package gateway

import (
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"
)

// maxThrottled is how many source addresses the auth throttle tracks; beyond
// it, sources whose buckets have refilled are forgotten, and if none has, new
// sources share one bucket (so a flood from many addresses is still bounded).
const maxThrottled = 4096

// authThrottle counts failed authentications per source with a token bucket:
// burst failures at once, then one per every. It is safe for concurrent use.
type authThrottle struct {
	burst float64
	every time.Duration
	now   func() time.Time

	mu       sync.Mutex
	sources  map[netip.Prefix]*bucket
	overflow bucket
}

type bucket struct {
	tokens    float64
	at        time.Time
	throttled bool // the last failure was refused (for logging the change only)
}

func newAuthThrottle(burst int, every time.Duration) *authThrottle {
	if burst <= 0 {
		return nil
	}
	return &authThrottle{burst: float64(burst), every: every, now: time.Now, sources: map[netip.Prefix]*bucket{}}
}

// source is the address r came from: the IP for IPv4, the /64 for IPv6 (one
// host usually holds a whole /64). A RemoteAddr that does not parse (a test's
// recorder) is one shared source.
func source(r *http.Request) netip.Prefix {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Prefix{}
	}
	a = a.Unmap().WithZone("")
	bits := 32
	if a.Is6() {
		bits = 64
	}
	p, _ := a.Prefix(bits)
	return p
}

// fail records a failed authentication from src. It reports whether the
// failure may still be answered (401), and else how long until it may (429,
// Retry-After); first is true when src has just become throttled.
func (t *authThrottle) fail(src netip.Prefix) (ok bool, retry time.Duration, first bool) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.bucket(src, now)
	if elapsed := now.Sub(b.at); elapsed > 0 {
		b.tokens = min(t.burst, b.tokens+float64(elapsed)/float64(t.every))
	}
	b.at = now
	if b.tokens >= 1 {
		b.tokens--
		b.throttled = false
		return true, 0, false
	}
	first = !b.throttled
	b.throttled = true
	return false, time.Duration((1 - b.tokens) * float64(t.every)), first
}

func (t *authThrottle) bucket(src netip.Prefix, now time.Time) *bucket {
	if b, ok := t.sources[src]; ok {
		return b
	}
	if len(t.sources) >= maxThrottled {
		for p, b := range t.sources {
			if b.tokens+float64(now.Sub(b.at))/float64(t.every) >= t.burst {
				delete(t.sources, p) // refilled: as good as new
			}
		}
		if len(t.sources) >= maxThrottled {
			if t.overflow.at.IsZero() {
				t.overflow = bucket{tokens: t.burst, at: now}
			}
			return &t.overflow
		}
	}
	b := &bucket{tokens: t.burst, at: now}
	t.sources[src] = b
	return b
}
