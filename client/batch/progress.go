package batch

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
)

// progress shows done/total, rate and ETA on stderr: a bar on a terminal,
// plain lines (every tenth of the work, and every 30 s) otherwise.
type progress struct {
	bar     *progressbar.ProgressBar // nil when stderr is no terminal
	w       io.Writer
	total   int
	start   time.Time
	mu      sync.Mutex
	done    int
	shown   int // done at the last plain line
	shownAt time.Time
}

func newProgress(w io.Writer, tty bool, total int) *progress {
	p := &progress{w: w, total: total, start: time.Now(), shownAt: time.Now()}
	if tty {
		p.bar = progressbar.NewOptions(total,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription("batch"),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("req"),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionSetElapsedTime(true),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionSetRenderBlankState(true),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }),
		)
	}
	return p
}

func (p *progress) add() {
	if p.bar != nil {
		_ = p.bar.Add(1)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done++
	step := max(1, p.total/10)
	if p.done-p.shown >= step || p.done == p.total || time.Since(p.shownAt) >= 30*time.Second {
		p.line()
	}
}

// line prints a plain progress line; p.mu is held.
func (p *progress) line() {
	el := time.Since(p.start)
	rate := float64(p.done) / el.Seconds()
	eta := "?"
	if rate > 0 {
		eta = (time.Duration(float64(p.total-p.done)/rate) * time.Second).Round(time.Second).String()
	}
	fmt.Fprintf(p.w, "batch: %d/%d done, %.1f req/s, ETA %s\n", p.done, p.total, rate, eta)
	p.shown, p.shownAt = p.done, time.Now()
}

// stop ends the bar's line so that what follows starts on a fresh one.
func (p *progress) stop() {
	if p.bar != nil && !p.bar.IsFinished() {
		_ = p.bar.Exit()
		fmt.Fprintln(p.w)
	}
}
