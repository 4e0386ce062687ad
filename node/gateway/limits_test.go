package gateway

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

// tickBackend answers every request with n deltas, each after wait.
type tickBackend struct {
	n    int
	wait time.Duration
}

func (b tickBackend) Models() []runtime.Model { return []runtime.Model{{ID: "m"}} }
func (b tickBackend) Close() error            { return nil }
func (b tickBackend) Generate(ctx context.Context, r runtime.Request) (runtime.Stream, error) {
	return &tickStream{b: b, ctx: ctx}, nil
}

type tickStream struct {
	b    tickBackend
	ctx  context.Context
	sent int
}

func (s *tickStream) Recv() (runtime.Delta, error) {
	if s.sent >= s.b.n {
		return runtime.Delta{}, io.EOF
	}
	select {
	case <-time.After(s.b.wait):
	case <-s.ctx.Done():
		return runtime.Delta{}, s.ctx.Err()
	}
	s.sent++
	return runtime.Delta{Text: " tick", Tokens: 1}, nil
}
func (s *tickStream) Usage() runtime.Usage {
	return runtime.Usage{PromptTokens: 1, CompletionTokens: s.sent}
}
func (s *tickStream) FinishReason() string { return runtime.FinishStop }
func (s *tickStream) Close() error         { return nil }

// backendNet is a Backend as the gateway's network (every request bought on it).
type backendNet struct{ runtime.Backend }

func (b backendNet) ListModels(context.Context) ([]openaiapi.Model, error) {
	var out []openaiapi.Model
	for _, m := range b.Models() {
		out = append(out, openaiapi.Model{ID: m.ID, Object: "model", OwnedBy: "cocoon"})
	}
	return out, nil
}

func (b backendNet) Embed(ctx context.Context, req runtime.EmbedRequest) (runtime.Embeddings, error) {
	if e, ok := b.Backend.(runtime.Embedder); ok {
		return e.Embed(ctx, req)
	}
	return runtime.Embeddings{}, &runtime.FieldError{Field: "model", Msg: "no embeddings"}
}

// serve runs a Server with limits and b behind /v1/ on a real 127.0.0.1
// listener (so that the connection limits and deadlines apply) and returns
// its address.
func serve(t *testing.T, l Limits, b runtime.Backend) string {
	t.Helper()
	s := New(testToken, &fakeInfo{}, slog.New(slog.DiscardHandler), WithLimits(l), WithV1(backendNet{b}, Local{}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String()
}

const chatBody = `{"model":"m","messages":[{"role":"user","content":"hi"}]}`

// chat posts a chat request with token from a client whose connections leave
// from srcIP, and returns the status, the body and the time it took.
func chat(t *testing.T, c *http.Client, addr, token, body string) (int, string, time.Duration) {
	t.Helper()
	req, err := http.NewRequest("POST", "http://"+addr+"/v1/chat/completions", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		t.Errorf("POST /v1/chat/completions: %v", err)
		return 0, "", time.Since(start)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), time.Since(start)
}

// clientFrom is an HTTP client whose connections leave from ip (a loopback
// address: 127.0.0.2 is a second source on the same machine).
func clientFrom(ip string, conns int) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: d.DialContext, MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns,
	}}
}

// slowBody sends a request's headers with the token and then its body: stall
// bytes at once and nothing more (idle), or one byte every gap (trickle). It
// reports the status of the answer (0: the connection closed without one),
// how long after the headers it came, and how many body bytes were sent.
func slowBody(addr string, stall bool, gap time.Duration) (status int, after time.Duration, sent int, err error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return 0, 0, 0, err
	}
	defer conn.Close()
	const length = 400
	fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer %s\r\n"+
		"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n", testToken, length)
	start := time.Now()
	var n atomic.Int64
	stop := make(chan struct{})
	go func() {
		if stall {
			k, _ := io.WriteString(conn, `{"model":"m",`)
			n.Add(int64(k))
			return
		}
		for range length {
			select {
			case <-stop:
				return
			case <-time.After(gap):
			}
			if _, err := conn.Write([]byte(" ")); err != nil {
				return
			}
			n.Add(1)
		}
	}()
	defer close(stop)
	resp, rerr := http.ReadResponse(bufio.NewReader(conn), nil)
	after = time.Since(start)
	if rerr == nil {
		status = resp.StatusCode
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return status, after, int(n.Load()), nil
}

// TestSlowBodiesCut sends 20 request bodies too slowly (10 stall after a few
// bytes, 10 trickle a byte every 20 ms) with a valid token: each is answered
// 408 and its connection closed at the deadline, long before its body could
// end, while a normal request meanwhile is answered as usual.
func TestSlowBodiesCut(t *testing.T) {
	const body, idle = 600 * time.Millisecond, 200 * time.Millisecond
	addr := serve(t, Limits{Body: body, BodyIdle: idle}, tickBackend{n: 3})
	c := clientFrom("127.0.0.1", 4)
	_, _, base := chat(t, c, addr, testToken, chatBody)

	type result struct {
		stall  bool
		status int
		after  time.Duration
		sent   int
		err    error
	}
	results := make([]result, 20)
	var wg sync.WaitGroup
	for i := range results {
		stall := i%2 == 0
		wg.Go(func() {
			st, after, sent, err := slowBody(addr, stall, 20*time.Millisecond)
			results[i] = result{stall, st, after, sent, err}
		})
	}
	time.Sleep(100 * time.Millisecond) // the slow ones are connected and sending
	status, answer, during := chat(t, c, addr, testToken, chatBody)
	wg.Wait()
	if status != http.StatusOK || !strings.Contains(answer, "tick") {
		t.Fatalf("normal request during the slow bodies: %d %s", status, answer)
	}
	var stalls, trickles []time.Duration
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("slow body %d: %v", i, r.err)
		}
		if r.status != http.StatusRequestTimeout {
			t.Errorf("slow body %d (stall %v): answered %d after %v; want 408", i, r.stall, r.status, r.after)
		}
		if r.sent >= 400 {
			t.Errorf("slow body %d: the whole body went through (%d bytes in %v); want it cut", i, r.sent, r.after)
		}
		if r.stall {
			stalls = append(stalls, r.after)
		} else {
			trickles = append(trickles, r.after)
		}
	}
	slices.Sort(stalls)
	slices.Sort(trickles)
	t.Logf("limits body %v, idle %v: 10 stalled bodies cut after %v–%v, 10 trickling (1 B / 20 ms) after %v–%v; "+
		"a normal request took %v before and %v during them",
		body, idle, stalls[0].Round(time.Millisecond), stalls[9].Round(time.Millisecond),
		trickles[0].Round(time.Millisecond), trickles[9].Round(time.Millisecond), base.Round(time.Microsecond), during.Round(time.Microsecond))
}

// TestLongStreamOutlivesBodyDeadline: the body deadlines end with the body; an
// answer streamed for several times the Body limit arrives whole.
func TestLongStreamOutlivesBodyDeadline(t *testing.T) {
	addr := serve(t, Limits{Body: 150 * time.Millisecond, BodyIdle: 50 * time.Millisecond}, tickBackend{n: 12, wait: 50 * time.Millisecond})
	c := clientFrom("127.0.0.1", 1)
	for _, stream := range []bool{true, false} {
		body := strings.Replace(chatBody, `{"model"`, fmt.Sprintf(`{"stream":%v,"model"`, stream), 1)
		status, answer, took := chat(t, c, addr, testToken, body)
		if status != http.StatusOK || strings.Count(answer, "tick") != 12 || (stream && !strings.Contains(answer, "[DONE]")) {
			t.Fatalf("stream %v: %d after %v: %s; want 12 ticks", stream, status, took, answer)
		}
	}
}

// TestAuthThrottle sends 2,000 requests with a wrong token from one source:
// after the first AuthBurst they get 429 with Retry-After; meanwhile requests
// with the right token, from that source and from another, are answered as
// usual, and a wrong token from the other source still gets 401.
func TestAuthThrottle(t *testing.T) {
	addr := serve(t, Limits{}, tickBackend{n: 1})
	attacker := clientFrom("127.0.0.1", 8)
	other := clientFrom("127.0.0.2", 2)
	if status, _, _ := chat(t, other, addr, testToken, chatBody); status != http.StatusOK {
		t.Skipf("no second loopback source 127.0.0.2 here: %d", status)
	}
	var baseline []time.Duration
	for range 10 {
		status, _, d := chat(t, other, addr, testToken, chatBody)
		if status != http.StatusOK {
			t.Fatalf("baseline request: %d", status)
		}
		baseline = append(baseline, d)
	}

	const n, workers = 2000, 8
	var (
		next                atomic.Int64
		n401, n429, nOther  atomic.Int64
		badRetry            atomic.Value
		stop                = make(chan struct{})
		wg, normal          sync.WaitGroup
		mu                  sync.Mutex
		sameLat, otherLat   []time.Duration
		sameFail, otherFail []string
	)
	start := time.Now()
	for range workers {
		wg.Go(func() {
			for next.Add(1) <= n {
				req, _ := http.NewRequest("POST", "http://"+addr+"/v1/chat/completions", strings.NewReader(chatBody))
				req.Header.Set("Authorization", "Bearer wrong-token")
				resp, err := attacker.Do(req)
				if err != nil {
					t.Errorf("bad-token request: %v", err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				switch resp.StatusCode {
				case http.StatusUnauthorized:
					n401.Add(1)
				case http.StatusTooManyRequests:
					n429.Add(1)
					if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 1 {
						badRetry.Store(resp.Header.Get("Retry-After"))
					}
				default:
					nOther.Add(1)
				}
			}
		})
	}
	// Normal requests during the flood: the right token from the flooding
	// source and from another one, and a wrong token from the other one.
	for _, src := range []struct {
		c    *http.Client
		lat  *[]time.Duration
		fail *[]string
	}{{attacker, &sameLat, &sameFail}, {other, &otherLat, &otherFail}} {
		normal.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				status, body, d := chat(t, src.c, addr, testToken, chatBody)
				mu.Lock()
				*src.lat = append(*src.lat, d)
				if status != http.StatusOK {
					*src.fail = append(*src.fail, fmt.Sprintf("%d %s", status, body))
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	status, _, _ := chat(t, other, addr, "wrong-token", chatBody)
	close(stop)
	normal.Wait()

	if len(sameFail)+len(otherFail) > 0 {
		t.Errorf("normal requests during the flood failed: same source %q, other source %q", sameFail, otherFail)
	}
	if status != http.StatusUnauthorized {
		t.Errorf("a wrong token from the other source: %d; want 401 (throttling is per source)", status)
	}
	if nOther.Load() > 0 || n401.Load()+n429.Load() != n {
		t.Errorf("%d answers neither 401 nor 429", nOther.Load())
	}
	burst, every := DefaultLimits.AuthBurst, DefaultLimits.AuthEvery
	if most := int64(burst) + int64(elapsed/every) + 1; n401.Load() > most || n429.Load() == 0 {
		t.Errorf("%d answered 401 and %d 429 in %v; want at most %d 401 (burst %d, one more per %v)", n401.Load(), n429.Load(), elapsed, most, burst, every)
	}
	if v := badRetry.Load(); v != nil {
		t.Errorf("429 with Retry-After %q; want whole seconds ≥ 1", v)
	}
	t.Logf("%d bad-token requests from one source (%d at a time) in %v: %d answered 401, %d answered 429", n, workers, elapsed.Round(time.Millisecond), n401.Load(), n429.Load())
	t.Logf("right token, other source: %d requests before the flood p50 %v max %v; during it %d requests p50 %v max %v", len(baseline), p50(baseline), slices.Max(baseline), len(otherLat), p50(otherLat), slices.Max(otherLat))
	t.Logf("right token, flooding source: %d requests during the flood p50 %v max %v, all 200", len(sameLat), p50(sameLat), slices.Max(sameLat))
}

func p50(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2].Round(time.Microsecond)
}

// TestMaxConns: with MaxConns connections held open, a new request waits until
// one of them closes, then is served.
func TestMaxConns(t *testing.T) {
	addr := serve(t, Limits{MaxConns: 2}, tickBackend{n: 1})
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		defer c.Close()
	}
	time.Sleep(50 * time.Millisecond) // both accepted
	got := make(chan int, 1)
	go func() {
		status, _, _ := chat(t, clientFrom("127.0.0.1", 1), addr, testToken, chatBody)
		got <- status
	}()
	select {
	case status := <-got:
		t.Fatalf("a third connection was served (%d) while 2 of MaxConns 2 were open", status)
	case <-time.After(300 * time.Millisecond):
	}
	held[0].Close()
	if status := <-got; status != http.StatusOK {
		t.Fatalf("request after a slot freed: %d; want 200", status)
	}
}

func TestAuthThrottleBucket(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	th := newAuthThrottle(3, time.Second)
	th.now = func() time.Time { return now }
	a := netip.MustParsePrefix("10.0.0.1/32")
	for i := range 3 {
		if ok, _, _ := th.fail(a); !ok {
			t.Fatalf("failure %d within the burst throttled", i+1)
		}
	}
	ok, retry, first := th.fail(a)
	if ok || retry != time.Second || !first {
		t.Fatalf("failure 4 = %v, retry %v, first %v; want throttled, 1s, first", ok, retry, first)
	}
	if _, _, first := th.fail(a); first {
		t.Fatal("second throttled failure reported as the first")
	}
	if ok, _, _ := th.fail(netip.MustParsePrefix("10.0.0.2/32")); !ok {
		t.Fatal("another source throttled")
	}
	now = now.Add(1500 * time.Millisecond)
	ok, _, _ = th.fail(a)
	ok2, retry, _ := th.fail(a)
	if !ok || ok2 || retry != 500*time.Millisecond {
		t.Fatalf("after 1.5 s: %v then %v (retry %v); want one more failure allowed, then 0.5 s to wait", ok, ok2, retry)
	}

	for _, tc := range []struct{ remote, want string }{
		{"127.0.0.1:4000", "127.0.0.1/32"},
		{"[::ffff:10.1.2.3]:80", "10.1.2.3/32"},
		{"[2001:db8:1:2:3:4:5:6]:443", "2001:db8:1:2::/64"},
		{"[fe80::1%eth0]:443", "fe80::/64"},
		{"pipe", "invalid Prefix"},
	} {
		if got := source(&http.Request{RemoteAddr: tc.remote}); got.String() != tc.want {
			t.Errorf("source(%q) = %s; want %s", tc.remote, got, tc.want)
		}
	}
}

func TestAuthThrottleOverflow(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	th := newAuthThrottle(1, time.Hour)
	th.now = func() time.Time { return now }
	for i := range maxThrottled {
		th.fail(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32))
	}
	// Every tracked source is empty: newcomers share one bucket of 1.
	x, y := netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("192.0.2.2/32")
	if ok, _, _ := th.fail(x); !ok {
		t.Fatal("first newcomer throttled")
	}
	if ok, _, _ := th.fail(y); ok {
		t.Fatal("second newcomer not throttled with the first in a full table")
	}
	if len(th.sources) > maxThrottled {
		t.Fatalf("%d sources tracked; at most %d", len(th.sources), maxThrottled)
	}
	now = now.Add(2 * time.Hour) // all refilled: forgotten to make room
	if ok, _, _ := th.fail(y); !ok || len(th.sources) != 1 {
		t.Fatalf("after refill: ok %v, %d sources; want ok and 1", ok, len(th.sources))
	}
}
