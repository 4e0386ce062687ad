package settle

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Crash safety of the lanes under concurrency (issue 12), in the manner of
// crash_test.go: the test binary re-executes itself as a child
// (TestLaneCrashChild, switched on by COCOON_SETTLE_LANE_CRASH) that runs one
// side of a channel with several concurrent jobs on a bbolt store, and is
// killed with SIGKILL inside the commit's transaction (":signed"), after its
// fsync (":committed") or at a random time; the parent plays the other side
// with a real lane and restarts the child on the same file after each kill.
//
// Client killed (TestLaneCrashClient): the child's jobs pay their totals on
// one PayerLane. For each payment it writes "pay" (the caller asks), then,
// when the voucher has left for the worker, "sent", then "told" (the caller
// learnt it was paid); the parent accepts every sent voucher on its
// PayeeLane for its job. A restarted child first Syncs from the parent's
// newest state, as a worker's Accept hands it. Checked: the file holds a
// state of the one lineage the parent saw; after Sync the child continues
// from the newer of the file's and the worker's state; no voucher it signs
// afterwards is refused (none stale, none unpaid); and the money the client
// signed beyond what its callers were told grows at each kill by at most the
// last increment of each job in flight then (the bound in lane.go).
//
// Worker killed (TestLaneCrashWorker): the parent's jobs pay on its
// PayerLane and send the vouchers to the child's PayeeLane, which writes
// what each job was given and, when it rises, what is durable. Checked: the
// recovered state is one the client signed, no higher than what it signed,
// and covers at least what the child reported durable (each incarnation
// adds at least the durable totals of its jobs); after a restart the
// client's vouchers are accepted and at the end the provable balance is
// the client's channel total.

// laneCrashIters is the number of kills per test: 45 (a third at each
// point), 15 with -short, or COCOON_SETTLE_CRASH_ITERS.
func laneCrashIters() int {
	if n, err := strconv.Atoi(os.Getenv("COCOON_SETTLE_CRASH_ITERS")); err == nil && n > 0 {
		return n
	}
	if testing.Short() {
		return 15
	}
	return 45
}

const (
	laneCrashJobs = 6  // concurrent jobs per incarnation
	laneCrashPays = 30 // payments per job per incarnation
)

// laneArmed turns the child's kill points on once it has said READY: the
// commit of what its start-up changed (a Sync that adopted the worker's
// state) is flushed before, so a kill never lands before the parent has heard
// the child's starting state (under load the commit loop could reach the
// point first, and the child died silent).
var laneArmed atomic.Bool

// TestLaneCrashChild is the child process; it does nothing in a normal run.
func TestLaneCrashChild(t *testing.T) {
	role := os.Getenv("COCOON_SETTLE_LANE_CRASH")
	if role == "" {
		return // only the lane crash tests run it, as a child process
	}
	if kill := os.Getenv("COCOON_SETTLE_KILLAT"); kill != "" {
		point, nth, _ := strings.Cut(kill, "#")
		n, _ := strconv.Atoi(nth)
		var mu sync.Mutex
		seen := 0
		crashHook = func(p string) {
			if p != point || !laneArmed.Load() {
				return
			}
			mu.Lock()
			seen++
			now := seen == n
			mu.Unlock()
			if now {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {} // never reached
			}
		}
	}
	var out sync.Mutex
	say := func(f string, a ...any) { // one write per line: lines of concurrent jobs never mix
		b := fmt.Appendf(nil, f+"\n", a...)
		out.Lock()
		os.Stdout.Write(b)
		out.Unlock()
	}
	// Errors only: the restarted client's Sync warning is the expected case here.
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	st, err := OpenStore(os.Getenv("COCOON_SETTLE_DB"), log)
	if err != nil {
		say("ERR %v", err)
		os.Exit(2)
	}
	if err := st.Check(); err != nil {
		say("ERR corrupt: %v", err)
		os.Exit(2)
	}
	final := os.Getenv("COCOON_SETTLE_FINAL") != ""
	switch role {
	case "payer":
		lanePayerChild(st, say, final)
	case "payee":
		lanePayeeChild(st, say)
	}
	os.Exit(0)
}

// lanePayerChild runs laneCrashJobs jobs on the client's lane after
// Syncing from the worker's state in COCOON_SETTLE_STATE.
func lanePayerChild(st *Store, say func(string, ...any), final bool) {
	payer := st.Payer(NewWallet(crashClientKey))
	if err := payer.AddChannel(crashChannel, crashDeposit); err != nil {
		say("ERR %v", err)
		os.Exit(2)
	}
	file, _ := payer.Latest(crashChannel.ID)
	l, err := payer.Lane(crashChannel.ID)
	if err != nil {
		say("ERR %v", err)
		os.Exit(2)
	}
	state, _ := hex.DecodeString(os.Getenv("COCOON_SETTLE_STATE"))
	if err := l.Sync(state); err != nil {
		say("ERR sync: %v", err)
		os.Exit(2)
	}
	r := l.Record()
	if err := payer.Flush(); err != nil {
		say("ERR flush: %v", err)
		os.Exit(2)
	}
	laneArmed.Store(true)
	say("READY %d %d %d %d", file.Seqno, file.Sent, r.Seqno, r.Sent)
	run, _ := strconv.Atoi(os.Getenv("COCOON_SETTLE_RUN"))
	var wg sync.WaitGroup
	for i := range laneCrashJobs {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(run), uint64(i)))
			job := [16]byte{0xcc, byte(run >> 8), byte(run), byte(i)}
			var total uint64
			for range laneCrashPays {
				total += 1 + rng.Uint64N(100_000)
				say("pay %x %d", job, total)
				v, err := l.Pay(job, total)
				if err != nil {
					say("ERR pay: %v", err)
					return
				}
				seq, sent := voucherState(v)
				lanePause(rng) // the voucher on its way
				say("sent %d %d %x %x %d", seq, sent, v, job, total)
				lanePause(rng) // the answer on its way to the caller
				say("told %x %d", job, total)
			}
			l.End(job)
		})
	}
	wg.Wait()
	if final {
		if err := payer.Flush(); err != nil {
			say("ERR %v", err)
			os.Exit(2)
		}
		r := l.Record()
		say("DONE %d %d", r.Seqno, r.Sent)
		return
	}
	say("IDLE")
	io.Copy(io.Discard, os.Stdin) // until killed
}

// lanePayeeChild accepts the parent's vouchers on the worker's lane, each
// job on its own goroutine, until "flush".
func lanePayeeChild(st *Store, say func(string, ...any)) {
	payee := st.Payee(NewWallet(crashWorkerKey))
	if err := payee.AddChannel(crashChannel, crashDeposit); err != nil {
		say("ERR %v", err)
		os.Exit(2)
	}
	r, _ := payee.Latest(crashChannel.ID)
	l, err := payee.Lane(crashChannel.ID)
	if err != nil {
		say("ERR %v", err)
		os.Exit(2)
	}
	laneArmed.Store(true) // nothing to flush: the payee changed nothing yet
	say("READY %d %d %x", r.Seqno, r.Sent, l.State())
	type pay struct {
		v     []byte
		total uint64
	}
	jobs := map[string]chan pay{}
	opened := map[string]*PayeeJob{}
	var wg sync.WaitGroup
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) == 1 && f[0] == "flush" {
			for _, c := range jobs {
				close(c)
			}
			wg.Wait()
			if err := payee.Flush(); err != nil {
				say("ERR %v", err)
				os.Exit(2)
			}
			for id, j := range opened { // now, not when the watchers get to it
				d, _ := j.Durable()
				say("durable %s %d", id, d)
			}
			r, _ := payee.Latest(crashChannel.ID)
			say("DONE %d %d", r.Seqno, r.Sent)
			return
		}
		if len(f) != 4 || f[0] != "pay" {
			say("ERR line %q", in.Text())
			continue
		}
		total, _ := strconv.ParseUint(f[2], 10, 64)
		v, _ := hex.DecodeString(f[3])
		c, ok := jobs[f[1]]
		if !ok {
			var id [16]byte
			hex.Decode(id[:], []byte(f[1]))
			j, err := l.Open(id)
			if err != nil {
				say("ERR open %s: %v", f[1], err)
				continue
			}
			c = make(chan pay, 2*laneCrashPays)
			jobs[f[1]], opened[f[1]] = c, j
			go func() { // reports each rise of the job's durable total
				var last uint64
				for {
					d, rose := j.Durable()
					if d > last {
						say("durable %s %d", f[1], d)
						last = d
					}
					<-rose
				}
			}()
			wg.Go(func() {
				for p := range c {
					given, err := j.Accept(p.v, p.total, p.total)
					if err != nil {
						say("ERR accept %s %d: %v", f[1], p.total, err)
						continue
					}
					seq, _ := voucherState(p.v)
					say("acc %s %d %d %d", f[1], seq, p.total, given)
				}
			})
		}
		c <- pay{v: v, total: total}
	}
}

// voucherState is the seqno and amount of a voucher a lane signed.
func voucherState(b []byte) (seq, sent uint64) {
	v, _ := DecodeVoucher(b)
	return v.State.Data.Seqno, v.State.Data.Sent
}

// lanePause is half the time nothing, else up to 400 µs: a message on the network.
func lanePause(rng *rand.Rand) {
	if rng.IntN(2) == 0 {
		time.Sleep(time.Duration(rng.IntN(400)) * time.Microsecond)
	}
}

// startLaneChild starts the child in role on db, to be killed at killAt,
// and returns it with the fields of its READY line.
func startLaneChild(t *testing.T, role, db, killAt string, env ...string) (*crashChild, []string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestLaneCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), "COCOON_SETTLE_LANE_CRASH="+role, "COCOON_SETTLE_DB="+db, "COCOON_SETTLE_KILLAT="+killAt)
	cmd.Env = append(cmd.Env, env...)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &crashChild{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	line, ok := c.read()
	f := strings.Fields(line)
	if !ok || len(f) == 0 || f[0] != "READY" {
		c.kill()
		t.Fatalf("child %s did not start: %q", role, line)
	}
	return c, f[1:]
}

// killedAt names the kill before run.
func killedAt(points []string, run int) string {
	if run == 0 {
		return "(none: first run)"
	}
	return points[run-1]
}

func parseU(t *testing.T, s string) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Fatalf("child wrote %q for a number", s)
	}
	return n
}

// The client dies while its jobs pay; the parent is an honest worker.
func TestLaneCrashClient(t *testing.T) {
	db := filepath.Join(t.TempDir(), "client.db")
	wst := openLaneStore(t, filepath.Join(t.TempDir(), "worker.db"))
	payee := wst.Payee(NewWallet(crashWorkerKey))
	lane := payeeLane(t, wst, crashDeposit)
	rng := rand.New(rand.NewPCG(12, 13))
	points := crashKillPoints("pay", laneCrashIters(), rng)

	var cur *crashChild // killed if the test stops early
	defer func() {
		if cur != nil {
			cur.kill()
		}
	}()
	seen := map[uint64]uint64{} // seqno → amount of every voucher received
	var (
		told       uint64 // Σ over all jobs of the totals their callers were told
		given      uint64 // Σ over all jobs of what the worker's lane gave them
		over       uint64 // what the client signed beyond told, at the last restart
		lastBound  uint64 // Σ over the jobs in flight at the last kill of their last increment
		bound      uint64 // Σ of lastBound over all kills
		vouchers   int
		adopted    int // restarts where the worker's state was newer than the file's
		ahead      int // restarts where the file's state was newer than the worker's
		overSigned int // kills after which the client had signed more than it told
	)
	for run := 0; run <= len(points); run++ {
		final := run == len(points)
		point, killAt := "final", ""
		if !final {
			point = points[run]
			if point != "timer" {
				killAt = point
			}
		}
		env := []string{"COCOON_SETTLE_RUN=" + strconv.Itoa(run), "COCOON_SETTLE_STATE=" + hex.EncodeToString(lane.State())}
		if final {
			env = append(env, "COCOON_SETTLE_FINAL=1")
		}
		c, ready := startLaneChild(t, "payer", db, killAt, env...)
		cur = c
		if len(ready) != 4 {
			t.Fatalf("READY %v", ready)
		}
		fseq, fsent, seq, sent := parseU(t, ready[0]), parseU(t, ready[1]), parseU(t, ready[2]), parseU(t, ready[3])
		// The file holds a state of the lineage the worker saw; the child
		// goes on from the newer of the file's and the worker's.
		wr, _ := lane.Record()
		if a, ok := seen[fseq]; ok && a != fsent {
			t.Fatalf("run %d: the client's file holds seqno %d sending %d; the worker received %d for it", run, fseq, fsent, a)
		}
		switch {
		case fseq > wr.Seqno && fsent >= wr.Sent && seq == fseq && sent == fsent:
			ahead++
		case fseq < wr.Seqno && fsent <= wr.Sent && seq == wr.Seqno && sent == wr.Sent:
			adopted++
		case fseq == wr.Seqno && fsent == wr.Sent && seq == fseq && sent == fsent:
		default:
			t.Fatalf("run %d: client's file (%d, %d), worker (%d, %d): the client went on from (%d, %d)", run, fseq, fsent, wr.Seqno, wr.Sent, seq, sent)
		}
		// The over-signing bound: what the client signed beyond what its
		// callers were told grew by at most one increment per job in
		// flight at the kill.
		if sent < told+over || sent-told-over > lastBound {
			t.Fatalf("after the kill at %s: the client signed %d, its callers were told %d; beyond told %d before the kill, bound %d",
				killedAt(points, run), sent, told, over, lastBound)
		}
		if sent-told > over {
			overSigned++
		}
		over = sent - told

		var timer *time.Timer
		if point == "timer" {
			timer = time.AfterFunc(time.Duration(rng.IntN(8000))*time.Microsecond, func() { c.cmd.Process.Signal(syscall.SIGKILL) })
		}
		asked := map[string]uint64{}  // job → the total its caller last asked for
		sentTo := map[string]uint64{} // job → the total of its last voucher received
		toldTo := map[string]uint64{} // job → the total its caller was last told
		jobs := map[string]*PayeeJob{}
		done := false
	read:
		for {
			line, ok := c.read()
			if !ok {
				break
			}
			f := strings.Fields(line)
			switch {
			case len(f) == 3 && f[0] == "pay":
				asked[f[1]] = parseU(t, f[2])
			case len(f) == 6 && f[0] == "sent":
				vseq, vsent, job, total := parseU(t, f[1]), parseU(t, f[2]), f[4], parseU(t, f[5])
				v, err := hex.DecodeString(f[3])
				if err != nil {
					t.Fatalf("child: %q", line)
				}
				if s, a := voucherState(v); s != vseq || a != vsent || total != asked[job] {
					t.Fatalf("run %d: voucher (%d, %d) for job %s's %d sent as (%d, %d) for %d", run, s, a, job, asked[job], vseq, vsent, total)
				}
				if a, ok := seen[vseq]; ok && a != vsent {
					t.Fatalf("run %d: the client signed seqno %d twice, sending %d and %d", run, vseq, a, vsent)
				}
				seen[vseq] = vsent
				j := jobs[job]
				if j == nil {
					var id [16]byte
					hex.Decode(id[:], []byte(job))
					if j, err = lane.Open(id); err != nil {
						t.Fatal(err)
					}
					jobs[job] = j
				}
				n, err := j.Accept(v, total, total)
				if err != nil {
					t.Fatalf("run %d (after the kill at %s): the worker refused voucher (%d, %d) for job %s's %d: %v", run, killedAt(points, run), vseq, vsent, job, total, err)
				}
				if n != total-sentTo[job] {
					t.Fatalf("run %d: job %s given %d for %d after %d", run, job, n, total, sentTo[job])
				}
				given += n
				sentTo[job] = total
				vouchers++
			case len(f) == 3 && f[0] == "told":
				total := parseU(t, f[2])
				if total != sentTo[f[1]] {
					t.Fatalf("run %d: job %s's caller told %d; its last voucher said %d", run, f[1], total, sentTo[f[1]])
				}
				told += total - toldTo[f[1]]
				toldTo[f[1]] = total
			case len(f) == 1 && f[0] == "IDLE":
				break read // every job ran to its end: kill it now
			case len(f) == 3 && f[0] == "DONE" && final:
				done = true
				seq, sent = parseU(t, f[1]), parseU(t, f[2])
			default:
				t.Fatalf("run %d: child: %q", run, line)
			}
		}
		if timer != nil {
			timer.Stop()
		}
		c.kill()
		lastBound = 0
		for job, a := range asked {
			lastBound += a - toldTo[job]
			if j := jobs[job]; j != nil {
				j.Close()
			}
		}
		bound += lastBound
		if final {
			if !done {
				t.Fatal("the last run did not finish")
			}
			// Everything was sent and told: the worker holds the client's
			// total, and what no job was given is what was signed beyond told.
			if err := payee.Flush(); err != nil {
				t.Fatal(err)
			}
			bal, _ := payee.Balance(crashChannel.ID)
			r, pool := lane.Record()
			if bal != sent || r.Seqno != seq || sent-told != over || over > bound || given+pool != bal || pool > over {
				t.Fatalf("end: client (%d, %d), worker (%d, %d), provable %d; told %d, beyond told %d (bound %d); given %d, pool %d",
					seq, sent, r.Seqno, r.Sent, bal, told, over, bound, given, pool)
			}
		}
	}
	if adopted == 0 {
		t.Fatalf("no restart found the worker's state newer than the client's file (%d ahead): the Sync path was not exercised", ahead)
	}
	t.Logf("%d kills, %d vouchers: %d restarts continued from the worker's state, %d from a file ahead of it; %d kills left money signed beyond what callers were told: %d nanoTON in all, bound %d",
		len(points), vouchers, adopted, ahead, overSigned, over, bound)
}

// laneRun is what a worker child wrote during its life.
type laneRun struct {
	mu      sync.Mutex
	durable map[string]uint64 // job → its last durable total the child reported
	total   map[string]uint64 // job → its last total the child accepted
	maxAcc  uint64            // the highest seqno the child accepted
	errs    []string
	done    []string // the DONE line's fields
}

// The worker dies while accepting; the parent is an honest client with
// concurrent jobs.
func TestLaneCrashWorker(t *testing.T) {
	db := filepath.Join(t.TempDir(), "worker.db")
	cst := openLaneStore(t, filepath.Join(t.TempDir(), "client.db"))
	pl := payerLane(t, cst, crashDeposit)
	rng := rand.New(rand.NewPCG(14, 15))
	points := crashKillPoints("accept", laneCrashIters(), rng)

	var cur *crashChild // killed if the test stops early
	defer func() {
		if cur != nil {
			cur.kill()
		}
	}()
	var signedMu sync.Mutex
	signed := map[uint64]uint64{} // seqno → amount of every state the client signed
	var (
		recSeq, recSent uint64 // the state recovered at the last restart
		lastDurable     uint64 // Σ over the last child's jobs of their last durable total
		lastAcc         uint64 // the highest seqno the last child accepted
		lost            int    // restarts that lost a state the child had accepted
		beyond          int    // restarts that recovered more than was reported durable
	)
	for run := 0; run <= len(points); run++ {
		final := run == len(points)
		point, killAt := "final", ""
		if !final {
			point = points[run]
			if point != "timer" {
				killAt = point
			}
		}
		c, ready := startLaneChild(t, "payee", db, killAt)
		cur = c
		if len(ready) < 2 || len(ready) > 3 {
			t.Fatalf("READY %v", ready)
		}
		seq, sent := parseU(t, ready[0]), parseU(t, ready[1])
		var state []byte
		if len(ready) == 3 {
			state, _ = hex.DecodeString(ready[2])
		}
		// Recovered: a state the client signed, no more than it signed,
		// covering what was durable.
		cr := pl.Record()
		signedMu.Lock()
		a, ok := signed[seq]
		signedMu.Unlock()
		if seq > 0 && (!ok || a != sent) {
			t.Fatalf("run %d: recovered (%d, %d), which the client did not sign", run, seq, sent)
		}
		if s, a := voucherState(state); s != seq || a != sent {
			t.Fatalf("run %d: the worker's lane holds (%d, %d), its file (%d, %d)", run, s, a, seq, sent)
		}
		if seq < recSeq || sent > cr.Sent || sent < recSent+lastDurable {
			t.Fatalf("after the kill at %s: recovered (%d, %d); before it (%d, %d), %d reported durable since, the client signed %d",
				killedAt(points, run), seq, sent, recSeq, recSent, lastDurable, cr.Sent)
		}
		if sent > recSent+lastDurable {
			beyond++
		}
		if lastAcc > seq {
			lost++
		}
		recSeq, recSent = seq, sent
		// The client takes the worker's state, as from an Accept: it is
		// never newer than its own, which never crashed.
		if err := pl.Sync(state); err != nil {
			t.Fatalf("run %d: Sync(the worker's recovered state) = %v", run, err)
		}
		if r := pl.Record(); r.Seqno != cr.Seqno || r.Sent != cr.Sent {
			t.Fatalf("run %d: Sync moved the client from (%d, %d) to (%d, %d)", run, cr.Seqno, cr.Sent, r.Seqno, r.Sent)
		}

		lr := &laneRun{durable: map[string]uint64{}, total: map[string]uint64{}}
		read := make(chan struct{})
		go func() {
			defer close(read)
			for {
				line, ok := c.read()
				if !ok {
					return
				}
				f := strings.Fields(line)
				var u [3]uint64
				var err error
				for i := 0; i < len(u) && i+2 < len(f) && err == nil; i++ {
					u[i], err = strconv.ParseUint(f[i+2], 10, 64)
				}
				lr.mu.Lock()
				switch {
				case err != nil:
					lr.errs = append(lr.errs, line)
				case len(f) == 3 && f[0] == "durable": // a watcher's line may come late
					lr.durable[f[1]] = max(lr.durable[f[1]], u[0])
				case len(f) == 5 && f[0] == "acc":
					s, total, n := u[0], u[1], u[2]
					if n != total-lr.total[f[1]] {
						lr.errs = append(lr.errs, fmt.Sprintf("job %s given %d for %d after %d", f[1], n, total, lr.total[f[1]]))
					}
					lr.total[f[1]] = total
					lr.maxAcc = max(lr.maxAcc, s)
				case len(f) == 3 && f[0] == "DONE":
					lr.done = f[1:]
				default:
					lr.errs = append(lr.errs, line)
				}
				lr.mu.Unlock()
			}
		}()
		var timer *time.Timer
		if point == "timer" {
			timer = time.AfterFunc(time.Duration(rng.IntN(8000))*time.Microsecond, func() { c.cmd.Process.Signal(syscall.SIGKILL) })
		}
		var inMu sync.Mutex
		wrote := map[string]uint64{} // job → the total of its last voucher written to the child; under inMu
		var wg sync.WaitGroup
		for i := range laneCrashJobs {
			wg.Go(func() {
				jrng := rand.New(rand.NewPCG(uint64(run), uint64(i)))
				job := [16]byte{0xdd, byte(run >> 8), byte(run), byte(i)}
				defer pl.End(job)
				var total uint64
				for range laneCrashPays {
					total += 1 + jrng.Uint64N(100_000)
					v, err := pl.Pay(job, total)
					if err != nil {
						t.Errorf("run %d: Pay: %v", run, err)
						return
					}
					s, a := voucherState(v)
					signedMu.Lock()
					signed[s] = a
					signedMu.Unlock()
					inMu.Lock()
					_, err = fmt.Fprintf(c.in, "pay %x %d %x\n", job, total, v)
					if err == nil {
						wrote[hex.EncodeToString(job[:])] = total
					}
					inMu.Unlock()
					if err != nil {
						return // the worker died: the job fails
					}
					lanePause(jrng)
				}
			})
		}
		wg.Wait()
		if final {
			fmt.Fprintf(c.in, "flush\n")
		} else {
			c.cmd.Process.Signal(syscall.SIGKILL) // all paid: die now if not yet
		}
		select {
		case <-read:
		case <-time.After(time.Minute):
			t.Errorf("run %d: the worker child hangs", run)
		}
		if timer != nil {
			timer.Stop()
		}
		c.kill()
		if t.Failed() {
			t.FailNow()
		}
		if len(lr.errs) > 0 {
			t.Fatalf("run %d (after the kill at %s): the worker wrote %q", run, killedAt(points, run), lr.errs)
		}
		lastDurable = 0
		for job, d := range lr.durable {
			if d > wrote[job] {
				t.Fatalf("run %d: job %s durable %d above the %d the client paid it", run, job, d, wrote[job])
			}
			lastDurable += d
		}
		lastAcc = lr.maxAcc
		if final {
			r := pl.Record()
			if len(lr.done) != 2 || parseU(t, lr.done[0]) != r.Seqno || parseU(t, lr.done[1]) != r.Sent {
				t.Fatalf("end: the worker's provable state %v; the client signed (%d, %d)", lr.done, r.Seqno, r.Sent)
			}
			for job, total := range wrote {
				if lr.total[job] != total || lr.durable[job] != total {
					t.Fatalf("end: job %s paid %d; the worker gave it %d, durable %d", job, total, lr.total[job], lr.durable[job])
				}
			}
		}
	}
	r := pl.Record()
	if lost == 0 || beyond == 0 {
		t.Fatalf("kills never hit both sides of the commit: %d restarts lost accepted states, %d recovered more than was reported durable", lost, beyond)
	}
	t.Logf("%d kills: %d restarts lost states the worker had accepted, %d recovered more than it had reported durable; %d vouchers, %d nanoTON, all on the worker's disk",
		len(points), lost, beyond, r.Seqno, r.Sent)
}
