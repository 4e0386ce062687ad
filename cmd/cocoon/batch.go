package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/cocoon-network/cocoon/runtime/openaiapi"
)

// Batch limits. An input line over batchMaxLine is refused (the gateway itself
// takes bodies up to openaiapi.MaxBodyBytes); an answer over batchMaxAnswer is a
// failure, not written.
const (
	batchMaxLine   = 1 << 20
	batchMaxAnswer = 16 << 20
	// batchMaxOutLine bounds one line of OUT when resuming: an answer plus the
	// envelope.
	batchMaxOutLine = batchMaxAnswer + batchMaxLine
)

// batchURLs are the endpoints a batch line may name.
var batchURLs = map[string]bool{"/v1/chat/completions": true, "/v1/completions": true}

// batchRequest is one validated line of a batch input file.
type batchRequest struct {
	Line     int             // 1-based line number in IN
	CustomID string          // unique in IN
	Method   string          // POST
	URL      string          // one of batchURLs
	Body     json.RawMessage // a JSON object, compact
	Model    string          // body.model
}

// batchLineError is a bad input line: its number, the field at fault and why.
type batchLineError struct {
	Line  int
	Field string // "" for the line as a whole
	Msg   string
}

func (e *batchLineError) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("line %d: %s", e.Line, e.Msg)
	}
	return fmt.Sprintf("line %d: %s: %s", e.Line, e.Field, e.Msg)
}

// decodeBatchLine decodes and checks one line of the OpenAI batch input format:
// {"custom_id", "method": "POST", "url": "/v1/chat/completions" or
// "/v1/completions", "body": {...}}, the body being a request the gateway
// would accept, not streaming. Errors are *batchLineError with Line 0.
func decodeBatchLine(line []byte) (batchRequest, error) {
	bad := func(field, format string, args ...any) (batchRequest, error) {
		return batchRequest{}, &batchLineError{Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	if len(line) > batchMaxLine {
		return bad("", "longer than %d bytes", batchMaxLine)
	}
	var raw map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(line))
	if err := dec.Decode(&raw); err != nil {
		return bad("", "not a JSON object: %v", err)
	}
	if dec.More() {
		return bad("", "more than one JSON value on the line")
	}
	if raw == nil {
		return bad("", "not a JSON object")
	}
	for k := range raw {
		switch k {
		case "custom_id", "method", "url", "body":
		default:
			return bad(k, "unknown field (a line has custom_id, method, url and body)")
		}
	}
	str := func(field string) (string, error) {
		v, ok := raw[field]
		if !ok || bytes.Equal(bytes.TrimSpace(v), []byte("null")) {
			return "", &batchLineError{Field: field, Msg: "missing"}
		}
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return "", &batchLineError{Field: field, Msg: "must be a string"}
		}
		return s, nil
	}
	var r batchRequest
	var err error
	if r.CustomID, err = str("custom_id"); err != nil {
		return batchRequest{}, err
	}
	if r.CustomID == "" {
		return bad("custom_id", "must not be empty")
	}
	if r.Method, err = str("method"); err != nil {
		return batchRequest{}, err
	}
	if r.Method != http.MethodPost {
		return bad("method", "%q is not supported; use \"POST\"", r.Method)
	}
	if r.URL, err = str("url"); err != nil {
		return batchRequest{}, err
	}
	if !batchURLs[r.URL] {
		return bad("url", "%q is not supported; use \"/v1/chat/completions\" or \"/v1/completions\"", r.URL)
	}
	body, ok := raw["body"]
	if !ok {
		return bad("body", "missing")
	}
	body = bytes.TrimSpace(body)
	if len(body) == 0 || body[0] != '{' {
		return bad("body", "must be a JSON object (the request the endpoint takes)")
	}
	var probe struct {
		Stream json.RawMessage `json:"stream"`
	}
	if json.Unmarshal(body, &probe) == nil && len(probe.Stream) > 0 &&
		!bytes.Equal(probe.Stream, []byte("false")) && !bytes.Equal(probe.Stream, []byte("null")) {
		return bad("body.stream", "streaming is not supported in a batch (each answer is written whole); remove \"stream\"")
	}
	var model string
	if r.URL == "/v1/chat/completions" {
		req, _, derr := openaiapi.DecodeChatRequest(bytes.NewReader(body))
		model, err = req.Model, derr
	} else {
		req, _, derr := openaiapi.DecodeCompletionRequest(bytes.NewReader(body))
		model, err = req.Model, derr
	}
	if err != nil {
		var ae *openaiapi.Error
		if errors.As(err, &ae) && ae.Param != "" {
			return bad("body."+ae.Param, "%s", ae.Message)
		}
		return bad("body", "%v", err)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, body); err != nil {
		return bad("body", "%v", err)
	}
	r.Body, r.Model = compact.Bytes(), model
	return r, nil
}

// marshal encodes r as a batch input line (without the newline), the body
// byte for byte (no HTML escaping).
func (r batchRequest) marshal() []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(struct {
		CustomID string          `json:"custom_id"`
		Method   string          `json:"method"`
		URL      string          `json:"url"`
		Body     json.RawMessage `json:"body"`
	}{r.CustomID, r.Method, r.URL, r.Body})
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}

// readBatchInput reads and checks every line of a batch input file; blank
// lines are skipped. The first bad line is returned as a *batchLineError
// naming its number and field; nothing is sent before the whole file passed.
func readBatchInput(r io.Reader) ([]batchRequest, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), batchMaxLine+1)
	var out []batchRequest
	seen := map[string]int{}
	n := 0
	for sc.Scan() {
		n++
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		req, err := decodeBatchLine(line)
		if err != nil {
			var le *batchLineError
			if errors.As(err, &le) {
				le.Line = n
			}
			return nil, err
		}
		if first, dup := seen[req.CustomID]; dup {
			return nil, &batchLineError{Line: n, Field: "custom_id", Msg: fmt.Sprintf("%q was already used on line %d; each request needs its own", req.CustomID, first)}
		}
		seen[req.CustomID] = n
		req.Line = n
		out = append(out, req)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, &batchLineError{Line: n + 1, Msg: fmt.Sprintf("longer than %d bytes", batchMaxLine)}
		}
		return nil, err
	}
	if len(out) == 0 {
		return nil, errors.New("no requests in the input (one JSON object per line: custom_id, method, url, body)")
	}
	return out, nil
}

// batchOutput is one line of the OpenAI batch output format. Response.Headers
// is cocoon's addition, ignored by OpenAI's clients.
type batchOutput struct {
	ID       string          `json:"id"`
	CustomID string          `json:"custom_id"`
	Response *batchResponse  `json:"response"`
	Error    json.RawMessage `json:"error"`
}

type batchResponse struct {
	StatusCode int               `json:"status_code"`
	RequestID  string            `json:"request_id"`
	Body       json.RawMessage   `json:"body"`
	Headers    map[string]string `json:"headers,omitempty"`
}

// resumeBatchOutput reads the finished custom_ids of an output file opened for
// reading and writing, positioned at its start. A last line without its newline
// (a write torn by a crash) is cut off: torn says how many bytes went. Any
// other line that is not a batch output line is an error: f is not the output
// of a batch.
func resumeBatchOutput(f *os.File) (done map[string]bool, torn int64, err error) {
	done = map[string]bool{}
	br := bufio.NewReaderSize(f, 64<<10)
	var off int64
	for n := 1; ; n++ {
		line, err := readLine(br, batchMaxOutLine)
		if errors.Is(err, io.EOF) && len(line) == 0 {
			return done, 0, nil
		}
		if errors.Is(err, io.EOF) { // no newline: torn by a crash
			if err := f.Truncate(off); err != nil {
				return nil, 0, fmt.Errorf("cut the torn last line of %s: %w", f.Name(), err)
			}
			if err := f.Sync(); err != nil {
				return nil, 0, fmt.Errorf("sync %s: %w", f.Name(), err)
			}
			return done, int64(len(line)), nil
		}
		if err != nil {
			return nil, 0, fmt.Errorf("read %s line %d: %w", f.Name(), n, err)
		}
		off += int64(len(line))
		var o struct {
			CustomID string          `json:"custom_id"`
			Response json.RawMessage `json:"response"`
		}
		if json.Unmarshal(line, &o) != nil || o.CustomID == "" || len(o.Response) == 0 {
			return nil, 0, fmt.Errorf("%s line %d is not a batch output line; is -o the right file? (give a new file or the output of an earlier run of this batch)", f.Name(), n)
		}
		done[o.CustomID] = true
	}
}

// readLine reads one line with its newline, refusing lines over max bytes.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > max {
			return nil, fmt.Errorf("line longer than %d bytes", max)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return line, err
	}
}

// batchRun is one run of `cocoon batch`.
type batchRun struct {
	api      *apiClient
	out      *os.File // O_APPEND; each line written whole, then fsynced
	reqs     []batchRequest
	total    int // lines in IN
	skipped  int
	parallel int
	timeout  time.Duration
	grace    time.Duration
	stderr   io.Writer
	tty      bool

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

func newID(prefix string) string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// send posts one request and writes its answer. A failure that leaves no
// answer (the node unreachable, the answer cut off, a cancel) writes no line
// and is counted in b.failed, so that a re-run retries the request.
func (b *batchRun) send(ctx context.Context, req batchRequest) {
	rctx, cancel := context.WithTimeout(ctx, b.timeout)
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
	hreq, err := http.NewRequestWithContext(rctx, http.MethodPost, b.api.base+req.URL, bytes.NewReader(req.Body))
	if err != nil {
		fail(err)
		return
	}
	hreq.Header.Set("Authorization", "Bearer "+b.api.token)
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := b.api.http.Do(hreq)
	if err != nil {
		fail(err)
		return
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, batchMaxAnswer+1))
	if err != nil {
		fail(fmt.Errorf("read the answer: %w", err))
		return
	}
	if len(body) > batchMaxAnswer {
		fail(fmt.Errorf("answer over %d bytes", batchMaxAnswer))
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
	o := batchOutput{ID: newID("batch_req_"), CustomID: req.CustomID, Error: json.RawMessage("null"),
		Response: &batchResponse{StatusCode: resp.StatusCode, Body: body}}
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
func (b *batchRun) giveUpAfter() int64 { return int64(max(5, 2*b.parallel)) }

func (b *batchRun) giveUp() { b.giveUpOnce.Do(func() { close(b.gaveUp) }) }

// write appends one whole line to the output and syncs it to disk, so that a
// kill loses at most the requests in flight.
func (b *batchRun) write(line []byte) error {
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

// workersFor asks the node how many workers offer each model and returns the
// largest such count over the models (a model this node serves itself counts
// as one): with more requests at once than a model has workers, the extra ones
// wait in the node for a free worker, which costs nothing, while fewer would
// leave workers idle. A model nobody offers is an error: its requests would all
// fail.
func workersFor(api *apiClient, models []string) (int, error) {
	list, err := api.models()
	if err != nil {
		return 0, err
	}
	count := map[string]int{}
	for _, m := range list {
		n := 0
		if w, ok := m.Extra["workers"].(float64); ok {
			n = int(w)
		}
		if local, _ := m.Extra["local"].(bool); local && n == 0 {
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

func init() {
	var (
		datadir, outPath string
		parallel         int
		timeout, grace   time.Duration
	)
	batch := &cobra.Command{
		Use:   "batch IN.jsonl -o OUT.jsonl",
		Short: "Run a file of OpenAI batch requests across the network's workers, resumably",
		Long: `Run a file of requests in the OpenAI Batch API input format through this node's
gateway, several at a time, and write the answers in the OpenAI batch output format.

Each line of IN is {"custom_id": "...", "method": "POST", "url": "/v1/chat/completions"
or "/v1/completions", "body": {...}}. The whole file is checked before anything is sent;
"stream" is refused (answers are written whole).

Each line of OUT is {"id": "batch_req_...", "custom_id": ..., "response": {"status_code",
"request_id", "body"}, "error": null}, in the order the answers arrive. An answer with an
error status is written with that status and body, as OpenAI does. cocoon adds
response.headers with x-cocoon-worker (the worker that answered) and x-cocoon-tee; the
cost is the body's usage.cost_nanoton. OpenAI's clients ignore both.

OUT is appended to: a re-run skips the custom_ids already in it, so an interrupted or
partly failed batch is finished by running the same command again. Requests that never
got an answer (node unreachable, connection cut) are not written and are retried then.

Lines of IN may be up to 1 MiB. By default as many requests run at once as there are
workers offering the model; the node's market runs one job per worker at a time and
prefers idle workers.

Ctrl-C (or SIGTERM) stops starting requests and waits up to --grace for those in
flight; a second one cancels them at once. After several requests in a row got no
answer the run stops too. Either way, run the same command again to finish.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if outPath == "" {
				return errors.New("batch: -o OUT.jsonl is required (the answers go there; an existing file is resumed)")
			}
			if parallel < 0 {
				return fmt.Errorf("batch: --parallel %d: must be at least 1 (0: one per worker)", parallel)
			}
			return runBatch(cmd, args[0], outPath, datadir, parallel, timeout, grace)
		},
	}
	f := batch.Flags()
	f.StringVarP(&outPath, "output", "o", "", "output file (OpenAI batch output format); an existing one is resumed")
	f.StringVar(&datadir, "datadir", defaultDatadir(), "node data directory (its gateway sends the requests)")
	f.IntVar(&parallel, "parallel", 0, "requests at once (0: the number of workers offering the model)")
	f.DurationVar(&timeout, "timeout", 10*time.Minute, "longest wait for one answer")
	f.DurationVar(&grace, "grace", 30*time.Second, "on Ctrl-C, how long requests in flight may finish")
	rootCmd.AddCommand(batch)
}

func runBatch(cmd *cobra.Command, inPath, outPath, datadir string, parallel int, timeout, grace time.Duration) error {
	stderr := cmd.ErrOrStderr()
	in, err := os.Open(inPath)
	if err != nil {
		return fmt.Errorf("batch: open the input: %w", err)
	}
	reqs, err := readBatchInput(in)
	in.Close()
	if err != nil {
		return fmt.Errorf("batch: %s %w; fix it and run again (nothing was sent)", inPath, err)
	}
	total := len(reqs)

	out, err := os.OpenFile(outPath, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("batch: open the output: %w", err)
	}
	defer out.Close()
	if err := syscall.Flock(int(out.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return fmt.Errorf("batch: %s is being written by another `cocoon batch`; wait for it or give another -o", outPath)
	}
	done, torn, err := resumeBatchOutput(out)
	if err != nil {
		return fmt.Errorf("batch: %w", err)
	}
	if torn > 0 {
		fmt.Fprintf(stderr, "warning: %s ended in a torn line (%d bytes, from an interrupted run); cut it off, its request runs again\n", outPath, torn)
	}
	var todo []batchRequest
	models := map[string]bool{}
	inIDs := map[string]bool{}
	for _, r := range reqs {
		inIDs[r.CustomID] = true
		if done[r.CustomID] {
			continue
		}
		todo = append(todo, r)
		models[r.Model] = true
	}
	foreign := 0
	for id := range done {
		if !inIDs[id] {
			foreign++
		}
	}
	if foreign > 0 {
		fmt.Fprintf(stderr, "warning: %s holds %d answers whose custom_id is not in %s (is it another batch's output?)\n", outPath, foreign, inPath)
	}
	skipped := total - len(todo)
	if len(todo) == 0 {
		fmt.Fprintf(cmd.OutOrStdout(), "batch: all %d requests already answered in %s; nothing to send\n", total, outPath)
		return nil
	}

	api, err := newAPIClient(datadir)
	if err != nil {
		return fmt.Errorf("batch: %w", err)
	}
	ids := make([]string, 0, len(models))
	for m := range models {
		ids = append(ids, m)
	}
	sort.Strings(ids)
	workers, err := workersFor(api, ids)
	if err != nil {
		return fmt.Errorf("batch: %w", err)
	}
	if parallel == 0 {
		parallel = workers
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = parallel
	api.http = &http.Client{Transport: tr}

	tty := false
	if f, ok := stderr.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	b := &batchRun{api: api, out: out, reqs: todo, total: total, skipped: skipped, parallel: parallel,
		timeout: timeout, grace: grace, stderr: stderr, tty: tty, gaveUp: make(chan struct{})}
	fmt.Fprintf(stderr, "batch: %d requests (%d already in %s), sending %d, %d at a time (%d workers offer %s)\n",
		total, skipped, outPath, len(todo), parallel, workers, strings.Join(ids, ", "))
	return b.run(cmd.OutOrStdout())
}

// run sends the requests, parallel at a time, until all are answered or a
// signal stops it, then prints the summary.
func (b *batchRun) run(stdout io.Writer) error {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	// stopping: take no new request; reqCtx: cancel those in flight.
	stopping := make(chan struct{})
	reqCtx, cancelReqs := context.WithCancel(context.Background())
	defer cancelReqs()
	var interrupted atomic.Bool
	finished := make(chan struct{})
	go func() {
		select {
		case <-sigs:
		case <-finished:
			return
		}
		interrupted.Store(true)
		close(stopping)
		if b.tty {
			fmt.Fprintln(b.stderr) // off the bar's line
		}
		fmt.Fprintf(b.stderr, "batch: stopping; waiting up to %s for the requests in flight (Ctrl-C again cancels them)\n", b.grace)
		select {
		case <-sigs:
		case <-time.After(b.grace):
		case <-finished:
			return
		}
		cancelReqs()
	}()

	start := time.Now()
	prog := newProgress(b.stderr, b.tty, len(b.reqs))
	queue := make(chan batchRequest)
	var wg sync.WaitGroup
	for range b.parallel {
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
	fmt.Fprintf(stdout, "batch: %d of %d done: %d answered now%s, %d skipped as already finished, %d failed; %d nanoTON spent; answered by %d workers; %.1f s, %.2f req/s\n",
		doneAll, b.total, written, errNote, b.skipped, failed, b.cost.Load(), nworkers, el.Seconds(), float64(written)/el.Seconds())
	if werr := b.writeError.Load(); werr != nil {
		return fmt.Errorf("batch: %w; free the disk or fix the file, then run the same command again", *werr)
	}
	if interrupted.Load() {
		if failed > 0 {
			fmt.Fprintf(b.stderr, "batch: %d requests got no answer (cancelled in flight, or failed); a worker may have been paid for the part it delivered; they run again next time\n", failed)
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
