package netlab

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Link is a userspace Ethernet link between two TAP devices: every frame
// read from one end is written to the other after Delay, unless dropped
// (Loss). Shape changes both at any time; the zero shape forwards at once.
type Link struct {
	a, b   *os.File
	delay  atomic.Int64  // ns, each direction
	loss   atomic.Uint64 // per million frames
	wg     sync.WaitGroup
	closed atomic.Bool
}

// openTAP creates TAP device name and returns its file (non-blocking, so
// that Close unblocks a Read).
func openTAP(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	var req [unix.IFNAMSIZ + 64]byte
	copy(req[:], name)
	*(*uint16)(unsafe.Pointer(&req[unix.IFNAMSIZ])) = unix.IFF_TAP | unix.IFF_NO_PI
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req[0]))); e != 0 {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF %s: %w", name, e)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

// newLink creates TAP devices an and bn and pumps frames between them.
func newLink(an, bn string) (*Link, error) {
	a, err := openTAP(an)
	if err != nil {
		return nil, err
	}
	b, err := openTAP(bn)
	if err != nil {
		a.Close()
		return nil, err
	}
	l := &Link{a: a, b: b}
	l.wg.Add(2)
	go l.pump(a, b)
	go l.pump(b, a)
	return l, nil
}

// Shape sets the one-way delay and the loss ratio (0..1) of each direction.
func (l *Link) Shape(delay time.Duration, loss float64) {
	l.delay.Store(int64(delay))
	l.loss.Store(uint64(loss * 1e6))
}

type frame struct {
	due time.Time
	b   []byte
}

// pump carries frames from src to dst: a reader stamps each with its due
// time, a writer sends them in order when due (a constant delay keeps the
// order, as a wire does).
func (l *Link) pump(src, dst *os.File) {
	defer l.wg.Done()
	q := make(chan frame, 8192)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for f := range q {
			if d := time.Until(f.due); d > 0 {
				time.Sleep(d)
			}
			dst.Write(f.b)
		}
	}()
	buf := make([]byte, 65536)
	for {
		n, err := src.Read(buf)
		if err != nil {
			if l.closed.Load() || errors.Is(err, os.ErrClosed) {
				break
			}
			time.Sleep(10 * time.Millisecond) // a device not up yet
			continue
		}
		if loss := l.loss.Load(); loss > 0 && rand.Uint64N(1e6) < loss {
			continue
		}
		f := frame{due: time.Now().Add(time.Duration(l.delay.Load())), b: append([]byte(nil), buf[:n]...)}
		select {
		case q <- f:
		default: // a full queue drops, as a full router buffer does
		}
	}
	close(q)
	<-done
}

// Close stops the pumps and removes the devices.
func (l *Link) Close() error {
	l.closed.Store(true)
	err := errors.Join(l.a.Close(), l.b.Close())
	l.wg.Wait()
	return err
}
