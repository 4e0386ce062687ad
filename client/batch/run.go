package batch

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/cocoon-network/cocoon/client/local"
	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

// Config is one run of a batch.
type Config struct {
	In  string // the input file (OpenAI batch input format)
	Out string // the output file; an existing one is resumed
	// Datadir is the node whose gateway sends the requests; it is looked up
	// only once the input has passed and something is left to send.
	Datadir string
	// Parallel is how many requests run at once; 0: the most workers that
	// offer any model the requests name.
	Parallel int
	Timeout  time.Duration // longest wait for one answer
	// Grace is how long requests in flight may finish after the first
	// interrupt.
	Grace  time.Duration
	Stdout io.Writer // the summary
	Stderr io.Writer // warnings and progress: a bar when it is a terminal
}

// Batch is a batch ready to send: its input checked, its output opened,
// locked and resumed. Run sends it; Close releases the output.
type Batch struct {
	cfg     Config
	api     *local.Client // nil when nothing is left to send
	out     *os.File      // O_APPEND; each line written whole, then fsynced
	reqs    []request     // those left to send
	total   int           // lines in IN
	skipped int
	tty     bool

	mu         sync.Mutex // serializes writes to out
	written    atomic.Int64
	errStatus  atomic.Int64
	failed     atomic.Int64
	cost       atomic.Uint64
	firstFail  atomic.Pointer[string]
	lastFail   atomic.Pointer[string]
	inARow     atomic.Int64 // requests without an answer since the last answer
	gaveUp     chan struct{}
	giveUpOnce sync.Once
	workers    sync.Map // worker peer ID → struct{}
	writeError atomic.Pointer[error]
}

// Open checks the whole input (a bad line is an error naming its number and
// field, and nothing is sent), opens and locks the output (another run on the
// same output is refused), reads the custom_ids it already holds, and asks
// the node which workers offer the models still to be sent. A model nobody
// offers is an error: its requests would all fail.
func Open(ctx context.Context, cfg Config) (_ *Batch, err error) {
	in, err := os.Open(cfg.In)
	if err != nil {
		return nil, fmt.Errorf("batch: open the input: %w", err)
	}
	reqs, err := readInput(in)
	in.Close()
	if err != nil {
		return nil, fmt.Errorf("batch: %s %w; fix it and run again (nothing was sent)", cfg.In, err)
	}
	total := len(reqs)

	out, err := os.OpenFile(cfg.Out, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("batch: open the output: %w", err)
	}
	defer func() {
		if err != nil {
			out.Close()
		}
	}()
	b := &Batch{cfg: cfg, out: out, total: total, gaveUp: make(chan struct{})}
	if err := syscall.Flock(int(out.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return nil, fmt.Errorf("batch: %s is being written by another `cocoon batch`; wait for it or give another -o", cfg.Out)
	}
	done, torn, err := resumeOutput(out)
	if err != nil {
		return nil, fmt.Errorf("batch: %w", err)
	}
	stderr := cfg.Stderr
	if torn > 0 {
		fmt.Fprintf(stderr, "warning: %s ended in a torn line (%d bytes, from an interrupted run); cut it off, its request runs again\n", cfg.Out, torn)
	}
	models := map[string]bool{}
	inIDs := map[string]bool{}
	for _, r := range reqs {
		inIDs[r.CustomID] = true
		if done[r.CustomID] {
			continue
		}
		b.reqs = append(b.reqs, r)
		models[r.Model] = true
	}
	foreign := 0
	for id := range done {
		if !inIDs[id] {
			foreign++
		}
	}
	if foreign > 0 {
		fmt.Fprintf(stderr, "warning: %s holds %d answers whose custom_id is not in %s (is it another batch's output?)\n", cfg.Out, foreign, cfg.In)
	}
	b.skipped = total - len(b.reqs)
	if len(b.reqs) == 0 {
		return b, nil
	}

	if b.api, err = local.FromDatadir(cfg.Datadir); err != nil {
		return nil, fmt.Errorf("batch: %w", err)
	}
	ids := make([]string, 0, len(models))
	for m := range models {
		ids = append(ids, m)
	}
	sort.Strings(ids)
	mctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	workers, err := workersFor(mctx, b.api, ids)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("batch: %w", err)
	}
	if b.cfg.Parallel == 0 {
		b.cfg.Parallel = workers
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = b.cfg.Parallel
	b.api.HTTP = &http.Client{Transport: tr}

	if f, ok := stderr.(*os.File); ok {
		b.tty = term.IsTerminal(int(f.Fd()))
	}
	fmt.Fprintf(stderr, "batch: %d requests (%d already in %s), sending %d, %d at a time (%d workers offer %s)\n",
		total, b.skipped, cfg.Out, len(b.reqs), b.cfg.Parallel, workers, strings.Join(ids, ", "))
	return b, nil
}

// Close releases the output file.
func (b *Batch) Close() error { return b.out.Close() }

// workersFor asks the node how many workers offer each model and returns the
// largest such count over the models (a model this node serves itself counts
// as one): with more requests at once than a model has workers, the extra ones
// wait in the node for a free worker, which costs nothing, while fewer would
// leave workers idle. A model nobody offers is an error: its requests would all
// fail.
func workersFor(ctx context.Context, api *local.Client, models []string) (int, error) {
	list, err := api.Models(ctx)
	if err != nil {
		return 0, err
	}
	count := map[string]int{}
	for _, m := range list {
		n := local.Workers(m)
		if own, _ := m.Extra["local"].(bool); own && n == 0 {
			n = 1
		}
		count[m.ID] = n
	}
	most := 1
	for _, id := range models {
		n := count[id]
		if n == 0 {
			return 0, fmt.Errorf("no worker offers model %q yet (`cocoon models` lists what is on offer; workers' ads arrive within 10 s of their start)", id)
		}
		most = max(most, n)
	}
	return most, nil
}

func newID(prefix string) string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// Run sends the requests left, Parallel at a time, until all are answered or
// an interrupt stops it, then prints the summary on Stdout. The first value on
// interrupts stops it starting requests and gives those in flight up to Grace;
// a second one cancels them at once. After several requests in a row got no
// answer it stops too. Either way its error says to run the batch again.
func (b *Batch) Run(ctx context.Context, interrupts <-chan os.Signal) error {
	if len(b.reqs) == 0 {
		fmt.Fprintf(b.cfg.Stdout, "batch: all %d requests already answered in %s; nothing to send\n", b.total, b.cfg.Out)
		return nil
	}
	stderr := b.cfg.Stderr
	// stopping: take no new request; reqCtx: cancel those in flight.
	stopping := make(chan struct{})
	reqCtx, cancelReqs := context.WithCancel(ctx)
	defer cancelReqs()
	var interrupted atomic.Bool
	finished := make(chan struct{})
	go func() {
		select {
		case <-interrupts:
		case <-finished:
			return
		}
		interrupted.Store(true)
		close(stopping)
		if b.tty {
			fmt.Fprintln(stderr) // off the bar's line
		}
		fmt.Fprintf(stderr, "batch: stopping; waiting up to %s for the requests in flight (Ctrl-C again cancels them)\n", b.cfg.Grace)
		select {
		case <-interrupts:
		case <-time.After(b.cfg.Grace):
		case <-finished:
			return
		}
		cancelReqs()
	}()

	start := time.Now()
	prog := newProgress(stderr, b.tty, len(b.reqs))
	queue := make(chan request)
	var wg sync.WaitGroup
	for range b.cfg.Parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range queue {
				b.send(reqCtx, r)
				prog.add()
				if b.writeError.Load() != nil {
					cancelReqs() // the disk failed: stop at once
				}
			}
		}()
	}
feed:
	for _, r := range b.reqs {
		select {
		case queue <- r:
		case <-stopping:
			break feed
		case <-b.gaveUp:
			break feed
		case <-reqCtx.Done():
			break feed
		}
	}
	close(queue)
	wg.Wait()
	close(finished)
	prog.stop()
	el := time.Since(start)

	written, failed := int(b.written.Load()), int(b.failed.Load())
	nworkers := 0
	b.workers.Range(func(any, any) bool { nworkers++; return true })
	doneAll := b.skipped + written
	errNote := ""
	if n := b.errStatus.Load(); n > 0 {
		errNote = fmt.Sprintf(" (%d with an error status)", n)
	}
	fmt.Fprintf(b.cfg.Stdout, "batch: %d of %d done: %d answered now%s, %d skipped as already finished, %d failed; %d nanoTON spent; answered by %d workers; %.1f s, %.2f req/s\n",
		doneAll, b.total, written, errNote, b.skipped, failed, b.cost.Load(), nworkers, el.Seconds(), float64(written)/el.Seconds())
	if werr := b.writeError.Load(); werr != nil {
		return fmt.Errorf("batch: %w; free the disk or fix the file, then run the same command again", *werr)
	}
	if interrupted.Load() {
		if failed > 0 {
			fmt.Fprintf(stderr, "batch: %d requests got no answer (cancelled in flight, or failed); a worker may have been paid for the part it delivered; they run again next time\n", failed)
		}
		return fmt.Errorf("interrupted: %d of %d done; run the same command again to finish the rest", doneAll, b.total)
	}
	select {
	case <-b.gaveUp:
		return fmt.Errorf("batch: stopped after %d requests in a row got no answer (last: %s); check the node (`cocoon status`) and run the same command again to finish the rest",
			b.giveUpAfter(), *b.lastFail.Load())
	default:
	}
	if failed > 0 {
		return fmt.Errorf("batch: %d requests got no answer (first: %s); check the node (`cocoon status`) and run the same command again to retry them", failed, *b.firstFail.Load())
	}
	return nil
}

// send posts one request and writes its answer. A failure that leaves no
// answer (the node unreachable, the answer cut off, a cancel) writes no line
// and is counted in b.failed, so that a re-run retries the request.
func (b *Batch) send(ctx context.Context, req request) {
	rctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	fail := func(err error) {
		b.failed.Add(1)
		msg := fmt.Sprintf("%s (line %d): %v", req.CustomID, req.Line, err)
		b.firstFail.CompareAndSwap(nil, &msg)
		b.lastFail.Store(&msg)
		if b.inARow.Add(1) >= b.giveUpAfter() {
			b.giveUp()
		}
	}
	resp, err := b.api.Do(rctx, http.MethodPost, req.URL, bytes.NewReader(req.Body))
	if err != nil {
		fail(err)
		return
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		fail(fmt.Errorf("read the answer: %w", err))
		return
	}
	if len(body) > maxAnswer {
		fail(fmt.Errorf("answer over %d bytes", maxAnswer))
		return
	}
	body = bytes.TrimSpace(body)
	var obj map[string]json.RawMessage
	if json.Unmarshal(body, &obj) != nil || obj == nil {
		if resp.StatusCode/100 == 2 {
			fail(fmt.Errorf("the node answered %s with a body that is not a JSON object", resp.Status))
			return
		}
		// An error page from something other than the gateway: keep its text
		// in OpenAI's error shape.
		body, _ = json.Marshal(openaiapi.ErrorResponse{Error: openaiapi.ErrorBody{Message: string(body), Type: "server_error"}})
	}
	o := outputLine{ID: newID("batch_req_"), CustomID: req.CustomID, Error: json.RawMessage("null"),
		Response: &response{StatusCode: resp.StatusCode, Body: body}}
	o.Response.RequestID = resp.Header.Get("X-Request-Id")
	if o.Response.RequestID == "" {
		var id string
		if json.Unmarshal(obj["id"], &id) == nil && id != "" {
			o.Response.RequestID = id
		} else {
			o.Response.RequestID = newID("req_")
		}
	}
	var cost uint64
	var u struct {
		Usage *struct {
			CostNanoTON *uint64 `json:"cost_nanoton"`
		} `json:"usage"`
	}
	if json.Unmarshal(body, &u) == nil && u.Usage != nil && u.Usage.CostNanoTON != nil {
		cost = *u.Usage.CostNanoTON
	}
	h := map[string]string{}
	if w := resp.Header.Get("X-Cocoon-Worker"); w != "" {
		h["x-cocoon-worker"] = w
		b.workers.Store(w, struct{}{})
	}
	if t := resp.Header.Get("X-Cocoon-TEE"); t != "" {
		h["x-cocoon-tee"] = t
	}
	if len(h) > 0 {
		o.Response.Headers = h
	}
	var line bytes.Buffer // the answer as it came, not HTML-escaped
	enc := json.NewEncoder(&line)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(o); err != nil {
		fail(fmt.Errorf("encode the output line: %w", err))
		return
	}
	if err := b.write(line.Bytes()); err != nil {
		b.writeError.CompareAndSwap(nil, &err)
		fail(err)
		return
	}
	b.written.Add(1)
	b.inARow.Store(0)
	b.cost.Add(cost)
	if resp.StatusCode/100 != 2 {
		b.errStatus.Add(1)
	}
}

// giveUpAfter is how many requests in a row may get no answer before the run
// stops starting new ones: the node is most likely down, and every further
// request would fail the same way.
func (b *Batch) giveUpAfter() int64 { return int64(max(5, 2*b.cfg.Parallel)) }

func (b *Batch) giveUp() { b.giveUpOnce.Do(func() { close(b.gaveUp) }) }

// write appends one whole line to the output and syncs it to disk, so that a
// kill loses at most the requests in flight.
func (b *Batch) write(line []byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, err := b.out.Write(line); err != nil {
		return fmt.Errorf("write %s: %w", b.out.Name(), err)
	}
	if err := b.out.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", b.out.Name(), err)
	}
	return nil
}
