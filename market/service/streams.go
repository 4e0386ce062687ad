package service

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	msmux "github.com/multiformats/go-multistream"
)

// jobStream is the client's job stream. Closing it half-closes the stream at
// once, so the caller's answer never waits for the worker; a goroutine of the
// client then waits (up to jobAckTimeout) for the job's reader to reach the
// end of the stream, where the worker closes its side,
// which it does once the job's last voucher is on its disk, and only then
// counts the job out of the worker's in-flight jobs. While it is open, a probe
// (Client.watch) checks that a silent worker is still there.
type jobStream struct {
	network.Stream
	once    sync.Once
	release func()
	wg      *sync.WaitGroup // the client's: Client.Close waits for the drain

	heard     atomic.Int64 // unix nanos of the last bytes read, or of the open
	stopProbe func()
	ended     sync.Once
	eof       chan struct{} // closed when a Read fails: the worker closed its side, or the stream ended
}

func (s *jobStream) Read(p []byte) (int, error) {
	n, err := s.Stream.Read(p)
	if n > 0 {
		s.heard.Store(time.Now().UnixNano())
	}
	if err != nil {
		s.ended.Do(func() { close(s.eof) })
	}
	return n, err
}

// watch probes the worker p behind s whenever s has been silent for
// ProbeAfter: a ping over the connection that gets no answer within the probe
// timeout means the worker is gone without a word (killed behind QUIC, cable
// pulled), so the connection is closed, which ends the job's Run at once with
// the stream reset (the attempt fails over), and p is marked down. A worker
// that is only slow (a long prompt, a chain lookup) answers pings. Close
// stops the probe.
func (c *Client) watch(s *jobStream, p peer.ID) {
	s.heard.Store(time.Now().UnixNano())
	if c.cfg.ProbeAfter < 0 {
		s.stopProbe = func() {}
		return
	}
	// A timer, not a goroutine per job: nothing runs until the stream has been
	// silent for ProbeAfter, and stopping it never waits.
	ctx, cancel := context.WithCancel(c.ctx)
	after := c.cfg.ProbeAfter
	var (
		mu sync.Mutex
		t  *time.Timer
	)
	rearm := func(d time.Duration) {
		mu.Lock()
		if ctx.Err() == nil {
			t.Reset(d)
		}
		mu.Unlock()
	}
	check := func() {
		if ctx.Err() != nil {
			return
		}
		if silent := time.Since(time.Unix(0, s.heard.Load())); silent < after {
			rearm(after - silent)
			return
		}
		timeout := max(c.cfg.ProbeTimeout, 4*c.node.Host.Peerstore().LatencyEWMA(p))
		start := time.Now()
		if c.answers(ctx, p, timeout) {
			s.heard.Store(time.Now().UnixNano())
			rearm(after)
			return
		}
		if ctx.Err() != nil {
			return // the job ended while the ping was out
		}
		c.log.Info("worker does not answer on its connection: closing it and failing over", "peer", p, "probe", time.Since(start).Round(time.Millisecond))
		c.sel.MarkDown(p)
		_ = s.Stream.Conn().Close()
	}
	mu.Lock()
	t = time.AfterFunc(after, check)
	mu.Unlock()
	s.stopProbe = func() {
		mu.Lock()
		cancel()
		t.Stop()
		mu.Unlock()
	}
}

// answers reports whether p answers a ping on an existing connection within
// timeout. A peer that does not speak the ping protocol counts as answering.
func (c *Client) answers(ctx context.Context, p peer.ID, timeout time.Duration) bool {
	ctx, cancel := context.WithTimeout(network.WithNoDial(ctx, "probe worker"), timeout)
	defer cancel()
	select {
	case res := <-ping.Ping(ctx, c.node.Host, p):
		return res.Error == nil || errors.Is(res.Error, msmux.ErrNotSupported[protocol.ID]{})
	case <-ctx.Done():
		return false
	}
}

// jobAckTimeout bounds how long closing a job stream waits for the worker's close.
const jobAckTimeout = 2 * time.Second

func (s *jobStream) Close() error {
	var err error
	s.once.Do(func() {
		if s.stopProbe != nil {
			s.stopProbe()
		}
		if err = s.Stream.CloseWrite(); err != nil {
			err = errors.Join(err, s.Stream.Reset())
			s.release()
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.release()
			// The job's reader (market.Run's, detached) reads on to the
			// end of the stream; the deadline bounds it.
			_ = s.Stream.SetReadDeadline(time.Now().Add(jobAckTimeout))
			t := time.NewTimer(jobAckTimeout)
			defer t.Stop()
			select { // mocknet streams ignore deadlines: bound the wait here too
			case <-s.eof:
				_ = s.Stream.Close()
			case <-t.C:
				_ = s.Stream.Reset()
			}
		}()
	})
	return err
}

// workerReadAhead is the buffer of client bytes a worker's job stream reads
// ahead of the job: vouchers (a few hundred bytes each) must never wait behind
// the chunks the worker is writing, also on transports without a receive
// window (mocknet's synchronous pipes), or both sides could block in Write.
const workerReadAhead = 256 << 10

// workerStream is the worker's side of a job stream: a goroutine reads ahead up
// to workerReadAhead bytes, and a read deadline in the past (the job protocol
// sets one only when it has stopped reading) ends a blocked Read at once, also
// where the transport's deadlines are no-ops.
type workerStream struct {
	network.Stream
	mu     sync.Mutex
	cond   *sync.Cond
	buf    []byte
	err    error // from the stream, after buf is drained
	closed bool  // reading stopped by the job
}

func newWorkerStream(s network.Stream) *workerStream {
	ws := &workerStream{Stream: s}
	ws.cond = sync.NewCond(&ws.mu)
	go ws.fill()
	return ws
}

func (ws *workerStream) fill() {
	tmp := make([]byte, 16<<10)
	for {
		n, err := ws.Stream.Read(tmp)
		ws.mu.Lock()
		ws.buf = append(ws.buf, tmp[:n]...)
		for len(ws.buf) >= workerReadAhead && !ws.closed {
			ws.cond.Broadcast()
			ws.cond.Wait()
		}
		if err != nil {
			ws.err = err
		}
		stop := ws.closed || err != nil
		ws.cond.Broadcast()
		ws.mu.Unlock()
		if stop {
			return
		}
	}
}

func (ws *workerStream) Read(p []byte) (int, error) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for len(ws.buf) == 0 && ws.err == nil && !ws.closed {
		ws.cond.Wait()
	}
	switch {
	case ws.closed:
		return 0, io.ErrClosedPipe
	case len(ws.buf) > 0:
		n := copy(p, ws.buf)
		ws.buf = ws.buf[n:]
		ws.cond.Broadcast()
		return n, nil
	}
	return 0, ws.err
}

func (ws *workerStream) SetReadDeadline(t time.Time) error {
	if !t.IsZero() && !t.After(time.Now()) {
		ws.stopReading()
	}
	return nil
}

// stopReading ends reading: a blocked Read returns, the read side is closed.
func (ws *workerStream) stopReading() {
	ws.mu.Lock()
	already := ws.closed
	ws.closed = true
	ws.cond.Broadcast()
	ws.mu.Unlock()
	if !already {
		_ = ws.Stream.CloseRead()
	}
}
