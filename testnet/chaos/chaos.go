// Package chaos is cocoon's robustness harness: it runs a multi-process
// testnet (testnet.Launch: a dev ledger, workers serving one model, clients
// holding channels to every worker) under generated load while a fault
// schedule drawn from a seed kills, restarts and pauses its processes, and
// records every request; Check then reads that history the way etcd's
// robustness tests read theirs. It exists because faults were otherwise tested
// one at a time; here many jobs run while processes die, and the history must
// still show that every request ended cleanly in time and that the money adds
// up to the nanoTON. Its own tests use it (a short run in `make test`, a long
// one in `make chaos`, behind CHAOS_LONG=1); nothing in the binary imports it.
//
// A run:
//
//	Launch ─► load: Requests requests from Concurrency goroutines, each a chat
//	          (streamed or not, max_tokens ≤ MaxTokens) or an embeddings request,
//	          through a live client's gateway, each with its Deadline
//	        ─► faults, one at a time, when the k-th request starts:
//	          kill-worker   SIGKILL, down for a while, Restart in place (same datadir,
//	                        so the same peer ID, wallet and channel store)
//	          kill-client   the same for a client; its requests in flight end
//	          pause-worker  SIGSTOP, then SIGCONT (a hang, not a crash)
//	          kill-ledger   SIGKILL and Restart on the same address
//	        ─► Stop (SIGTERM: nodes flush their stores) ─► Check
//
// Replay: the seed fixes the schedule (which fault, on which process, at which
// request, for how long) and every request (kind, prompt, max_tokens, client);
// CHAOS_SEED=n replays a run. The interleaving with the processes' own timing
// is not fixed, so a replay repeats the schedule, not the exact history.
//
// Money. Payment is in arrears: a client signs cumulative vouchers for the
// tokens it received, and a final one after Done that adds the prompt. So:
//
//   - provable: a worker's balance on a channel is the amount of the newest
//     voucher in its channel store, signed by the channel's client key;
//   - paid: what a client's store says it signed on that channel. Per channel,
//     provable = paid: the worker can prove exactly the cost of what the client
//     received from it (a voucher lost to a kill is covered by the next
//     cumulative one on that channel);
//   - told: usage.cost_nanoton of every whole answer (all workers of a failed-
//     over answer together). A clean error carries no cost, yet the tokens that
//     arrived before it were paid for (a partial answer is paid, as a cancelled
//     one is): that is untold = Σ provable − Σ told. With every request answered
//     whole, untold is 0 to the nanoTON; otherwise 0 ≤ untold ≤ the most the
//     failed requests could have cost (UntoldBound).
package chaos

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cocoon-network/cocoon/testnet"
)

// Config is one run's size, load and fault mix. Zero fields take the defaults
// Run names.
type Config struct {
	Bin     string // the cocoon binary
	Dir     string // datadirs and logs
	Model   string // GGUF file the workers serve
	LibDir  string // llama.cpp libraries ("": $COCOON_LLAMA_LIB)
	Seed    uint64 // draws the schedule and the requests
	Workers int    // 0: 2
	Clients int    // 0: 2

	Requests    int           // 0: 100
	Concurrency int           // requests in flight at once; 0: 4
	MaxTokens   int           // each chat asks for 1..MaxTokens; 0: 16
	Deadline    time.Duration // per request; 0: 120 s (above the market's 60 s first-chunk deadline)

	// The faults drawn, spread over the run (one at a time, in order).
	WorkerKills  int // SIGKILL + restart of a worker, each time a different one while any is left
	ClientKills  int
	WorkerPauses int // SIGSTOP, Pause, SIGCONT
	LedgerKills  int
	Down         time.Duration // how long a killed process stays down; 0: 2 s
	Pause        time.Duration // how long a paused worker stays paused; 0: 5 s

	Logf func(format string, args ...any) // progress; nil: discarded
}

func (c *Config) defaults() {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.Workers, 2)
	def(&c.Clients, 2)
	def(&c.Requests, 100)
	def(&c.Concurrency, 4)
	def(&c.MaxTokens, 16)
	if c.Deadline == 0 {
		c.Deadline = 120 * time.Second
	}
	if c.Down == 0 {
		c.Down = 2 * time.Second
	}
	if c.Pause == 0 {
		c.Pause = 5 * time.Second
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
}

// FaultKind is what a fault does to its target.
type FaultKind string

const (
	KillWorker  FaultKind = "kill-worker"
	KillClient  FaultKind = "kill-client"
	PauseWorker FaultKind = "pause-worker"
	KillLedger  FaultKind = "kill-ledger"
)

// Fault is one entry of a schedule: Kind on Target when request At starts.
type Fault struct {
	At     int // the fault fires when request At (0-based) is issued
	Kind   FaultKind
	Target string        // process name (node2, ledger)
	For    time.Duration // down or paused this long
	// Filled by the run:
	Fired, Healed time.Time
	Err           error // the fault could not be injected or healed
}

func (f Fault) String() string {
	return fmt.Sprintf("@%d %s %s for %s", f.At, f.Kind, f.Target, f.For)
}

// Kind is a request's shape.
type Kind string

const (
	Chat       Kind = "chat"
	ChatStream Kind = "chat-stream"
	Embeddings Kind = "embeddings"
)

// Request is one request of the load, drawn from the seed.
type Request struct {
	ID        int
	Kind      Kind
	Prompt    string
	MaxTokens int // chat only
	Client    int // index among the clients; the next live one if it is down
}

// prompts are short so that prompt costs stay small and answers fast.
var prompts = []string{
	"Once upon a time", "Tell me a story", "The cat sat on the mat", "Lily went to the park",
	"Tom had a red ball", "One day a little bird", "The sun was hot", "A dog named Max",
}

// Plan is a run's schedule and requests, a pure function of the Config's seed
// and sizes: Replay by passing the same Config.
type Plan struct {
	Seed     uint64
	Faults   []Fault
	Requests []Request
}

// NewPlan draws the plan of cfg (defaults applied). Node names follow
// testnet.Launch: node0..node{Clients-1} are clients, the rest workers.
func NewPlan(cfg Config) Plan {
	cfg.defaults()
	rng := rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x6368616f73)) // "chaos"
	p := Plan{Seed: cfg.Seed}
	for i := range cfg.Requests {
		r := Request{ID: i, Prompt: prompts[rng.IntN(len(prompts))], Client: rng.IntN(cfg.Clients)}
		switch x := rng.IntN(10); {
		case x < 4:
			r.Kind = Chat
		case x < 8:
			r.Kind = ChatStream
		default:
			r.Kind = Embeddings
		}
		if r.Kind != Embeddings {
			r.MaxTokens = 1 + rng.IntN(cfg.MaxTokens)
		}
		p.Requests = append(p.Requests, r)
	}
	worker := func(i int) string { return fmt.Sprintf("node%d", cfg.Clients+i) }
	var kinds []FaultKind
	for range cfg.WorkerKills {
		kinds = append(kinds, KillWorker)
	}
	for range cfg.ClientKills {
		kinds = append(kinds, KillClient)
	}
	for range cfg.WorkerPauses {
		kinds = append(kinds, PauseWorker)
	}
	for range cfg.LedgerKills {
		kinds = append(kinds, KillLedger)
	}
	rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	// Distinct workers are killed while any is left unkilled, so that "30% of
	// the workers killed" means 30% of them, not one killed thrice.
	killOrder := rng.Perm(cfg.Workers)
	kills := 0
	n := len(kinds)
	for i, k := range kinds {
		// Fault i fires in the i-th of n equal slices of the run, past its
		// first tenth (the load is up) and before its last tenth (requests
		// remain after the last heal, so every channel is used again).
		lo := cfg.Requests/10 + i*(cfg.Requests*8/10)/n
		span := max(1, (cfg.Requests*8/10)/n/2)
		f := Fault{At: lo + rng.IntN(span), Kind: k}
		switch k {
		case KillWorker:
			f.Target, f.For = worker(killOrder[kills%cfg.Workers]), cfg.Down
			kills++
		case PauseWorker:
			f.Target, f.For = worker(rng.IntN(cfg.Workers)), cfg.Pause
		case KillClient:
			f.Target, f.For = fmt.Sprintf("node%d", rng.IntN(cfg.Clients)), cfg.Down
		case KillLedger:
			f.Target, f.For = "ledger", cfg.Down
		}
		p.Faults = append(p.Faults, f)
	}
	return p
}

// Outcome is how a request ended, as the harness saw it.
type Outcome string

const (
	OK      Outcome = "ok"      // a whole answer, with its usage and cost
	Error   Outcome = "error"   // a clean OpenAI error: a JSON error body with its status, or a stream's error event
	Aborted Outcome = "aborted" // the client node it went through was killed under it (no one left to answer)
	Hang    Outcome = "hang"    // no end within Deadline + grace: the harness gave up
	Bad     Outcome = "bad"     // anything else: a broken answer, a bare connection error, a malformed body
)

// Record is one request of the history.
type Record struct {
	Request
	Via        string // the client node it went through
	Start, End time.Time
	Deadline   time.Time
	Outcome    Outcome
	Status     int    // HTTP status
	ErrType    string // the OpenAI error's type and code, for Error
	ErrCode    string
	Detail     string // the error message, or what was wrong (Bad)
	Worker     string // X-Cocoon-Worker
	Prompt     int    // usage.prompt_tokens
	Completion int    // usage.completion_tokens
	Cost       *uint64
}

// Late reports whether the request ended after its deadline.
func (r Record) Late() bool { return r.End.After(r.Deadline) }

// History is what a run recorded.
type History struct {
	Plan     Plan
	Config   Config
	Records  []Record
	Faults   []Fault            // as fired, with their times and errors
	Logs     []string           // every process's log file
	Attempts map[string]float64 // clients' cocoon_jobs_total{side="client"} by outcome, summed over restarts
	Start    time.Time
	Wall     time.Duration
	Cluster  *testnet.Cluster // stopped
}

// HistoryFile in Config.Dir holds the records of a run, as JSON.
const HistoryFile = "history.json"

// Run launches the testnet, runs the plan of cfg against it, stops it and
// returns the history (nil only when the testnet could not start).
func Run(ctx context.Context, cfg Config) (*History, error) {
	cfg.defaults()
	plan := NewPlan(cfg)
	cfg.Logf("chaos: seed %d (replay with CHAOS_SEED=%d): %d requests, %d workers, %d clients; faults %v",
		cfg.Seed, cfg.Seed, cfg.Requests, cfg.Workers, cfg.Clients, plan.Faults)
	c, err := testnet.Launch(ctx, testnet.LaunchConfig{
		Bin: cfg.Bin, Dir: cfg.Dir, Nodes: cfg.Clients + cfg.Workers, Workers: cfg.Workers,
		Model: cfg.Model, LibDir: cfg.LibDir, ReadyWait: 2 * time.Minute,
	})
	if err != nil {
		return nil, fmt.Errorf("chaos: launch the testnet: %w", err)
	}
	r := &runner{cfg: cfg, c: c, h: &History{Plan: plan, Config: cfg, Cluster: c, Attempts: map[string]float64{}},
		http: &http.Client{}}
	for i := range cfg.Clients {
		r.clients = append(r.clients, &clientView{p: c.Nodes[i]})
		r.clients[i].url, r.clients[i].token = c.Nodes[i].URL, c.Nodes[i].Token
	}
	r.h.Start = time.Now()
	r.run(ctx, plan)
	r.h.Wall = time.Since(r.h.Start)
	if b, err := json.MarshalIndent(r.h.Records, "", " "); err == nil {
		os.WriteFile(filepath.Join(cfg.Dir, HistoryFile), b, 0o644)
	}
	for _, cv := range r.clients {
		r.scrape(ctx, cv)
	}
	for _, p := range append([]*testnet.Proc{c.Ledger}, c.Nodes...) {
		r.h.Logs = append(r.h.Logs, p.Log)
	}
	if err := c.Stop(); err != nil {
		cfg.Logf("chaos: stop: %v", err)
	}
	return r.h, nil
}

// clientView is the harness's view of one client node: where its gateway is
// now, whether it is down, and how many times it was killed (epoch), so that a
// request that lost its connection knows whether a kill explains it.
type clientView struct {
	p     *testnet.Proc
	mu    sync.Mutex
	url   string
	token string
	down  bool
	epoch int
}

func (cv *clientView) get() (url, token string, down bool, epoch int) {
	cv.mu.Lock()
	defer cv.mu.Unlock()
	return cv.url, cv.token, cv.down, cv.epoch
}

type runner struct {
	cfg     Config
	c       *testnet.Cluster
	h       *History
	http    *http.Client
	clients []*clientView

	mu     sync.Mutex // guards issued and h.Attempts
	issued int
	tick   chan struct{} // a request was issued
	healed chan struct{} // a fault healed (or the schedule ended)
}

func (r *runner) run(ctx context.Context, plan Plan) {
	r.tick = make(chan struct{}, 1)
	r.healed = make(chan struct{}, len(plan.Faults)+1)
	records := make([]Record, len(plan.Requests))
	next := make(chan Request)
	var wg sync.WaitGroup
	for range r.cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for q := range next {
				records[q.ID] = r.do(ctx, q)
			}
		}()
	}
	faultsDone := make(chan struct{})
	go func() {
		defer close(faultsDone)
		r.faults(ctx, plan.Faults)
	}()
	// The load does not outrun a fault: it goes on through the fault for
	// 2×Concurrency requests, then waits until the fault has healed, so
	// that requests also run on the restored process after it.
	pending := plan.Faults
	for _, q := range plan.Requests {
		if len(pending) > 0 && q.ID >= pending[0].At+2*r.cfg.Concurrency {
			select {
			case <-r.healed:
			case <-faultsDone:
			}
			pending = pending[1:]
		}
		next <- q
		r.mu.Lock()
		r.issued = q.ID + 1
		r.mu.Unlock()
		select {
		case r.tick <- struct{}{}:
		default:
		}
	}
	close(next)
	wg.Wait()
	<-faultsDone
	r.h.Records = records
}

// faults injects the schedule in order, each when its request has been issued,
// healing each (restart, SIGCONT) before the next.
func (r *runner) faults(ctx context.Context, fs []Fault) {
	for _, f := range fs {
		for {
			r.mu.Lock()
			n := r.issued
			r.mu.Unlock()
			if n > f.At || n >= len(r.h.Plan.Requests) {
				break
			}
			select {
			case <-r.tick:
			case <-time.After(100 * time.Millisecond):
			case <-ctx.Done():
				return
			}
		}
		f.Fired = time.Now()
		f.Err = r.inject(ctx, f)
		f.Healed = time.Now()
		r.cfg.Logf("chaos: %s: healed after %s (err %v)", f, f.Healed.Sub(f.Fired).Round(time.Millisecond), f.Err)
		r.h.Faults = append(r.h.Faults, f)
		r.healed <- struct{}{}
	}
}

func (r *runner) proc(name string) *testnet.Proc {
	if name == "ledger" {
		return r.c.Ledger
	}
	for _, p := range r.c.Nodes {
		if p.Name == name {
			return p
		}
	}
	return nil
}

func (r *runner) inject(ctx context.Context, f Fault) error {
	p := r.proc(f.Target)
	if p == nil {
		return fmt.Errorf("no process %s", f.Target)
	}
	if f.Kind == KillWorker || f.Kind == PauseWorker {
		r.busy(ctx, p)
	}
	switch f.Kind {
	case PauseWorker:
		if err := r.c.Signal(p, syscall.SIGSTOP); err != nil {
			return err
		}
		time.Sleep(f.For)
		return r.c.Signal(p, syscall.SIGCONT)
	case KillClient:
		var cv *clientView
		for _, v := range r.clients {
			if v.p == p {
				cv = v
			}
		}
		r.scrape(ctx, cv) // its counters restart with it
		cv.mu.Lock()
		cv.down = true
		cv.epoch++
		cv.mu.Unlock()
		if err := r.c.Kill(p); err != nil {
			return err
		}
		time.Sleep(f.For)
		err := r.c.Restart(ctx, p)
		cv.mu.Lock()
		cv.url, cv.token, cv.down = p.URL, p.Token, err != nil
		cv.mu.Unlock()
		return err
	default: // KillWorker, KillLedger
		if err := r.c.Kill(p); err != nil {
			return err
		}
		time.Sleep(f.For)
		return r.c.Restart(ctx, p)
	}
}

// busy waits (up to 5 s) until worker p has a job in flight, as its /metrics
// say, so that a kill or a pause lands mid-job and failover is exercised.
func (r *runner) busy(ctx context.Context, p *testnet.Proc) {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		m, err := r.metrics(ctx, p.URL, p.Token)
		if err == nil && m[`cocoon_jobs_in_flight{side="worker"}`] >= 1 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.cfg.Logf("chaos: %s had no job in flight within 5 s; the fault fires anyway", p.Name)
}

// via picks the client node for q: its own, or the next one that is up.
func (r *runner) via(q Request) (*clientView, string, string, int) {
	for i := range r.clients {
		cv := r.clients[(q.Client+i)%len(r.clients)]
		if url, token, down, epoch := cv.get(); !down {
			return cv, url, token, epoch
		}
	}
	cv := r.clients[q.Client]
	url, token, _, epoch := cv.get()
	return cv, url, token, epoch
}

// grace is how long past its deadline the harness waits for a request before
// calling it a hang (an answer late by less is recorded, and Late).
const grace = 30 * time.Second

// do sends one request and records how it ended.
func (r *runner) do(ctx context.Context, q Request) (rec Record) {
	cv, url, token, epoch := r.via(q)
	rec = Record{Request: q, Via: cv.p.Name, Start: time.Now()}
	rec.Deadline = rec.Start.Add(r.cfg.Deadline)
	rctx, cancel := context.WithDeadline(ctx, rec.Deadline.Add(grace))
	defer cancel()
	defer func() { rec.End = time.Now() }()
	var body any
	path := "/v1/chat/completions"
	switch q.Kind {
	case Embeddings:
		path = "/v1/embeddings"
		body = map[string]any{"model": modelID(r.cfg.Model), "input": []string{q.Prompt, q.Prompt + "."}}
	default:
		m := map[string]any{"model": modelID(r.cfg.Model), "messages": []map[string]string{{"role": "user", "content": q.Prompt}},
			"max_tokens": q.MaxTokens, "temperature": 0}
		if q.Kind == ChatStream {
			m["stream"], m["stream_options"] = true, map[string]bool{"include_usage": true}
		}
		body = m
	}
	b, _ := json.Marshal(body)
	req, _ := http.NewRequestWithContext(rctx, http.MethodPost, url+path, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.http.Do(req)
	if err != nil {
		r.transport(&rec, cv, epoch, rctx, err)
		return rec
	}
	defer resp.Body.Close()
	rec.Status, rec.Worker = resp.StatusCode, resp.Header.Get("X-Cocoon-Worker")
	if resp.StatusCode != http.StatusOK {
		raw, err := io.ReadAll(resp.Body)
		if err != nil {
			r.transport(&rec, cv, epoch, rctx, err)
			return rec
		}
		r.errorBody(&rec, raw)
		return rec
	}
	if q.Kind == ChatStream {
		r.stream(&rec, resp.Body, cv, epoch, rctx)
		return rec
	}
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		r.transport(&rec, cv, epoch, rctx, err)
		return rec
	}
	if q.Kind == Embeddings {
		var e struct {
			Data []struct {
				Embedding json.RawMessage `json:"embedding"`
			} `json:"data"`
			Usage struct {
				PromptTokens int     `json:"prompt_tokens"`
				CostNanoTON  *uint64 `json:"cost_nanoton"`
			} `json:"usage"`
		}
		if err := json.Unmarshal(raw, &e); err != nil || len(e.Data) != 2 || len(e.Data[0].Embedding) < 3 || e.Usage.CostNanoTON == nil {
			rec.Outcome, rec.Detail = Bad, fmt.Sprintf("embeddings answer %.200q (%v)", raw, err)
			return rec
		}
		rec.Outcome, rec.Prompt, rec.Cost = OK, e.Usage.PromptTokens, e.Usage.CostNanoTON
		return rec
	}
	var cc struct {
		Choices []struct {
			Message struct {
				Content *string `json:"content"`
			} `json:"message"`
			FinishReason string `json:"finish_reason"`
		} `json:"choices"`
		Usage *usage `json:"usage"`
	}
	if err := json.Unmarshal(raw, &cc); err != nil || len(cc.Choices) != 1 || cc.Choices[0].Message.Content == nil ||
		cc.Choices[0].FinishReason == "" || cc.Usage == nil || cc.Usage.CostNanoTON == nil {
		rec.Outcome, rec.Detail = Bad, fmt.Sprintf("chat answer %.600q (%v)", raw, err)
		return rec
	}
	rec.Outcome, rec.Prompt, rec.Completion, rec.Cost = OK, cc.Usage.PromptTokens, cc.Usage.CompletionTokens, cc.Usage.CostNanoTON
	return rec
}

type usage struct {
	PromptTokens     int     `json:"prompt_tokens"`
	CompletionTokens int     `json:"completion_tokens"`
	CostNanoTON      *uint64 `json:"cost_nanoton"`
}

// stream reads an SSE answer: chunks, the finish chunk, the usage chunk and
// [DONE] make a whole answer; an error event ends it cleanly (Error).
func (r *runner) stream(rec *Record, body io.Reader, cv *clientView, epoch int, rctx context.Context) {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var finished, done bool
	var u *usage
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if line == "[DONE]" {
			done = true
			break
		}
		var ev struct {
			Choices []struct {
				FinishReason *string `json:"finish_reason"`
			} `json:"choices"`
			Usage *usage          `json:"usage"`
			Error json.RawMessage `json:"error"`
		}
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			rec.Outcome, rec.Detail = Bad, fmt.Sprintf("stream event %.200q: %v", line, err)
			return
		}
		if ev.Error != nil {
			r.errorBody(rec, []byte(line))
			return
		}
		for _, c := range ev.Choices {
			if c.FinishReason != nil && *c.FinishReason != "" {
				finished = true
			}
		}
		if ev.Usage != nil {
			u = ev.Usage
		}
	}
	if err := sc.Err(); err != nil || !done {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		r.transport(rec, cv, epoch, rctx, err)
		return
	}
	if !finished || u == nil || u.CostNanoTON == nil {
		rec.Outcome, rec.Detail = Bad, fmt.Sprintf("stream ended with [DONE] but finish %v, usage %+v", finished, u)
		return
	}
	rec.Outcome, rec.Prompt, rec.Completion, rec.Cost = OK, u.PromptTokens, u.CompletionTokens, u.CostNanoTON
}

// errorBody classifies a non-200 body or a stream's error event: an OpenAI
// error object with a message and a type is clean.
func (r *runner) errorBody(rec *Record, raw []byte) {
	var e struct {
		Error *struct {
			Message string  `json:"message"`
			Type    string  `json:"type"`
			Code    *string `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal(raw, &e); err != nil || e.Error == nil || e.Error.Message == "" || e.Error.Type == "" {
		rec.Outcome, rec.Detail = Bad, fmt.Sprintf("status %d with a body that is no OpenAI error: %.200q", rec.Status, raw)
		return
	}
	rec.Outcome, rec.ErrType, rec.Detail = Error, e.Error.Type, e.Error.Message
	if e.Error.Code != nil {
		rec.ErrCode = *e.Error.Code
	}
}

// transport classifies a connection that failed or ended early: a hang when
// the harness's own deadline cut it, aborted when its client node was killed
// since the request started, bad otherwise.
func (r *runner) transport(rec *Record, cv *clientView, epoch int, rctx context.Context, err error) {
	rec.Detail = err.Error()
	_, _, down, now := cv.get()
	switch {
	case errors.Is(rctx.Err(), context.DeadlineExceeded):
		rec.Outcome = Hang
	case down || now != epoch:
		rec.Outcome = Aborted
	default:
		rec.Outcome = Bad
	}
}

// scrape adds a client's cocoon_jobs_total{side="client"} counters to the
// history's Attempts (called before the client is killed and at the end).
func (r *runner) scrape(ctx context.Context, cv *clientView) {
	url, token, down, _ := cv.get()
	if down {
		return
	}
	m, err := r.metrics(ctx, url, token)
	if err != nil {
		r.cfg.Logf("chaos: scrape %s: %v", cv.p.Name, err)
		return
	}
	for name, v := range m {
		rest, ok := strings.CutPrefix(name, `cocoon_jobs_total{`)
		if !ok || !strings.Contains(rest, `side="client"`) {
			continue
		}
		_, outcome, ok := strings.Cut(rest, `outcome="`)
		if ok {
			outcome, _, _ = strings.Cut(outcome, `"`)
			r.mu.Lock()
			r.h.Attempts[outcome] += v
			r.mu.Unlock()
		}
	}
}

// metrics reads a node's /metrics: each sample line's name and labels → value.
func (r *runner) metrics(ctx context.Context, url, token string) (map[string]float64, error) {
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(sctx, http.MethodGet, url+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := r.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		i := strings.LastIndexByte(line, ' ')
		if strings.HasPrefix(line, "#") || i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m, sc.Err()
}

// modelID is the id a testnet serves its model under: the file's name.
func modelID(model string) string { return strings.TrimSuffix(filepath.Base(model), ".gguf") }

// SeedFromEnv is $CHAOS_SEED when set (a replay), else a fresh seed.
func SeedFromEnv() (uint64, error) {
	if s := os.Getenv("CHAOS_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("CHAOS_SEED=%q: %w", s, err)
		}
		return n, nil
	}
	return rand.Uint64() % 1_000_000_000, nil
}

// sorted returns xs sorted (a copy).
func sorted(xs []time.Duration) []time.Duration {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s
}
