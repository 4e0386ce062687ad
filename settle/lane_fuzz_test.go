package settle

import (
	"bytes"
	"encoding/hex"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// Fuzzers of what a lane takes from the other side: a job's voucher
// message on the worker (PayeeJob.Accept) and the worker's state on the
// client (PayerLane.Sync). Each execution starts from a fresh lane on a
// fresh record of the channel, so a failing input replays alone.

const fuzzDeposit = 10_000

// fuzzStore is a store for one fuzz process, without fsync (no crash is
// tested here; a new file per execution would cost milliseconds).
func fuzzStore(f *testing.F) *Store {
	st := openLaneStore(f, filepath.Join(f.TempDir(), "fuzz.db"))
	st.db.NoSync = true
	return st
}

// freshRecord forgets bucket's lane of crashChannel and writes the channel's
// first record (no state, fuzzDeposit), so that the next Lane starts afresh.
func freshRecord(t *testing.T, st *Store, bucket []byte) {
	if err := st.Flush(); err != nil {
		t.Fatal(err)
	}
	st.mu.Lock()
	delete(st.payers, crashChannel.ID)
	delete(st.payees, crashChannel.ID)
	st.mu.Unlock()
	if err := st.db.Update(func(tx *bolt.Tx) error {
		return st.put(tx, bucket, Record{Channel: crashChannel, Deposit: fuzzDeposit})
	}); err != nil {
		t.Fatal(err)
	}
}

// fuzzState signs (seq, sent) on crashChannel with the client's key, for seeds.
func fuzzState(f *testing.F, seq, sent uint64) []byte {
	return signedState(f, crashChannel.ID, seq, sent, crashClientKey)
}

// fuzzSeeds are vouchers that are not the lane's: forged, foreign, golden, junk.
func fuzzSeeds(f *testing.F) [][]byte {
	other := crashChannel.ID
	other[3] ^= 0x40
	out := [][]byte{
		nil,
		[]byte("voucher"),
		signedState(f, crashChannel.ID, 3, 400, crashWorkerKey),
		signedState(f, other, 3, 400, crashClientKey),
	}
	for _, g := range goldenVouchers {
		b, _ := hex.DecodeString(g.boc)
		out = append(out, b)
	}
	return out
}

// FuzzPayeeJobAccept feeds job a's Accept on a lane that took seqno 1 (100,
// all a's) and seqno 2 (250, 50 of it job b's): whatever the voucher and
// the totals, it never panics, never gives more than the pool plus what
// the voucher's state added, never lowers the lane, keeps Σ jobs + pool =
// the lane's amount, and what it took is on disk after Flush.
func FuzzPayeeJobAccept(f *testing.F) {
	v1, v2 := fuzzState(f, 1, 100), fuzzState(f, 2, 250)
	seeds := []struct {
		v           []byte
		total, most uint64
	}{
		{v1, 100, 100},                   // resend
		{v2, 200, 200},                   // a superseded claim within the pool
		{v2, 201, 300},                   // beyond the pool
		{fuzzState(f, 3, 400), 350, 350}, // pool and the new state's increment
		{fuzzState(f, 3, 400), 351, 400}, // one more than that
		{fuzzState(f, 3, 400), 300, 299}, // overpaid
		{fuzzState(f, 3, 250), 150, 150}, // a new seqno that pays nothing more
		{fuzzState(f, 2, 240), 100, 100}, // same seqno, other amount
		{fuzzState(f, 1, 260), 100, 100}, // older seqno, higher amount
		{fuzzState(f, 3, 249), 100, 100}, // lower amount
		{fuzzState(f, 3, fuzzDeposit+1), 100, 1 << 62},
		{fuzzState(f, maxSeqno, fuzzDeposit), fuzzDeposit - 150, fuzzDeposit},
		{v2, 99, 1000}, // decreased
	}
	for _, s := range seeds {
		f.Add(s.v, s.total, s.most)
	}
	for _, b := range fuzzSeeds(f) {
		f.Add(b, uint64(150), uint64(1000))
	}
	st := fuzzStore(f)
	payee := st.Payee(NewWallet(crashWorkerKey))
	f.Fuzz(func(t *testing.T, voucher []byte, total, most uint64) {
		freshRecord(t, st, bucketWorker)
		l, err := payee.Lane(crashChannel.ID)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := l.Open(laneJob(1))
		b, _ := l.Open(laneJob(2))
		if _, err := a.Accept(v1, 100, 100); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Accept(v2, 50, 50); err != nil {
			t.Fatal(err)
		}
		if err := st.Flush(); err != nil { // on disk: what Accept takes must be written after
			t.Fatal(err)
		}
		before, pool := l.Record()

		given, err := a.Accept(voucher, total, most)

		after, pool2 := l.Record()
		if after.Seqno < before.Seqno || after.Sent < before.Sent {
			t.Fatalf("Accept(%x) lowered the lane from (%d, %d) to (%d, %d)", voucher, before.Seqno, before.Sent, after.Seqno, after.Sent)
		}
		added := after.Sent - before.Sent
		if given > pool+added || pool2 != pool+added-given {
			t.Fatalf("Accept(%x, %d, %d) gave %d; pool %d, the state added %d, pool now %d", voucher, total, most, given, pool, added, pool2)
		}
		if a.Total()+b.Total()+pool2 != after.Sent || b.Total() != 50 {
			t.Fatalf("jobs %d + %d + pool %d; the lane's states pay %d", a.Total(), b.Total(), pool2, after.Sent)
		}
		if err != nil && (given != 0 || a.Total() != 100) {
			t.Fatalf("Accept(%x, %d, %d) = %d, %v; job total %d: a refusal gave something", voucher, total, most, given, err, a.Total())
		}
		if err == nil && (total > most || a.Total() != total || given != total-100) {
			t.Fatalf("Accept(%x, %d, %d) = %d; job total %d", voucher, total, most, given, a.Total())
		}
		if after.Seqno != before.Seqno {
			v, err := DecodeVoucher(after.Voucher)
			if err != nil || !bytes.Equal(after.Voucher, voucher) || !v.Verify(crashChannel.ClientKey) || v.State.ChannelID != crashChannel.ID ||
				v.State.Data.Seqno != after.Seqno || v.State.Data.Sent != after.Sent {
				t.Fatalf("the lane took (%d, %d) from %x, which is not the client's state of the channel", after.Seqno, after.Sent, voucher)
			}
		}
		if err := st.Flush(); err != nil {
			t.Fatal(err)
		}
		if r, _ := payee.Latest(crashChannel.ID); r.Seqno != after.Seqno || r.Sent != after.Sent {
			t.Fatalf("on disk after Flush (%d, %d); the lane holds (%d, %d)", r.Seqno, r.Sent, after.Seqno, after.Sent)
		}
		if d, _ := a.Durable(); d != a.Total() {
			t.Fatalf("durable %d after Flush; job total %d", d, a.Total())
		}
	})
}

// FuzzPayerSync hands a client's lane at (3, 300) arbitrary worker states:
// it never panics, never lowers the lane, adopts only a state the client's
// key signed on the channel, and pays on from whatever it holds.
func FuzzPayerSync(f *testing.F) {
	for _, s := range [][2]uint64{{5, 500}, {2, 200}, {3, 300}, {3, 301}, {2, 301}, {4, 299}, {4, 300}, {2, 250},
		{maxSeqno, 600}, {4, fuzzDeposit + 1}} {
		f.Add(fuzzState(f, s[0], s[1]))
	}
	for _, b := range fuzzSeeds(f) {
		f.Add(b)
	}
	st := fuzzStore(f)
	payer := st.Payer(NewWallet(crashClientKey))
	f.Fuzz(func(t *testing.T, state []byte) {
		freshRecord(t, st, bucketClient)
		l, err := payer.Lane(crashChannel.ID)
		if err != nil {
			t.Fatal(err)
		}
		for k := uint64(1); k <= 3; k++ {
			if _, err := l.Pay(laneJob(1), 100*k); err != nil {
				t.Fatal(err)
			}
		}
		if err := st.Flush(); err != nil {
			t.Fatal(err)
		}
		before := l.Record()

		err = l.Sync(state)

		after := l.Record()
		if after.Seqno < before.Seqno || after.Sent < before.Sent {
			t.Fatalf("Sync(%x) lowered the lane from (%d, %d) to (%d, %d)", state, before.Seqno, before.Sent, after.Seqno, after.Sent)
		}
		v, derr := DecodeVoucher(state)
		own := derr == nil && v.State.ChannelID == crashChannel.ID && v.Verify(crashChannel.ClientKey)
		if len(state) > 0 && !own && err == nil {
			t.Fatalf("Sync(%x) = nil for a state the client did not sign on the channel", state)
		}
		if after.Seqno != before.Seqno || after.Sent != before.Sent || !bytes.Equal(after.Voucher, before.Voucher) {
			if err != nil || !own || !bytes.Equal(after.Voucher, state) || v.State.Data.Seqno != after.Seqno || v.State.Data.Sent != after.Sent {
				t.Fatalf("Sync(%x) = %v moved the lane to (%d, %d), not to a state the client signed", state, err, after.Seqno, after.Sent)
			}
		}
		if after.Seqno < maxSeqno && after.Sent < fuzzDeposit {
			b, err := l.Pay(laneJob(2), 1)
			if err != nil {
				t.Fatalf("Pay after Sync(%x): %v", state, err)
			}
			if seq, sent := stateOf(t, b); seq != after.Seqno+1 || sent != after.Sent+1 {
				t.Fatalf("after Sync(%x) at (%d, %d): next state (%d, %d)", state, after.Seqno, after.Sent, seq, sent)
			}
		}
		if err := st.Flush(); err != nil {
			t.Fatal(err)
		}
		now := l.Record()
		if r, _ := payer.Latest(crashChannel.ID); r.Seqno != now.Seqno || r.Sent != now.Sent {
			t.Fatalf("on disk after Flush (%d, %d); the lane holds (%d, %d)", r.Seqno, r.Sent, now.Seqno, now.Sent)
		}
	})
}
