package settle

import (
	"bytes"
	"errors"
	"fmt"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// A lane owns one channel's money on one side, in memory, for any number of
// concurrent jobs: PayerLane on the client's side turns each job's total into
// the channel's next cumulative state, PayeeLane on the worker's side takes
// those states and attributes them back to jobs. Jobs never wait for the disk:
// the store's commit loop writes the lanes changed since its last commit in one
// transaction (group commit). What that costs on a crash is bounded:
//
//   - Client: a state it signed and sent but had not written yet is lost from
//     its file, not from the worker, which holds it and hands it back in the
//     next job's Accept (PayerLane.Sync); the client continues from the higher
//     of the two, so no voucher is refused as stale after its restart. A state
//     written but never sent (the crash came between the write and the send)
//     is signed money the worker never heard of: the client's next state pays
//     it, so a crashed client pays at most one voucher increment per job in
//     flight beyond what reached its callers, each for tokens it had received.
//   - Worker: a state it had not written yet is lost, and with it at most one
//     credit window per job in flight: a job extends credit only on what is
//     durable (PayeeJob.Durable), and the client's later states carry the lost
//     amounts anyway, since they are cumulative.

// ErrUnpaid is returned when a voucher attributes to a job more than the
// channel's states pay beyond what its other jobs were given.
var ErrUnpaid = errors.New("voucher attributes more than the channel's states pay")

// ErrOverpaid is returned when a voucher brings a job's total above what the
// job has cost so far.
var ErrOverpaid = errors.New("voucher pays more than the job has cost")

// lane is a channel whose record a lane keeps; the commit loop writes it.
type lane interface {
	bucket() []byte
	snapshot() Record                 // the record to write now
	committed(r Record)               // r, a snapshot, is on disk
	update(func(*Record) error) error // change the record (deposit, closed) and mark it
}

// mark queues l for the next commit and starts the commit loop if none runs.
func (s *Store) mark(l lane) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dirty[l] = struct{}{}
	s.want++
	if !s.flushing {
		s.flushing = true
		s.wg.Add(1)
		go s.commitLoop()
	}
}

// err is the store's sticky commit failure.
func (s *Store) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failed
}

// commitLoop writes the marked lanes, one transaction per round, until none
// is marked.
func (s *Store) commitLoop() {
	defer s.wg.Done()
	for {
		s.mu.Lock()
		if len(s.dirty) == 0 || s.failed != nil {
			s.flushing = false
			s.cond.Broadcast()
			s.mu.Unlock()
			return
		}
		batch := make([]lane, 0, len(s.dirty))
		for l := range s.dirty {
			batch = append(batch, l)
		}
		clear(s.dirty)
		upto := s.want
		s.mu.Unlock()

		recs := make([]Record, len(batch))
		var client, worker bool
		for i, l := range batch {
			recs[i] = l.snapshot()
			if bytes.Equal(l.bucket(), bucketClient) {
				client = true
			} else {
				worker = true
			}
		}
		err := s.db.Update(func(tx *bolt.Tx) error {
			for i, l := range batch {
				old, err := s.get(tx, l.bucket(), recs[i].Channel.ID)
				if err == nil && old.Seqno > recs[i].Seqno {
					return fmt.Errorf("channel %s: the file holds seqno %d, newer than the lane's %d", old.Channel.ID, old.Seqno, recs[i].Seqno)
				}
				if err := s.put(tx, l.bucket(), recs[i]); err != nil {
					return err
				}
			}
			if client {
				crashHook("pay:signed")
			}
			if worker {
				crashHook("accept:signed")
			}
			return nil
		})
		if err == nil {
			if client {
				crashHook("pay:committed")
			}
			if worker {
				crashHook("accept:committed")
			}
			for i, l := range batch {
				l.committed(recs[i])
			}
		}
		s.mu.Lock()
		if err != nil {
			s.failed = fmt.Errorf("commit channel states: %w", err)
			s.log.Error("channel store: commit failed; no more payments until restart", "err", err)
		} else {
			s.done = upto
		}
		s.cond.Broadcast()
		s.mu.Unlock()
	}
}

// Flush waits until every lane change made before the call is on disk.
func (s *Store) Flush() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	upto := s.want
	for s.done < upto && s.failed == nil {
		s.cond.Wait()
	}
	return s.failed
}

// loaded returns the lane of channel id in bucket, or nil; s.mu is held.
func (s *Store) loaded(bucket []byte, id ChannelID) lane {
	if bytes.Equal(bucket, bucketClient) {
		if l, ok := s.payers[id]; ok {
			return l
		}
		return nil
	}
	if l, ok := s.payees[id]; ok {
		return l
	}
	return nil
}

// ---- client side ----

// Payer is the client side (party A) of its channels: it signs vouchers,
// through one PayerLane per channel.
type Payer struct {
	s *Store
	w *Wallet
}

// Payer returns the client side of the store, signing with w's key.
func (s *Store) Payer(w *Wallet) *Payer { return &Payer{s: s, w: w} }

// AddChannel records a channel this node opened as client with deposit
// (again with a larger deposit after a top-up).
func (p *Payer) AddChannel(ch Channel, deposit uint64) error {
	if !ch.ClientKey.Equal(p.w.PublicKey()) {
		return fmt.Errorf("channel %s: client key is not this wallet's", ch.ID)
	}
	return p.s.add(bucketClient, ch, deposit)
}

// Lane returns the lane of channel id, loading it from the file on first use.
// Every payment on the channel goes through it.
func (p *Payer) Lane(id ChannelID) (*PayerLane, error) {
	return loadLane(p.s, p.s.payers, bucketClient, id, "client", func(ch Channel) bool { return ch.ClientKey.Equal(p.w.PublicKey()) },
		func(r Record) *PayerLane { return &PayerLane{s: p.s, w: p.w, rec: r, jobs: make(map[[16]byte]uint64)} })
}

// loadLane returns the lane of channel id in lanes, or loads its record from
// bucket and makes one with mk, if the channel is this side's (own).
func loadLane[L any](s *Store, lanes map[ChannelID]L, bucket []byte, id ChannelID, side string, own func(Channel) bool, mk func(Record) L) (L, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l, ok := lanes[id]; ok {
		return l, nil
	}
	var none L
	r, err := s.latest(bucket, id)
	if err != nil {
		return none, err
	}
	if !own(r.Channel) {
		return none, fmt.Errorf("channel %s: %s key is not this wallet's", id, side)
	}
	l := mk(r)
	lanes[id] = l
	return l, nil
}

// Pay signs the state of channel id with cumulative amount total (nanoTON,
// over the channel's life) and returns its encoding once it is on disk.
// Paying the current total again returns the newest voucher unchanged. It
// refuses a total below the current one or above the deposit.
func (p *Payer) Pay(id ChannelID, total uint64) ([]byte, error) {
	l, err := p.Lane(id)
	if err != nil {
		return nil, err
	}
	b, _, err := l.payChannel(func(r Record) (uint64, error) { return total, nil })
	if err != nil {
		return nil, err
	}
	return b, p.s.Flush()
}

// Increase pays delta more than the current total, like Pay, and returns the
// voucher and the new total.
func (p *Payer) Increase(id ChannelID, delta uint64) ([]byte, uint64, error) {
	l, err := p.Lane(id)
	if err != nil {
		return nil, 0, err
	}
	b, total, err := l.payChannel(func(r Record) (uint64, error) {
		if r.Sent+delta < r.Sent {
			return 0, fmt.Errorf("pay on channel %s: amount overflows", id)
		}
		return r.Sent + delta, nil
	})
	if err != nil {
		return nil, 0, err
	}
	return b, total, p.s.Flush()
}

// Flush waits until every state signed before the call is on disk.
func (p *Payer) Flush() error { return p.s.Flush() }

// Latest returns the stored record of channel id (what is on disk).
func (p *Payer) Latest(id ChannelID) (Record, error) { return p.s.latest(bucketClient, id) }

// Channels lists the client-side channels as stored, newest first.
func (p *Payer) Channels() ([]Record, error) { return p.s.list(bucketClient) }

// MarkClosed stops payments on channel id.
func (p *Payer) MarkClosed(id ChannelID) error {
	l, err := p.Lane(id)
	if err != nil {
		return err
	}
	return p.s.markClosed(l)
}

// CloseState returns the cooperative close for the newest state (worker paid
// Sent, client keeps the rest) and the client's signature of it.
func (p *Payer) CloseState(id ChannelID) (CloseState, [64]byte, error) {
	if err := p.s.Flush(); err != nil {
		return CloseState{}, [64]byte{}, err
	}
	r, err := p.Latest(id)
	if err != nil {
		return CloseState{}, [64]byte{}, err
	}
	cs := CloseState{ChannelID: id, BalanceA: r.Deposit - r.Sent, BalanceB: r.Sent, SeqnoA: r.Seqno + 1, SeqnoB: 1}
	return cs, cs.Sign(p.w.PrivateKey()), nil
}

// PayerLane owns one channel's money on the client's side: each job's total,
// the channel's cumulative state that pays them all, and the order of its
// seqnos. It is safe for concurrent use by any number of jobs.
type PayerLane struct {
	s *Store
	w *Wallet

	mu   sync.Mutex
	rec  Record              // the newest state signed; the commit loop writes it
	jobs map[[16]byte]uint64 // job → total paid for it on this lane
}

// Channel returns the lane's channel.
func (l *PayerLane) Channel() Channel { return l.rec.Channel }

// Record returns the lane's newest state (which may not be on disk yet).
func (l *PayerLane) Record() Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rec
}

// Pay signs the channel's next state, raised by what job's total rises to
// total, and returns its encoding without waiting for the disk (the commit
// loop writes it; see the crash bound in the package's lane notes). A total
// equal to the job's current one returns the newest voucher.
func (l *PayerLane) Pay(job [16]byte, total uint64) ([]byte, error) {
	if err := l.s.err(); err != nil {
		return nil, err
	}
	l.mu.Lock()
	prev := l.jobs[job]
	if total < prev {
		l.mu.Unlock()
		return nil, fmt.Errorf("pay job %x: total %d below the %d already paid: %w", job, total, prev, ErrAmountDecreased)
	}
	if total == prev {
		v := l.rec.Voucher
		l.mu.Unlock()
		if v == nil {
			return nil, fmt.Errorf("pay job %x: nothing to pay", job)
		}
		return v, nil
	}
	next := l.rec.Sent + (total - prev)
	if next < l.rec.Sent {
		l.mu.Unlock()
		return nil, fmt.Errorf("pay job %x on channel %s: amount overflows", job, l.rec.Channel.ID)
	}
	enc, err := l.sign(next)
	if err == nil {
		l.jobs[job] = total
	}
	l.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("pay job %x: %w", job, err)
	}
	l.s.mark(l)
	return enc, nil
}

// payChannel signs the state whose total target computes, for no job.
func (l *PayerLane) payChannel(target func(Record) (uint64, error)) ([]byte, uint64, error) {
	if err := l.s.err(); err != nil {
		return nil, 0, err
	}
	l.mu.Lock()
	total, err := target(l.rec)
	if err != nil {
		l.mu.Unlock()
		return nil, 0, err
	}
	if total == l.rec.Sent && l.rec.Voucher != nil && !l.rec.Closed {
		v := l.rec.Voucher
		l.mu.Unlock()
		return v, total, nil
	}
	enc, err := l.sign(total)
	l.mu.Unlock()
	if err != nil {
		return nil, 0, err
	}
	l.s.mark(l)
	return enc, total, nil
}

// sign makes the state of cumulative amount total the lane's newest; l.mu is held.
func (l *PayerLane) sign(total uint64) ([]byte, error) {
	r, id := &l.rec, l.rec.Channel.ID
	switch {
	case r.Closed:
		return nil, fmt.Errorf("pay on channel %s: %w", id, ErrChannelClosed)
	case total < r.Sent:
		return nil, fmt.Errorf("pay %d on channel %s: %w (%d)", total, id, ErrAmountDecreased, r.Sent)
	case total > r.Deposit:
		return nil, fmt.Errorf("pay %d on channel %s: %w (%d)", total, id, ErrOverDeposit, r.Deposit)
	case r.Seqno >= maxSeqno:
		return nil, fmt.Errorf("pay on channel %s: seqno exhausted, close and reopen", id)
	}
	v, err := Voucher(id, r.Seqno+1, total, l.w)
	if err != nil {
		return nil, err
	}
	enc, err := EncodeVoucher(v)
	if err != nil {
		return nil, err
	}
	r.Seqno, r.Sent, r.Voucher = r.Seqno+1, total, enc
	return enc, nil
}

// Sync takes the newest state of the channel the worker holds (sent in its
// Accept). A state this client signed that is newer than the lane's, which a
// crash took from the client's file after it reached the worker, becomes the
// lane's, so that the next state follows it. A state the client did not sign,
// or one that contradicts the lane (the same seqno with another amount, an
// older seqno with a larger one), is an error: the worker lies or the client's
// file was replaced.
func (l *PayerLane) Sync(state []byte) error {
	if len(state) == 0 {
		return nil
	}
	v, err := DecodeVoucher(state)
	if err != nil {
		return fmt.Errorf("worker's channel state: %w", err)
	}
	ch := l.rec.Channel
	if v.State.ChannelID != ch.ID {
		return fmt.Errorf("worker's channel state is of channel %s, not %s: %w", v.State.ChannelID, ch.ID, ErrUnknownChannel)
	}
	if !v.Verify(ch.ClientKey) {
		return fmt.Errorf("worker's channel state on %s: %w", ch.ID, ErrBadSignature)
	}
	seq, sent := v.State.Data.Seqno, v.State.Data.Sent
	l.mu.Lock()
	r := &l.rec
	switch {
	case seq < r.Seqno && sent <= r.Sent, seq == r.Seqno && sent == r.Sent:
		l.mu.Unlock()
		return nil // the lane is as new or newer
	case seq <= r.Seqno:
		l.mu.Unlock()
		return fmt.Errorf("worker's channel state on %s (seqno %d, %d nanoTON) contradicts the client's (seqno %d, %d): %w",
			ch.ID, seq, sent, r.Seqno, r.Sent, ErrStaleVoucher)
	case sent < r.Sent:
		l.mu.Unlock()
		return fmt.Errorf("worker's channel state on %s (seqno %d, %d nanoTON) is below the client's (seqno %d, %d): %w",
			ch.ID, seq, sent, r.Seqno, r.Sent, ErrAmountDecreased)
	}
	lost := sent - r.Sent
	r.Seqno, r.Sent, r.Voucher = seq, sent, append([]byte(nil), state...)
	l.mu.Unlock()
	l.s.log.Warn("channel state: continuing from the worker's newer state, which this client signed but had not stored",
		"channel", ch.ID, "seqno", seq, "unrecorded_nanoton", lost)
	l.s.mark(l)
	return nil
}

// End forgets job's total: its payments are final.
func (l *PayerLane) End(job [16]byte) {
	l.mu.Lock()
	delete(l.jobs, job)
	l.mu.Unlock()
}

func (l *PayerLane) bucket() []byte { return bucketClient }

func (l *PayerLane) snapshot() Record { return l.Record() }

func (l *PayerLane) committed(Record) {}

func (l *PayerLane) update(f func(*Record) error) error {
	l.mu.Lock()
	err := f(&l.rec)
	l.mu.Unlock()
	if err != nil {
		return err
	}
	l.s.mark(l)
	return nil
}

// markClosed closes l's channel and waits for the disk.
func (s *Store) markClosed(l lane) error {
	if err := l.update(func(r *Record) error { r.Closed = true; return nil }); err != nil {
		return err
	}
	return s.Flush()
}

// ---- worker side ----

// Payee is the worker side (party B) of its channels: it accepts vouchers,
// through one PayeeLane per channel.
type Payee struct {
	s *Store
	w *Wallet
}

// Payee returns the worker side of the store; w is the worker's channel key.
func (s *Store) Payee(w *Wallet) *Payee { return &Payee{s: s, w: w} }

// AddChannel records a channel this node is paid on, with the client's
// deposit as read from the chain (again after a top-up).
func (p *Payee) AddChannel(ch Channel, deposit uint64) error {
	if !ch.WorkerKey.Equal(p.w.PublicKey()) {
		return fmt.Errorf("channel %s: worker key is not this wallet's", ch.ID)
	}
	return p.s.add(bucketWorker, ch, deposit)
}

// Lane returns the lane of channel id, loading it from the file on first use.
func (p *Payee) Lane(id ChannelID) (*PayeeLane, error) {
	return loadLane(p.s, p.s.payees, bucketWorker, id, "worker", func(ch Channel) bool { return ch.WorkerKey.Equal(p.w.PublicKey()) },
		func(r Record) *PayeeLane {
			return &PayeeLane{s: p.s, rec: r, durable: r.Seqno, jobs: make(map[[16]byte]*PayeeJob)}
		})
}

// Accept checks a voucher against its channel (client signature, channel id,
// seqno above the newest accepted, cumulative amount not below it and not
// above the deposit), and returns the nanoTON newly paid once it is on disk.
// The same voucher sent again returns 0 and no error, so a retry after a lost
// acknowledgement is never paid twice. It attributes the payment to no job.
func (p *Payee) Accept(b []byte) (uint64, error) {
	v, err := DecodeVoucher(b)
	if err != nil {
		return 0, err
	}
	l, err := p.Lane(v.State.ChannelID)
	if err != nil {
		return 0, err
	}
	if !v.Verify(l.rec.Channel.ClientKey) {
		return 0, fmt.Errorf("voucher on channel %s: %w", l.rec.Channel.ID, ErrBadSignature)
	}
	l.mu.Lock()
	seq := l.rec.Seqno
	newly, err := l.take(v, b, true)
	l.pool -= newly // the channel's own payment: no job's
	// A state that pays nothing more is still the newest: it must be written.
	took := l.rec.Seqno != seq
	l.mu.Unlock()
	if err != nil {
		return 0, err
	}
	if took {
		l.s.mark(l)
	}
	return newly, p.s.Flush()
}

// Flush waits until every state accepted before the call is on disk.
func (p *Payee) Flush() error { return p.s.Flush() }

// Balance is the provable balance of channel id: the amount in the newest
// voucher on disk, which the worker can claim on chain.
func (p *Payee) Balance(id ChannelID) (uint64, error) {
	r, err := p.s.latest(bucketWorker, id)
	return r.Sent, err
}

// Latest returns the stored record of channel id.
func (p *Payee) Latest(id ChannelID) (Record, error) { return p.s.latest(bucketWorker, id) }

// Newest returns the newest voucher on disk of channel id, decoded.
func (p *Payee) Newest(id ChannelID) (SignedSemiChannel, error) {
	r, err := p.Latest(id)
	if err != nil {
		return SignedSemiChannel{}, err
	}
	if r.Voucher == nil {
		return SignedSemiChannel{}, fmt.Errorf("channel %s: no voucher yet", id)
	}
	return DecodeVoucher(r.Voucher)
}

// Channels lists the worker-side channels, newest first.
func (p *Payee) Channels() ([]Record, error) { return p.s.list(bucketWorker) }

// MarkClosed stops accepting vouchers on channel id.
func (p *Payee) MarkClosed(id ChannelID) error {
	l, err := p.Lane(id)
	if err != nil {
		return err
	}
	return p.s.markClosed(l)
}

// OwnState is the worker's own semi-channel, signed, as the contract needs it
// beside the client's in a dispute. The worker never pays (sent 0); its
// seqno follows the newest accepted voucher's and its counterparty data is
// that voucher's state, so the contract refuses (exit 105) any client state
// that sends less, and a challenge with it replaces a stale client state.
// Give the state taken before the first voucher to the client when the
// channel opens: with it the client can start an uncooperative close to
// recover its deposit if the worker disappears.
func (p *Payee) OwnState(id ChannelID) (SignedSemiChannel, error) {
	if err := p.s.Flush(); err != nil {
		return SignedSemiChannel{}, err
	}
	r, err := p.Latest(id)
	if err != nil {
		return SignedSemiChannel{}, err
	}
	st := SemiChannel{ChannelID: id, Data: SemiChannelBody{Seqno: r.Seqno}}
	if r.Voucher != nil {
		v, err := DecodeVoucher(r.Voucher)
		if err != nil {
			return SignedSemiChannel{}, fmt.Errorf("channel %s: stored voucher: %w", id, err)
		}
		body := v.State.Data
		st.Counterparty = &body
	}
	return SignSemiChannel(st, p.w.PrivateKey())
}

// Countersign checks a cooperative close signed by the client — the worker
// is paid at least its provable balance — and returns the worker's signature.
func (p *Payee) Countersign(cs CloseState, sigA [64]byte) ([64]byte, error) {
	if err := p.s.Flush(); err != nil {
		return [64]byte{}, err
	}
	r, err := p.Latest(cs.ChannelID)
	if err != nil {
		return [64]byte{}, err
	}
	if !cs.Verify(r.Channel.ClientKey, sigA) {
		return [64]byte{}, fmt.Errorf("close of channel %s: %w", cs.ChannelID, ErrBadSignature)
	}
	if cs.BalanceB < r.Sent {
		return [64]byte{}, fmt.Errorf("close of channel %s pays %d, below the provable %d: %w", cs.ChannelID, cs.BalanceB, r.Sent, ErrAmountDecreased)
	}
	return cs.Sign(p.w.PrivateKey()), nil
}

// PayeeLane owns one channel's money on the worker's side: the newest state
// the client signed, and how much of it each job was given. States of
// concurrent jobs may arrive in any order (each job has its own stream); the
// lane keeps the highest and attributes by what each voucher message says it
// pays, from the pool of what the states paid and no job was given yet, never
// by which job happens to be in flight. It also holds the credit the client's
// jobs have been extended, so that the worker's exposure to one client is
// bounded across its jobs (PayeeJob.Reserve).
type PayeeLane struct {
	s *Store

	mu      sync.Mutex
	rec     Record // the newest state accepted; the commit loop writes it
	durable uint64 // the seqno on disk
	pool    uint64 // nanoTON the states paid that no job was given
	jobs    map[[16]byte]*PayeeJob
	credit  int // credit tokens the open jobs hold
}

// Channel returns the lane's channel.
func (l *PayeeLane) Channel() Channel { return l.rec.Channel }

// State returns the newest voucher the lane holds (nil before the first),
// which the worker hands a client in Accept (PayerLane.Sync).
func (l *PayeeLane) State() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rec.Voucher
}

// Record returns the lane's newest state (which may not be on disk yet) and
// the nanoTON it paid that no job was given.
func (l *PayeeLane) Record() (Record, uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rec, l.pool
}

// Open starts job's account on the lane. A job ID already open is refused:
// two streams must not share an account.
func (l *PayeeLane) Open(job [16]byte) (*PayeeJob, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.rec.Closed {
		return nil, fmt.Errorf("channel %s: %w", l.rec.Channel.ID, ErrChannelClosed)
	}
	if _, ok := l.jobs[job]; ok {
		return nil, fmt.Errorf("job %x is already open on channel %s", job, l.rec.Channel.ID)
	}
	j := &PayeeJob{l: l, id: job, rose: make(chan struct{}, 1)}
	l.jobs[job] = j
	return j, nil
}

// take makes a verified state v (encoded b) the lane's newest if it is newer
// and returns what it adds to the pool; l.mu is held. A state the lane
// already superseded is fine unless strict (a channel-level Accept), as long
// as it agrees with the newer one; one that contradicts it is refused.
func (l *PayeeLane) take(v SignedSemiChannel, b []byte, strict bool) (uint64, error) {
	r, id := &l.rec, l.rec.Channel.ID
	seq, sent := v.State.Data.Seqno, v.State.Data.Sent
	switch {
	case r.Closed:
		return 0, fmt.Errorf("voucher on channel %s: %w", id, ErrChannelClosed)
	case seq == r.Seqno && sent == r.Sent && r.Voucher != nil:
		return 0, nil // a resend of the newest state
	case seq <= r.Seqno && (strict || seq == r.Seqno || sent > r.Sent): // same seqno, other amount: contradicts
		return 0, fmt.Errorf("voucher seqno %d (%d nanoTON) on channel %s: %w (seqno %d, %d nanoTON)", seq, sent, id, ErrStaleVoucher, r.Seqno, r.Sent)
	case seq <= r.Seqno:
		return 0, nil // superseded: its amount is in the newer state
	case sent < r.Sent:
		return 0, fmt.Errorf("voucher amount %d on channel %s: %w (%d)", sent, id, ErrAmountDecreased, r.Sent)
	case sent > r.Deposit:
		return 0, fmt.Errorf("voucher amount %d on channel %s: %w (%d)", sent, id, ErrOverDeposit, r.Deposit)
	}
	newly := sent - r.Sent
	r.Seqno, r.Sent, r.Voucher = seq, sent, append([]byte(nil), b...)
	l.pool += newly
	return newly, nil
}

func (l *PayeeLane) bucket() []byte { return bucketWorker }

func (l *PayeeLane) snapshot() Record {
	r, _ := l.Record()
	return r
}

// committed makes the jobs' totals that r's state covers durable.
func (l *PayeeLane) committed(r Record) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if r.Seqno < l.durable {
		return
	}
	l.durable = r.Seqno
	for _, j := range l.jobs {
		n := 0
		for _, p := range j.pending {
			if p.seq > l.durable {
				break
			}
			j.durable, n = p.total, n+1
		}
		if n > 0 {
			j.pending = j.pending[n:]
			j.signal()
		}
	}
}

func (l *PayeeLane) update(f func(*Record) error) error {
	l.mu.Lock()
	err := f(&l.rec)
	l.mu.Unlock()
	if err != nil {
		return err
	}
	l.s.mark(l)
	return nil
}

// PayeeJob is one job's account on a PayeeLane: what the client's vouchers
// attributed to it, how much of that is on disk, and the credit it holds.
type PayeeJob struct {
	l  *PayeeLane
	id [16]byte

	// guarded by l.mu
	total   uint64 // attributed to the job
	durable uint64 // of total, covered by a state on disk
	pending []pendingTotal
	credit  int
	closed  bool
	rose    chan struct{} // receives when durable rises
}

type pendingTotal struct {
	seq   uint64 // the state that must be on disk
	total uint64 // the job's total then
}

// signal wakes the job's waiter; l.mu is held.
func (j *PayeeJob) signal() {
	select {
	case j.rose <- struct{}{}:
	default:
	}
}

// Reserve holds up to want credit tokens for the job within limit, the
// credit the client's open jobs on the lane may hold together, and returns
// what it got: want, what is left of limit, or 0 when less than least is
// left (the job should be refused as busy). limit ≤ 0 is no bound.
func (j *PayeeJob) Reserve(want, least, limit int) int {
	l := j.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if j.closed {
		return 0 // a closed job holds no credit: none to release later
	}
	got := want
	if limit > 0 {
		got = min(want, limit-l.credit)
	}
	if got < max(least, 1) {
		return 0
	}
	j.credit += got
	l.credit += got
	return got
}

// Accept takes voucher b, which the client says brings the job's total to
// total nanoTON, where the job has cost at most most so far. The voucher's
// state need not be the newest (another job's may have arrived first); the
// job is given total minus what it had, from what the channel's states paid
// beyond what the other jobs were given. It returns what the job was given
// (0 for a resend); Durable says when that is on disk.
func (j *PayeeJob) Accept(b []byte, total, most uint64) (uint64, error) {
	v, err := DecodeVoucher(b)
	if err != nil {
		return 0, err
	}
	l := j.l
	ch := l.rec.Channel
	if v.State.ChannelID != ch.ID {
		return 0, fmt.Errorf("voucher of channel %s on channel %s: %w", v.State.ChannelID, ch.ID, ErrUnknownChannel)
	}
	if !v.Verify(ch.ClientKey) {
		return 0, fmt.Errorf("voucher on channel %s: %w", ch.ID, ErrBadSignature)
	}
	l.mu.Lock()
	seq := l.rec.Seqno
	_, err = l.take(v, b, false)
	took := l.rec.Seqno != seq // the newest state changed, if by 0 nanoTON: write it
	if err == nil {
		switch {
		case j.closed:
			err = fmt.Errorf("job %x is closed", j.id)
		case total < j.total:
			err = fmt.Errorf("job %x: total %d below the %d it was paid: %w", j.id, total, j.total, ErrAmountDecreased)
		case total > most:
			err = fmt.Errorf("job %x: total %d above the %d it has cost: %w", j.id, total, most, ErrOverpaid)
		case total-j.total > l.pool:
			err = fmt.Errorf("job %x: %d more attributed, the states pay %d no job was given: %w", j.id, total-j.total, l.pool, ErrUnpaid)
		}
	}
	var given uint64
	if err == nil {
		given = total - j.total
		l.pool -= given
		j.total = total
		if l.rec.Seqno <= l.durable {
			j.durable = total
			j.signal()
		} else if given > 0 {
			j.pending = append(j.pending, pendingTotal{seq: l.rec.Seqno, total: total})
		}
	}
	l.mu.Unlock()
	if took {
		l.s.mark(l)
	}
	return given, err
}

// Durable returns the job's total that a state on disk covers, and a channel
// that receives when it rises.
func (j *PayeeJob) Durable() (uint64, <-chan struct{}) {
	j.l.mu.Lock()
	defer j.l.mu.Unlock()
	return j.durable, j.rose
}

// Total returns what was attributed to the job.
func (j *PayeeJob) Total() uint64 {
	j.l.mu.Lock()
	defer j.l.mu.Unlock()
	return j.total
}

// Close releases the job's credit and ends its account; what it was given
// stays paid.
func (j *PayeeJob) Close() {
	l := j.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if j.closed {
		return
	}
	j.closed = true
	l.credit -= j.credit
	j.credit = 0
	delete(l.jobs, j.id)
}
