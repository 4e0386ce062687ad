package chaos

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/cocoon-network/cocoon/market"
	"github.com/cocoon-network/cocoon/node"
	"github.com/cocoon-network/cocoon/settle"
	"github.com/cocoon-network/cocoon/testnet"
)

// Report is what Check found in a history: the figures and every violation.
type Report struct {
	Seed       uint64
	Requests   int
	ByOutcome  map[Outcome]int
	Late       int     // ended after their deadline (any outcome)
	Completion float64 // OK / (requests − aborted by a client kill)
	P50, P99   time.Duration
	Max        time.Duration
	Wall       time.Duration
	// Failovers are the clients' job attempts that did not end ok
	// (cocoon_jobs_total{side="client"} by outcome, summed over restarts).
	Failovers  map[string]float64
	AttemptsOK float64 // the clients' attempts that ended ok
	Faults     []Fault

	Told, Provable, Paid uint64 // Σ cost_nanoton of whole answers; Σ workers' provable balances; Σ clients' signed
	Untold, UntoldBound  uint64
	// Unpaid is what whole answers' usage costs beyond their cost_nanoton:
	// tokens a failed worker delivered before a voucher covered them (its
	// credit window), which the answer kept and nobody paid for.
	Unpaid        uint64
	UnpaidAnswers int
	PerWorker     map[string]WorkerBooks

	Violations []string
}

// WorkerBooks is one worker's money: what it can prove, what its clients say
// they signed to it, and the cost of the whole answers its header named
// (failed-over answers name their first worker, so this differs from the
// others by what failover moved).
type WorkerBooks struct {
	Provable, Paid, Told uint64
}

// OK reports whether the run held every property.
func (r *Report) OK() bool { return len(r.Violations) == 0 }

func (r *Report) fail(format string, args ...any) {
	r.Violations = append(r.Violations, fmt.Sprintf(format, args...))
}

// String is the report as one block of figures and violations.
func (r *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d: %d requests in %s: %v; completion %.2f%%; late %d; latency p50 %s p99 %s max %s\n",
		r.Seed, r.Requests, r.Wall.Round(time.Millisecond), r.ByOutcome, 100*r.Completion, r.Late,
		r.P50.Round(time.Millisecond), r.P99.Round(time.Millisecond), r.Max.Round(time.Millisecond))
	fmt.Fprintf(&b, "client job attempts: %.0f ok; failed over or refused: %v\n", r.AttemptsOK, r.Failovers)
	for _, f := range r.Faults {
		fmt.Fprintf(&b, "fault %s: healed in %s (err %v)\n", f, f.Healed.Sub(f.Fired).Round(time.Millisecond), f.Err)
	}
	fmt.Fprintf(&b, "money: told %d, provable %d, paid %d nanoTON; untold %d (bound %d); delivered unpaid %d in %d answers\n",
		r.Told, r.Provable, r.Paid, r.Untold, r.UntoldBound, r.Unpaid, r.UnpaidAnswers)
	for w, wb := range r.PerWorker {
		fmt.Fprintf(&b, "  %s: provable %d, paid %d, told %d\n", w, wb.Provable, wb.Paid, wb.Told)
	}
	for _, v := range r.Violations {
		fmt.Fprintf(&b, "VIOLATION: %s\n", v)
	}
	return b.String()
}

// Check reads a finished run's history, logs and channel stores (the testnet
// must be stopped: a running node holds its store) against the properties:
//
//   - every request ended: a whole answer (OK) or a clean OpenAI error, or
//     Aborted by a kill of its client node; none Hang, none Bad, none Late;
//   - at least minCompletion of the requests not aborted were OK;
//   - no log holds a panic, a fatal error or a race report;
//   - every whole answer's cost_nanoton is its usage at the price;
//   - money: per channel, the worker's provable balance (newest voucher,
//     signature checked) = what the client signed; Σ provable ≥ Σ told, with
//     equality when every request was OK, else untold ≤ UntoldBound.
func Check(h *History, price market.Price, minCompletion float64) *Report {
	r := &Report{Seed: h.Plan.Seed, Requests: len(h.Records), ByOutcome: map[Outcome]int{},
		Wall: h.Wall, Failovers: map[string]float64{}, Faults: h.Faults, PerWorker: map[string]WorkerBooks{}}
	for o, v := range h.Attempts {
		if o != string(market.OutcomeOK) {
			r.Failovers[o] = v
		} else {
			r.AttemptsOK = v
		}
	}
	var lat []time.Duration
	var maxPrompt int
	for _, rec := range h.Records {
		r.ByOutcome[rec.Outcome]++
		if rec.Late() {
			r.Late++
			r.fail("request %d (%s via %s) ended %s after its deadline: %s %s", rec.ID, rec.Kind, rec.Via, rec.End.Sub(rec.Deadline).Round(time.Millisecond), rec.Outcome, rec.Detail)
		}
		switch rec.Outcome {
		case Hang, Bad:
			r.fail("request %d (%s via %s, started %s into the run): %s: %s", rec.ID, rec.Kind, rec.Via, rec.Start.Sub(h.Start).Round(time.Millisecond), rec.Outcome, rec.Detail)
		case OK:
			lat = append(lat, rec.End.Sub(rec.Start))
			r.Told += *rec.Cost
			maxPrompt = max(maxPrompt, rec.Prompt)
			// A whole answer costs its usage at the price, less the tokens
			// a worker delivered and was not paid for: it failed (killed,
			// or abandoned as stalled) before the voucher covering them.
			want, err := market.Cost(price, uint64(rec.Prompt), uint64(rec.Completion))
			switch {
			case err != nil || *rec.Cost > want:
				r.fail("request %d: cost_nanoton %d; %d prompt and %d completion tokens at the price cost %d", rec.ID, *rec.Cost, rec.Prompt, rec.Completion, want)
			case *rec.Cost < want:
				r.Unpaid += want - *rec.Cost
				r.UnpaidAnswers++
			}
			if rec.Kind != Embeddings && (rec.Completion < 1 || rec.Completion > rec.MaxTokens) {
				r.fail("request %d: %d completion tokens for max_tokens %d", rec.ID, rec.Completion, rec.MaxTokens)
			}
			wb := r.PerWorker[rec.Worker]
			wb.Told += *rec.Cost
			r.PerWorker[rec.Worker] = wb
		}
	}
	if n := r.Requests - r.ByOutcome[Aborted]; n > 0 {
		r.Completion = float64(r.ByOutcome[OK]) / float64(n)
	}
	if r.Completion < minCompletion {
		r.fail("%.2f%% of the requests not aborted by a client kill completed; want ≥ %.2f%%", 100*r.Completion, 100*minCompletion)
	}
	if len(lat) > 0 {
		s := sorted(lat)
		r.P50, r.P99, r.Max = s[len(s)/2], s[min(len(s)-1, len(s)*99/100)], s[len(s)-1]
	}
	for _, f := range h.Faults {
		if f.Err != nil {
			r.fail("fault %s: %v", f, f.Err)
		}
	}
	for _, log := range h.Logs {
		for _, p := range Panics(log) {
			r.fail("%s: %s", log, p)
		}
	}
	r.books(h.Cluster)
	// The most one request that did not end whole may have been charged:
	// every attempt (at most 3) billed its prompt, the completion at most
	// max_tokens across them (continuations add only what is missing).
	for _, rec := range h.Records {
		if rec.Outcome == OK {
			continue
		}
		b, _ := market.Cost(price, uint64(3*(maxPrompt+rec.MaxTokens)), uint64(rec.MaxTokens))
		r.UntoldBound += b
	}
	switch {
	case r.Provable < r.Told:
		r.fail("money: the workers can prove %d nanoTON, the clients were told %d", r.Provable, r.Told)
	case r.ByOutcome[OK] == r.Requests && r.Provable != r.Told:
		r.fail("money: every request answered whole, told %d nanoTON, yet the workers can prove %d", r.Told, r.Provable)
	default:
		r.Untold = r.Provable - r.Told
		if r.Untold > r.UntoldBound {
			r.fail("money: %d nanoTON paid beyond what the whole answers cost, more than the %d the failed requests could have cost", r.Untold, r.UntoldBound)
		}
	}
	if r.Provable != r.Paid {
		r.fail("money: the workers can prove %d nanoTON, the clients signed %d", r.Provable, r.Paid)
	}
	return r
}

// books reads every node's channel store: a worker's provable balances (the
// newest voucher of each channel, its signature checked against the client's
// key) and what each client signed, per channel, and checks them pairwise.
func (r *Report) books(c *testnet.Cluster) {
	provable := map[settle.ChannelID]uint64{}
	paid := map[settle.ChannelID]uint64{}
	owner := map[settle.ChannelID]string{}
	for _, p := range c.Nodes {
		recs, err := storeRecords(p)
		if err != nil {
			r.fail("books of %s: %v", p.Name, err)
			continue
		}
		wb := r.PerWorker[p.PeerID]
		for _, rec := range recs {
			id := rec.Channel.ID
			if p.Role == "client" {
				paid[id] = rec.Sent
				r.Paid += rec.Sent
				continue
			}
			owner[id] = p.PeerID
			if rec.Voucher == nil {
				continue
			}
			v, err := settle.DecodeVoucher(rec.Voucher)
			switch {
			case err != nil:
				r.fail("books of %s: channel %s: %v", p.Name, id, err)
			case v.State.ChannelID != id || !v.Verify(rec.Channel.ClientKey):
				r.fail("books of %s: channel %s: the stored voucher is not the client's signature on this channel", p.Name, id)
			case v.State.Data.Sent != rec.Sent || rec.Sent > rec.Deposit:
				r.fail("books of %s: channel %s: voucher for %d, record %d, deposit %d", p.Name, id, v.State.Data.Sent, rec.Sent, rec.Deposit)
			default:
				provable[id] = rec.Sent
				r.Provable += rec.Sent
				wb.Provable += rec.Sent
			}
		}
		if p.Role == "worker" {
			r.PerWorker[p.PeerID] = wb
		}
	}
	for id, sent := range paid {
		if provable[id] != sent {
			r.fail("money: channel %s to %s: the client signed %d nanoTON, the worker can prove %d", id, owner[id], sent, provable[id])
		}
		if w, ok := owner[id]; ok {
			wb := r.PerWorker[w]
			wb.Paid += sent
			r.PerWorker[w] = wb
		}
	}
}

// storeRecords opens a stopped node's channel store, as `cocoon channel list`
// does, and returns its records of the node's role.
func storeRecords(p *testnet.Proc) ([]settle.Record, error) {
	cfg, err := node.Load(p.Datadir)
	if err != nil {
		return nil, err
	}
	w, err := settle.LoadWallet(cfg.WalletPath())
	if err != nil {
		return nil, err
	}
	st, err := settle.OpenStore(cfg.StorePath(), nil)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	if p.Role == "client" {
		return st.Payer(w).Channels()
	}
	return st.Payee(w).Channels()
}

// trace is the first line of a goroutine dump, as the Go runtime prints it.
var trace = regexp.MustCompile(`^goroutine \d+ \[`)

// Panics returns the lines of a log that show a crash: a panic, a fatal
// error, a goroutine trace or a race report.
func Panics(log string) []string {
	f, err := os.Open(log)
	if err != nil {
		return []string{err.Error()}
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "panic:") || strings.HasPrefix(line, "fatal error:") || trace.MatchString(line) ||
			strings.Contains(line, "WARNING: DATA RACE") {
			out = append(out, line)
			if len(out) >= 5 {
				break
			}
		}
	}
	return out
}
