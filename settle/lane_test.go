package settle

import (
	"crypto/ed25519"
	"errors"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// Lanes with real keys and signatures on crashChannel: the client's
// PayerLane, the worker's PayeeLane and their stores, checked by the money.

const laneDeposit = 1 << 40

// openLaneStore opens the store at path, logging to t, and closes it when t ends.
func openLaneStore(t testing.TB, path string) *Store {
	t.Helper()
	st, err := OpenStore(path, slog.New(slog.NewTextHandler(t.Output(), nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// payerLane returns the client's lane of crashChannel in st, adding the
// channel with deposit.
func payerLane(t testing.TB, st *Store, deposit uint64) *PayerLane {
	t.Helper()
	p := st.Payer(NewWallet(crashClientKey))
	if err := p.AddChannel(crashChannel, deposit); err != nil {
		t.Fatal(err)
	}
	l, err := p.Lane(crashChannel.ID)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// payeeLane returns the worker's lane of crashChannel in st, adding the
// channel with deposit.
func payeeLane(t testing.TB, st *Store, deposit uint64) *PayeeLane {
	t.Helper()
	p := st.Payee(NewWallet(crashWorkerKey))
	if err := p.AddChannel(crashChannel, deposit); err != nil {
		t.Fatal(err)
	}
	l, err := p.Lane(crashChannel.ID)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// laneJob is job i's ID.
func laneJob(i int) [16]byte { return [16]byte{0x10, byte(i >> 8), byte(i)} }

// signedState is the encoded state (seq, sent) of channel id signed with key.
func signedState(t testing.TB, id ChannelID, seq, sent uint64, key ed25519.PrivateKey) []byte {
	t.Helper()
	v, err := Voucher(id, seq, sent, NewWallet(key))
	if err != nil {
		t.Fatal(err)
	}
	b, err := EncodeVoucher(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// stateOf decodes a voucher the test made.
func stateOf(t testing.TB, b []byte) (seq, sent uint64) {
	t.Helper()
	v, err := DecodeVoucher(b)
	if err != nil {
		t.Fatal(err)
	}
	return v.State.Data.Seqno, v.State.Data.Sent
}

// paid is one PayerLane.Pay: the voucher that says job's total is total.
type paid struct {
	job     [16]byte
	total   uint64
	inc     uint64 // what the job's total rose by
	voucher []byte
	seq     uint64
	sent    uint64
}

// payConcurrently runs jobs goroutines on l, each paying its own job each
// times with random increments, and returns every payment, each job's in order.
func payConcurrently(t *testing.T, l *PayerLane, jobs, each int) [][]paid {
	t.Helper()
	out := make([][]paid, jobs)
	errs := make([]error, jobs)
	var wg sync.WaitGroup
	for i := range jobs {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			job := laneJob(i)
			var total uint64
			for range each {
				inc := 1 + rng.Uint64N(1000)
				total += inc
				b, err := l.Pay(job, total)
				if err != nil {
					errs[i] = err
					return
				}
				v, err := DecodeVoucher(b)
				if err != nil {
					errs[i] = err
					return
				}
				out[i] = append(out[i], paid{job, total, inc, b, v.State.Data.Seqno, v.State.Data.Sent})
			}
			l.End(job)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return out
}

// Concurrent jobs on one PayerLane: one lineage of states, seqnos 1..n each
// signed once, every state raising the channel by exactly its job's
// increment, and the channel's total the sum of the jobs' totals, on disk
// after Flush.
func TestPayerLaneConcurrentJobs(t *testing.T) {
	st := openLaneStore(t, filepath.Join(t.TempDir(), "client.db"))
	l := payerLane(t, st, laneDeposit)
	const jobs, each = 16, 40
	pays := payConcurrently(t, l, jobs, each)

	var all []paid
	var sum uint64
	for _, p := range pays {
		for k := 1; k < len(p); k++ {
			if p[k].seq <= p[k-1].seq {
				t.Fatalf("job %x: seqno %d after %d", p[k].job, p[k].seq, p[k-1].seq)
			}
		}
		all = append(all, p...)
		sum += p[len(p)-1].total
	}
	slices.SortFunc(all, func(a, b paid) int { return int(a.seq) - int(b.seq) })
	var sent uint64
	for i, p := range all {
		if p.seq != uint64(i+1) {
			t.Fatalf("seqnos signed: %d at position %d; want 1..%d each once", p.seq, i, len(all))
		}
		if p.sent != sent+p.inc {
			t.Fatalf("seqno %d sends %d; previous %d plus job %x's increment %d", p.seq, p.sent, sent, p.job, p.inc)
		}
		sent = p.sent
	}
	r := l.Record()
	if r.Seqno != jobs*each || r.Sent != sum {
		t.Fatalf("lane after %d payments: seqno %d, sent %d; want %d, Σ job totals %d", jobs*each, r.Seqno, r.Sent, jobs*each, sum)
	}
	payer := st.Payer(NewWallet(crashClientKey))
	if err := payer.Flush(); err != nil {
		t.Fatal(err)
	}
	if d, _ := payer.Latest(crashChannel.ID); d.Seqno != r.Seqno || d.Sent != r.Sent || string(d.Voucher) != string(r.Voucher) {
		t.Fatalf("on disk after Flush: seqno %d, sent %d; lane %d, %d", d.Seqno, d.Sent, r.Seqno, r.Sent)
	}
	// A job's current total again (0 for a new job) is the newest voucher,
	// not a new state.
	if b, err := l.Pay(laneJob(99), 0); err != nil || string(b) != string(r.Voucher) {
		t.Fatalf("Pay(new job, 0) = %v; want the newest voucher", err)
	}
	job := laneJob(100)
	v1, _ := l.Pay(job, 5)
	if again, err := l.Pay(job, 5); err != nil || string(again) != string(v1) {
		t.Fatalf("Pay(same total) = %v; want the newest voucher", err)
	}
	if _, err := l.Pay(job, 4); !errors.Is(err, ErrAmountDecreased) {
		t.Fatalf("Pay(lower total) = %v; want ErrAmountDecreased", err)
	}
	if _, err := l.Pay(job, laneDeposit); !errors.Is(err, ErrOverDeposit) {
		t.Fatalf("Pay(above the deposit) = %v; want ErrOverDeposit", err)
	}
	if r := l.Record(); r.Sent != sum+5 {
		t.Fatalf("refused payments changed the lane: sent %d, want %d", r.Sent, sum+5)
	}
}

// A PayeeLane given the concurrent jobs' vouchers with the jobs interleaved
// at random (or each on its own goroutine), each voucher sent twice, many
// arriving after newer states of other jobs and some of a job's older ones
// again late (refused), gives each job exactly its total and keeps nothing
// in the pool; the provable balance, on disk and after a reopen, is the sum.
func TestPayeeLaneAttributes(t *testing.T) {
	cst := openLaneStore(t, filepath.Join(t.TempDir(), "client.db"))
	pays := payConcurrently(t, payerLane(t, cst, laneDeposit), 16, 40)
	var sum uint64
	for _, p := range pays {
		sum += p[len(p)-1].total
	}

	for _, mode := range []string{"interleaved", "concurrent"} {
		t.Run(mode, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "worker.db")
			st := openLaneStore(t, path)
			l := payeeLane(t, st, laneDeposit)
			jobs := make([]*PayeeJob, len(pays))
			for i := range pays {
				var err error
				if jobs[i], err = l.Open(laneJob(i)); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := l.Open(laneJob(0)); err == nil {
				t.Fatal("opened a job already open")
			}
			// give accepts job i's k-th payment, and again (a resend gives 0).
			give := func(i, k int, prev uint64) error {
				p := pays[i][k]
				for try := range 2 {
					got, err := jobs[i].Accept(p.voucher, p.total, p.total)
					if err != nil {
						return err
					}
					if want := (p.total - prev) * uint64(1-try); got != want {
						t.Errorf("job %d payment %d (seqno %d) try %d: given %d; want %d", i, k, p.seq, try, got, want)
					}
				}
				return nil
			}
			if mode == "interleaved" {
				rng := rand.New(rand.NewPCG(5, 6))
				next := make([]int, len(pays))
				for left := len(pays) * len(pays[0]); left > 0; left-- {
					i := rng.IntN(len(pays))
					for next[i] == len(pays[i]) {
						i = (i + 1) % len(pays)
					}
					var prev uint64
					if k := next[i]; k > 0 {
						prev = pays[i][k-1].total
					}
					if err := give(i, next[i], prev); err != nil {
						t.Fatalf("job %d payment %d: %v", i, next[i], err)
					}
					if k := next[i]; k > 0 && rng.IntN(4) == 0 {
						// The job's own older message, late: refused, nothing changes.
						old := pays[i][rng.IntN(k)]
						r, pool := l.Record()
						if n, err := jobs[i].Accept(old.voucher, old.total, old.total); !errors.Is(err, ErrAmountDecreased) || n != 0 {
							t.Fatalf("job %d: its older voucher (total %d) late = %d, %v; want ErrAmountDecreased", i, old.total, n, err)
						}
						if r2, pool2 := l.Record(); r2.Seqno != r.Seqno || pool2 != pool || jobs[i].Total() != pays[i][k].total {
							t.Fatalf("job %d: a refused late voucher changed the lane or the job", i)
						}
					}
					next[i]++
				}
			} else {
				var wg sync.WaitGroup
				errs := make([]error, len(pays))
				for i := range pays {
					wg.Go(func() {
						var prev uint64
						for k, p := range pays[i] {
							if err := give(i, k, prev); err != nil {
								errs[i] = err
								return
							}
							prev = p.total
						}
					})
				}
				wg.Wait()
				if err := errors.Join(errs...); err != nil {
					t.Fatal(err)
				}
			}
			for i, j := range jobs {
				if want := pays[i][len(pays[i])-1].total; j.Total() != want {
					t.Errorf("job %d given %d; want its total %d", i, j.Total(), want)
				}
			}
			if r, pool := l.Record(); pool != 0 || r.Sent != sum {
				t.Fatalf("lane: sent %d, pool %d; want Σ job totals %d, pool 0", r.Sent, pool, sum)
			}
			payee := st.Payee(NewWallet(crashWorkerKey))
			if err := payee.Flush(); err != nil {
				t.Fatal(err)
			}
			for i, j := range jobs {
				if d, _ := j.Durable(); d != j.Total() {
					t.Errorf("job %d: durable %d after Flush; total %d", i, d, j.Total())
				}
			}
			if bal, err := payee.Balance(crashChannel.ID); err != nil || bal != sum {
				t.Fatalf("provable balance %d, %v; want %d", bal, err, sum)
			}
			if err := st.Close(); err != nil {
				t.Fatal(err)
			}
			st = openLaneStore(t, path)
			if bal, err := st.Payee(NewWallet(crashWorkerKey)).Balance(crashChannel.ID); err != nil || bal != sum {
				t.Fatalf("provable balance after reopen %d, %v; want %d", bal, err, sum)
			}
		})
	}
}

// Each refusal returns its error and changes neither the lane nor a job.
func TestPayeeJobRefusals(t *testing.T) {
	cst := openLaneStore(t, filepath.Join(t.TempDir(), "client.db"))
	pl := payerLane(t, cst, 10_000)
	l := payeeLane(t, openLaneStore(t, filepath.Join(t.TempDir(), "worker.db")), 10_000)
	a, _ := l.Open(laneJob(1))
	b, _ := l.Open(laneJob(2))
	va, _ := pl.Pay(laneJob(1), 100) // seqno 1, 100
	vb, _ := pl.Pay(laneJob(2), 50)  // seqno 2, 150
	if n, err := a.Accept(va, 100, 100); n != 100 || err != nil {
		t.Fatalf("Accept(a, 100) = %d, %v", n, err)
	}
	if n, err := b.Accept(vb, 50, 60); n != 50 || err != nil {
		t.Fatalf("Accept(b, 50) = %d, %v", n, err)
	}
	other := crashChannel.ID
	other[15] ^= 1
	forged := signedState(t, crashChannel.ID, 3, 200, crashWorkerKey)
	flipped := slices.Clone(vb)
	flipped[len(flipped)/2] ^= 1
	for _, c := range []struct {
		name        string
		voucher     []byte
		total, most uint64
		want        error
	}{
		{"overpay", vb, 120, 110, ErrOverpaid},
		{"claim beyond the pool", vb, 101, 1000, ErrUnpaid},
		{"decreased total", vb, 99, 1000, ErrAmountDecreased},
		{"foreign channel", signedState(t, other, 3, 200, crashClientKey), 150, 1000, ErrUnknownChannel},
		{"forged signature", forged, 150, 1000, ErrBadSignature},
		{"flipped bit", flipped, 150, 1000, nil}, // malformed or a bad signature
		{"same seqno, lower amount", signedState(t, crashChannel.ID, 2, 140, crashClientKey), 100, 1000, ErrStaleVoucher},
		{"same seqno, higher amount", signedState(t, crashChannel.ID, 2, 160, crashClientKey), 110, 1000, ErrStaleVoucher},
		{"older seqno, higher amount", signedState(t, crashChannel.ID, 1, 160, crashClientKey), 110, 1000, ErrStaleVoucher},
		{"newer seqno, lower amount", signedState(t, crashChannel.ID, 3, 149, crashClientKey), 100, 1000, ErrAmountDecreased},
		{"above the deposit", signedState(t, crashChannel.ID, 3, 10_001, crashClientKey), 100, 1000, ErrOverDeposit},
		{"garbage", []byte("not a voucher"), 100, 1000, ErrMalformedVoucher},
	} {
		before, pool := l.Record()
		n, err := a.Accept(c.voucher, c.total, c.most)
		if err == nil || (c.want != nil && !errors.Is(err, c.want)) {
			t.Errorf("%s: Accept = %d, %v; want %v", c.name, n, err, c.want)
		}
		after, pool2 := l.Record()
		if n != 0 || a.Total() != 100 || b.Total() != 50 || after.Seqno != before.Seqno || after.Sent != before.Sent || pool2 != pool {
			t.Errorf("%s: given %d; jobs %d, %d; lane (%d, %d, pool %d) was (%d, %d, pool %d)",
				c.name, n, a.Total(), b.Total(), after.Seqno, after.Sent, pool2, before.Seqno, before.Sent, pool)
		}
	}

	// A refused claim on a newer state the client did sign: the lane keeps
	// the state (it is the client's money, cumulative) and the amount waits
	// in the pool for a claim within what the job has cost.
	va2, _ := pl.Pay(laneJob(1), 180) // seqno 3, 230
	if n, err := a.Accept(va2, 180, 150); !errors.Is(err, ErrOverpaid) || n != 0 {
		t.Fatalf("overpaid claim = %d, %v; want ErrOverpaid", n, err)
	}
	if r, pool := l.Record(); r.Seqno != 3 || r.Sent != 230 || pool != 80 || a.Total() != 100 {
		t.Fatalf("after the refused claim: lane (%d, %d, pool %d), job %d; want (3, 230, pool 80), job 100", r.Seqno, r.Sent, pool, a.Total())
	}
	if n, err := b.Accept(va2, 131, 1000); !errors.Is(err, ErrUnpaid) || n != 0 {
		t.Fatalf("another job's claim beyond the pool = %d, %v; want ErrUnpaid", n, err)
	}
	if n, err := a.Accept(va2, 180, 180); n != 80 || err != nil {
		t.Fatalf("the claim within the cost = %d, %v; want 80", n, err)
	}
	if _, pool := l.Record(); pool != 0 {
		t.Fatalf("pool %d; want 0", pool)
	}

	a.Close()
	vb2, _ := pl.Pay(laneJob(2), 60)
	if _, err := a.Accept(vb2, 190, 1000); err == nil {
		t.Fatal("a closed job accepted a voucher")
	}
	if n, err := b.Accept(vb2, 60, 60); n != 10 || err != nil {
		t.Fatalf("Accept(b, 60) after a's close = %d, %v; want 10", n, err)
	}
}

// A state that raises the seqno and not the amount is still the lane's
// newest: Flush and the job's durable total wait for it on disk.
func TestPayeeLaneZeroIncrement(t *testing.T) {
	st := openLaneStore(t, filepath.Join(t.TempDir(), "worker.db"))
	payee := st.Payee(NewWallet(crashWorkerKey))
	l := payeeLane(t, st, 1000)
	j, _ := l.Open(laneJob(1))
	if _, err := j.Accept(signedState(t, crashChannel.ID, 1, 100, crashClientKey), 100, 100); err != nil {
		t.Fatal(err)
	}
	if err := payee.Flush(); err != nil {
		t.Fatal(err)
	}
	v2 := signedState(t, crashChannel.ID, 2, 100, crashClientKey)
	if n, err := j.Accept(v2, 100, 100); n != 0 || err != nil {
		t.Fatalf("Accept(same amount, next seqno) = %d, %v", n, err)
	}
	if err := payee.Flush(); err != nil {
		t.Fatal(err)
	}
	if r, _ := payee.Latest(crashChannel.ID); r.Seqno != 2 || string(r.Voucher) != string(v2) {
		t.Fatalf("on disk after Flush: seqno %d; the lane took seqno 2", r.Seqno)
	}
	v3 := signedState(t, crashChannel.ID, 3, 100, crashClientKey)
	if n, err := payee.Accept(v3); n != 0 || err != nil {
		t.Fatalf("Payee.Accept(same amount, next seqno) = %d, %v", n, err)
	}
	if r, _ := payee.Latest(crashChannel.ID); r.Seqno != 3 {
		t.Fatalf("on disk after Payee.Accept returned: seqno %d; want 3", r.Seqno)
	}
}

// holdCommits makes the stores' commit loops stop inside their transaction
// at point until the returned release is called; entered receives each time
// one stops there. Call it before opening the stores: the hook is restored
// when t ends, after they close.
func holdCommits(t *testing.T, point string) (entered <-chan struct{}, release func()) {
	t.Helper()
	in := make(chan struct{}, 100)
	gate := make(chan struct{})
	old := crashHook
	crashHook = func(p string) {
		if p == point {
			in <- struct{}{}
			select { // a failed test must not hang its store's Close
			case <-gate:
			case <-time.After(10 * time.Second):
			}
		}
	}
	var once sync.Once
	release = func() { once.Do(func() { close(gate) }) }
	t.Cleanup(func() { release(); crashHook = old })
	return in, release
}

func waitFor(t *testing.T, c <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// Durable rises only once the state covering the job's total is committed,
// and its channel fires then; a job given money from a state already on
// disk is durable at once.
func TestPayeeJobDurable(t *testing.T) {
	entered, release := holdCommits(t, "accept:signed") // first: restored after the stores close
	cst := openLaneStore(t, filepath.Join(t.TempDir(), "client.db"))
	pl := payerLane(t, cst, laneDeposit)
	v1, _ := pl.Pay(laneJob(1), 100)
	v2, _ := pl.Pay(laneJob(2), 30)
	st := openLaneStore(t, filepath.Join(t.TempDir(), "worker.db"))
	l := payeeLane(t, st, laneDeposit)
	a, _ := l.Open(laneJob(1))
	b, _ := l.Open(laneJob(2))
	if n, err := a.Accept(v1, 100, 100); n != 100 || err != nil {
		t.Fatalf("Accept = %d, %v", n, err)
	}
	waitFor(t, entered, "the commit of seqno 1")
	if n, err := b.Accept(v2, 30, 30); n != 30 || err != nil { // seqno 2: the next commit
		t.Fatalf("Accept = %d, %v", n, err)
	}
	d, rose := a.Durable()
	if d != 0 {
		t.Fatalf("durable %d while the commit is held; want 0", d)
	}
	select {
	case <-rose:
		t.Fatal("durable fired while the commit is held")
	default:
	}
	if r, err := st.Payee(NewWallet(crashWorkerKey)).Latest(crashChannel.ID); err != nil || r.Seqno != 0 {
		t.Fatalf("on disk while the commit is held: seqno %d, %v; want 0", r.Seqno, err)
	}
	release()
	waitFor(t, rose, "job a's durable total")
	if d, _ := a.Durable(); d != 100 {
		t.Fatalf("durable %d after the commit; want 100", d)
	}
	_, roseB := b.Durable()
	waitFor(t, roseB, "job b's durable total")
	if d, _ := b.Durable(); d != 30 {
		t.Fatalf("job b durable %d after its commit; want 30", d)
	}

	// A job given money from a superseded state that is on disk: at once.
	if err := st.Flush(); err != nil {
		t.Fatal(err)
	}
	v3, _ := pl.Pay(laneJob(3), 7)  // seqno 3
	v4, _ := pl.Pay(laneJob(4), 11) // seqno 4
	d4, _ := l.Open(laneJob(4))
	if _, err := d4.Accept(v4, 11, 11); err != nil {
		t.Fatal(err)
	}
	if err := st.Flush(); err != nil {
		t.Fatal(err)
	}
	d3, _ := l.Open(laneJob(3))
	_, rose3 := d3.Durable()
	if _, err := d3.Accept(v3, 7, 7); err != nil {
		t.Fatal(err)
	}
	select {
	case <-rose3:
	default:
		t.Fatal("a job given money from a state on disk did not fire at once")
	}
	if d, _ := d3.Durable(); d != 7 {
		t.Fatalf("durable %d; want 7", d)
	}
}

// The client's lane signs without waiting for the disk; the file catches up
// on the commit.
func TestPayerLaneDoesNotWait(t *testing.T) {
	entered, release := holdCommits(t, "pay:signed")
	st := openLaneStore(t, filepath.Join(t.TempDir(), "client.db"))
	l := payerLane(t, st, laneDeposit)
	if _, err := l.Pay(laneJob(1), 10); err != nil {
		t.Fatal(err)
	}
	waitFor(t, entered, "the commit")
	for i := range 5 {
		if _, err := l.Pay(laneJob(1), uint64(20+i)); err != nil {
			t.Fatal(err)
		}
	}
	payer := st.Payer(NewWallet(crashClientKey))
	if r, _ := payer.Latest(crashChannel.ID); r.Seqno != 0 {
		t.Fatalf("on disk while the commit is held: seqno %d", r.Seqno)
	}
	if r := l.Record(); r.Seqno != 6 || r.Sent != 24 {
		t.Fatalf("lane: seqno %d, sent %d; want 6, 24", r.Seqno, r.Sent)
	}
	release()
	if err := payer.Flush(); err != nil {
		t.Fatal(err)
	}
	if r, _ := payer.Latest(crashChannel.ID); r.Seqno != 6 || r.Sent != 24 {
		t.Fatalf("on disk after Flush: seqno %d, sent %d; want 6, 24", r.Seqno, r.Sent)
	}
}

// Reserve bounds the credit of a client's jobs together; Close gives it back.
func TestPayeeJobReserve(t *testing.T) {
	l := payeeLane(t, openLaneStore(t, filepath.Join(t.TempDir(), "worker.db")), laneDeposit)
	a, _ := l.Open(laneJob(1))
	b, _ := l.Open(laneJob(2))
	c, _ := l.Open(laneJob(3))
	steps := []struct {
		name               string
		j                  *PayeeJob
		want, least, limit int
		got                int
	}{
		{name: "a: all it wants", j: a, want: 6, least: 3, limit: 10, got: 6},
		{name: "b: what is left", j: b, want: 6, least: 3, limit: 10, got: 4},
		{name: "c: less than least left", j: c, want: 6, least: 3, limit: 10, got: 0},
		{name: "c: least 0 is 1", j: c, want: 6, least: 0, limit: 10, got: 0},
		{name: "c: no bound", j: c, want: 100, least: 50, limit: 0, got: 100},
	}
	for _, s := range steps {
		if got := s.j.Reserve(s.want, s.least, s.limit); got != s.got {
			t.Fatalf("%s: Reserve(%d, %d, %d) = %d; want %d", s.name, s.want, s.least, s.limit, got, s.got)
		}
	}
	// a (6) and c (100) release; b holds 4 of a limit of 10.
	a.Close()
	a.Close() // twice is once
	c.Close()
	d, _ := l.Open(laneJob(4))
	if got := d.Reserve(8, 3, 10); got != 6 {
		t.Fatalf("after a and c closed: Reserve(8, 3, 10) = %d; want 6", got)
	}
	if got := b.Reserve(1, 1, 10); got != 0 {
		t.Fatalf("at the limit: Reserve(1, 1, 10) = %d; want 0", got)
	}
	b.Close()
	d.Close()
	if got := d.Reserve(4, 1, 10); got != 0 {
		t.Fatalf("a closed job: Reserve(4, 1, 10) = %d; want 0 (nothing to release later)", got)
	}
	e, _ := l.Open(laneJob(5))
	if got := e.Reserve(10, 10, 10); got != 10 {
		t.Fatalf("all closed: Reserve(10, 10, 10) = %d; want 10", got)
	}
}

// Sync adopts a newer state the client signed, ignores older ones and
// refuses what the client did not sign or what contradicts its lane.
func TestPayerLaneSync(t *testing.T) {
	path := filepath.Join(t.TempDir(), "client.db")
	st := openLaneStore(t, path)
	l := payerLane(t, st, 10_000)
	var vs [][]byte
	for i := range 3 {
		v, _ := l.Pay(laneJob(1), uint64(100*(i+1))) // seqnos 1..3, 100..300
		vs = append(vs, v)
	}
	other := crashChannel.ID
	other[0] ^= 1
	for _, c := range []struct {
		name  string
		state []byte
		want  error // nil: ignored
	}{
		{"none", nil, nil},
		{"older", vs[1], nil},
		{"the same", vs[2], nil},
		{"older seqno, lower amount", signedState(t, crashChannel.ID, 2, 250, crashClientKey), nil},
		{"forged", signedState(t, crashChannel.ID, 9, 900, crashWorkerKey), ErrBadSignature},
		{"foreign channel", signedState(t, other, 9, 900, crashClientKey), ErrUnknownChannel},
		{"same seqno, other amount", signedState(t, crashChannel.ID, 3, 301, crashClientKey), ErrStaleVoucher},
		{"older seqno, higher amount", signedState(t, crashChannel.ID, 2, 301, crashClientKey), ErrStaleVoucher},
		{"newer seqno, lower amount", signedState(t, crashChannel.ID, 4, 299, crashClientKey), ErrAmountDecreased},
		{"garbage", []byte{1, 2, 3}, ErrMalformedVoucher},
	} {
		err := l.Sync(c.state)
		if (c.want == nil) != (err == nil) || !errors.Is(err, c.want) {
			t.Errorf("Sync(%s) = %v; want %v", c.name, err, c.want)
		}
		if r := l.Record(); r.Seqno != 3 || r.Sent != 300 || string(r.Voucher) != string(vs[2]) {
			t.Errorf("Sync(%s) changed the lane to (%d, %d)", c.name, r.Seqno, r.Sent)
		}
	}
	// The worker holds seqno 5 the client signed but lost: the lane
	// continues from it and the next state follows it.
	newer := signedState(t, crashChannel.ID, 5, 500, crashClientKey)
	if err := l.Sync(newer); err != nil {
		t.Fatalf("Sync(newer own state) = %v", err)
	}
	if r := l.Record(); r.Seqno != 5 || r.Sent != 500 || string(r.Voucher) != string(newer) {
		t.Fatalf("after Sync: (%d, %d); want (5, 500)", r.Seqno, r.Sent)
	}
	v, err := l.Pay(laneJob(2), 40)
	if err != nil {
		t.Fatal(err)
	}
	if seq, sent := stateOf(t, v); seq != 6 || sent != 540 {
		t.Fatalf("next state (%d, %d); want (6, 540)", seq, sent)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	// Reopened, the lane loads the last committed state.
	st = openLaneStore(t, path)
	l2, err := st.Payer(NewWallet(crashClientKey)).Lane(crashChannel.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r := l2.Record(); r.Seqno != 6 || r.Sent != 540 || string(r.Voucher) != string(v) {
		t.Fatalf("reopened lane: (%d, %d); want (6, 540)", r.Seqno, r.Sent)
	}
	if v, _ := l2.Pay(laneJob(3), 1); v == nil {
		t.Fatal("reopened lane does not pay")
	} else if seq, sent := stateOf(t, v); seq != 7 || sent != 541 {
		t.Fatalf("reopened lane's next state (%d, %d); want (7, 541)", seq, sent)
	}
}

// Both lanes reload their last committed state after Close and continue.
func TestLaneReopen(t *testing.T) {
	dir := t.TempDir()
	cpath, wpath := filepath.Join(dir, "client.db"), filepath.Join(dir, "worker.db")
	cst, wst := openLaneStore(t, cpath), openLaneStore(t, wpath)
	pl, wl := payerLane(t, cst, laneDeposit), payeeLane(t, wst, laneDeposit)
	j, _ := wl.Open(laneJob(1))
	var last []byte
	for k := 1; k <= 20; k++ {
		v, err := pl.Pay(laneJob(1), uint64(10*k))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := j.Accept(v, uint64(10*k), uint64(10*k)); err != nil {
			t.Fatal(err)
		}
		last = v
	}
	j.Close()
	if err := errors.Join(cst.Close(), wst.Close()); err != nil {
		t.Fatal(err)
	}

	cst, wst = openLaneStore(t, cpath), openLaneStore(t, wpath)
	pl2, err := cst.Payer(NewWallet(crashClientKey)).Lane(crashChannel.ID)
	if err != nil {
		t.Fatal(err)
	}
	wl2, err := wst.Payee(NewWallet(crashWorkerKey)).Lane(crashChannel.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r := pl2.Record(); r.Seqno != 20 || r.Sent != 200 || string(r.Voucher) != string(last) {
		t.Fatalf("client lane reopened: (%d, %d); want (20, 200)", r.Seqno, r.Sent)
	}
	if r, pool := wl2.Record(); r.Seqno != 20 || r.Sent != 200 || pool != 0 || string(wl2.State()) != string(last) {
		t.Fatalf("worker lane reopened: (%d, %d, pool %d); want (20, 200, pool 0)", r.Seqno, r.Sent, pool)
	}
	if err := pl2.Sync(wl2.State()); err != nil {
		t.Fatalf("Sync(the worker's state after both restarted) = %v", err)
	}
	// The job IDs are new after a restart: the lanes forgot the old ones.
	j2, _ := wl2.Open(laneJob(2))
	v, _ := pl2.Pay(laneJob(2), 5)
	if d, _ := j2.Durable(); d != 0 {
		t.Fatalf("new job durable %d before any payment", d)
	}
	if n, err := j2.Accept(v, 5, 5); n != 5 || err != nil {
		t.Fatalf("Accept after reopen = %d, %v; want 5", n, err)
	}
	if err := wst.Flush(); err != nil {
		t.Fatal(err)
	}
	if bal, _ := wst.Payee(NewWallet(crashWorkerKey)).Balance(crashChannel.ID); bal != 205 {
		t.Fatalf("balance %d; want 205", bal)
	}
}
