package settle

import (
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Store keeps channels and their newest signed states in a bbolt file. Every
// update is one bbolt transaction, committed with fsync before the call
// returns: a voucher is durable before Pay returns it for sending, and
// before Accept returns the amount the worker may acknowledge. After a
// crash (kill -9 at any point) the store holds the newest state whose call
// returned, or that state's successor if the crash came after the commit;
// never a torn record.
type Store struct {
	db  *bolt.DB
	log *slog.Logger
}

var (
	bucketClient = []byte("client") // channels this node pays on (party A)
	bucketWorker = []byte("worker") // channels this node is paid on (party B)
)

// crashHook is called at named points of Pay and Accept; tests set it to kill
// the process there. Points: "pay:signed" (inside the transaction, before
// commit), "pay:committed" (after fsync, before return), and the same for
// "accept:".
var crashHook = func(string) {}

// OpenStore opens (creating if needed) the store at path, mode 0600.
func OpenStore(path string, log *slog.Logger) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open channel store %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketClient, bucketWorker} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("open channel store %s: %w", path, err)
	}
	if log == nil {
		log = slog.Default()
	}
	return &Store{db: db, log: log.With("subsys", "settle")}, nil
}

// Check runs bbolt's consistency check over the whole file (page
// references, freelist, ordering) and returns the first problem found.
func (s *Store) Check() error {
	return s.db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return fmt.Errorf("channel store check: %w", err)
		}
		return nil
	})
}

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

// Record is a channel as one side stores it.
type Record struct {
	Channel Channel
	// Deposit is party A's balance in the contract (what vouchers may not exceed).
	Deposit uint64
	// Seqno and Sent are the newest signed state (0, 0 before the first voucher).
	Seqno, Sent uint64
	// Voucher is that state's encoding (nil before the first voucher).
	Voucher []byte
	Closed  bool
	Updated time.Time
}

type recordJSON struct {
	ID         string        `json:"id"`
	ClientKey  string        `json:"client_key"`
	WorkerKey  string        `json:"worker_key"`
	ClientAddr string        `json:"client_addr"`
	WorkerAddr string        `json:"worker_addr"`
	Closing    ClosingConfig `json:"closing"`
	ExcessFee  uint64        `json:"excess_fee"`
	Deposit    uint64        `json:"deposit"`
	Seqno      uint64        `json:"seqno"`
	Sent       uint64        `json:"sent"`
	Voucher    []byte        `json:"voucher,omitempty"`
	Closed     bool          `json:"closed,omitempty"`
	Updated    time.Time     `json:"updated"`
}

func (r Record) marshal() ([]byte, error) {
	return json.Marshal(recordJSON{
		ID: r.Channel.ID.String(), ClientKey: hex.EncodeToString(r.Channel.ClientKey),
		WorkerKey: hex.EncodeToString(r.Channel.WorkerKey), ClientAddr: Friendly(r.Channel.ClientAddr),
		WorkerAddr: Friendly(r.Channel.WorkerAddr), Closing: r.Channel.Closing, ExcessFee: r.Channel.ExcessFee,
		Deposit: r.Deposit, Seqno: r.Seqno, Sent: r.Sent, Voucher: r.Voucher, Closed: r.Closed, Updated: r.Updated,
	})
}

func unmarshalRecord(b []byte) (Record, error) {
	var j recordJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return Record{}, err
	}
	id, err := ParseChannelID(j.ID)
	if err != nil {
		return Record{}, err
	}
	ka, err := hex.DecodeString(j.ClientKey)
	if err != nil || len(ka) != ed25519.PublicKeySize {
		return Record{}, errors.New("bad client key")
	}
	kb, err := hex.DecodeString(j.WorkerKey)
	if err != nil || len(kb) != ed25519.PublicKeySize {
		return Record{}, errors.New("bad worker key")
	}
	aa, err := ParseAddress(j.ClientAddr)
	if err != nil {
		return Record{}, err
	}
	ab, err := ParseAddress(j.WorkerAddr)
	if err != nil {
		return Record{}, err
	}
	return Record{
		Channel: Channel{ID: id, ClientKey: ka, WorkerKey: kb, ClientAddr: aa, WorkerAddr: ab, Closing: j.Closing, ExcessFee: j.ExcessFee},
		Deposit: j.Deposit, Seqno: j.Seqno, Sent: j.Sent, Voucher: j.Voucher, Closed: j.Closed, Updated: j.Updated,
	}, nil
}

func (s *Store) put(tx *bolt.Tx, bucket []byte, r Record) error {
	r.Updated = time.Now().UTC()
	b, err := r.marshal()
	if err != nil {
		return err
	}
	return tx.Bucket(bucket).Put(r.Channel.ID[:], b)
}

func (s *Store) get(tx *bolt.Tx, bucket []byte, id ChannelID) (Record, error) {
	b := tx.Bucket(bucket).Get(id[:])
	if b == nil {
		return Record{}, fmt.Errorf("channel %s: %w", id, ErrUnknownChannel)
	}
	r, err := unmarshalRecord(b)
	if err != nil {
		return Record{}, fmt.Errorf("channel %s: stored record: %w", id, err)
	}
	return r, nil
}

func (s *Store) add(bucket []byte, ch Channel, deposit uint64) error {
	if err := ch.Validate(); err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		r, err := s.get(tx, bucket, ch.ID)
		switch {
		case errors.Is(err, ErrUnknownChannel):
			return s.put(tx, bucket, Record{Channel: ch, Deposit: deposit})
		case err != nil:
			return err
		}
		if !r.Channel.ClientKey.Equal(ch.ClientKey) || !r.Channel.WorkerKey.Equal(ch.WorkerKey) {
			return fmt.Errorf("channel %s: already stored with other keys", ch.ID)
		}
		if deposit < r.Sent {
			return fmt.Errorf("channel %s: deposit %d below the %d already signed", ch.ID, deposit, r.Sent)
		}
		r.Deposit = deposit
		return s.put(tx, bucket, r)
	})
}

func (s *Store) list(bucket []byte) ([]Record, error) {
	var out []Record
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).ForEach(func(k, v []byte) error {
			r, err := unmarshalRecord(v)
			if err != nil {
				return fmt.Errorf("channel %x: stored record: %w", k, err)
			}
			out = append(out, r)
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Updated.After(out[j].Updated) })
	return out, err
}

func (s *Store) latest(bucket []byte, id ChannelID) (Record, error) {
	var r Record
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		r, err = s.get(tx, bucket, id)
		return err
	})
	return r, err
}

func (s *Store) markClosed(bucket []byte, id ChannelID) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		r, err := s.get(tx, bucket, id)
		if err != nil {
			return err
		}
		r.Closed = true
		return s.put(tx, bucket, r)
	})
}

// Payer is the client side (party A) of its channels: it signs vouchers.
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

// Pay signs the next state of channel id with cumulative amount total
// (nanoTON, over the channel's life), stores it with fsync and only then
// returns its encoding for sending. Paying the current total again returns
// the stored voucher unchanged. It refuses a total below the current one or
// above the deposit.
func (p *Payer) Pay(id ChannelID, total uint64) ([]byte, error) {
	b, _, err := p.pay(id, func(Record) (uint64, error) { return total, nil })
	return b, err
}

// pay signs the state whose total target computes from the stored record,
// all in one bbolt transaction.
func (p *Payer) pay(id ChannelID, target func(Record) (uint64, error)) ([]byte, uint64, error) {
	var out []byte
	var total uint64
	fresh := false
	err := p.s.db.Update(func(tx *bolt.Tx) error {
		r, err := p.s.get(tx, bucketClient, id)
		if err != nil {
			return err
		}
		if total, err = target(r); err != nil {
			return err
		}
		switch {
		case r.Closed:
			return fmt.Errorf("pay on channel %s: %w", id, ErrChannelClosed)
		case total < r.Sent:
			return fmt.Errorf("pay %d on channel %s: %w (%d)", total, id, ErrAmountDecreased, r.Sent)
		case total > r.Deposit:
			return fmt.Errorf("pay %d on channel %s: %w (%d)", total, id, ErrOverDeposit, r.Deposit)
		case total == r.Sent && r.Voucher != nil:
			out = r.Voucher
			return nil
		case r.Seqno >= maxSeqno:
			return fmt.Errorf("pay on channel %s: seqno exhausted, close and reopen", id)
		}
		v, err := Voucher(id, r.Seqno+1, total, p.w)
		if err != nil {
			return err
		}
		enc, err := EncodeVoucher(v)
		if err != nil {
			return err
		}
		r.Seqno, r.Sent, r.Voucher = r.Seqno+1, total, enc
		if err := p.s.put(tx, bucketClient, r); err != nil {
			return err
		}
		crashHook("pay:signed")
		out, fresh = enc, true
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	if fresh {
		crashHook("pay:committed")
	}
	return out, total, nil
}

// Increase pays delta more than the current total and returns the voucher and the new total.
func (p *Payer) Increase(id ChannelID, delta uint64) ([]byte, uint64, error) {
	return p.pay(id, func(r Record) (uint64, error) {
		if r.Sent+delta < r.Sent {
			return 0, fmt.Errorf("pay on channel %s: amount overflows", id)
		}
		return r.Sent + delta, nil
	})
}

// Latest returns the stored record of channel id.
func (p *Payer) Latest(id ChannelID) (Record, error) { return p.s.latest(bucketClient, id) }

// Channels lists the client-side channels, newest first.
func (p *Payer) Channels() ([]Record, error) { return p.s.list(bucketClient) }

// MarkClosed stops payments on channel id.
func (p *Payer) MarkClosed(id ChannelID) error { return p.s.markClosed(bucketClient, id) }

// CloseState returns the cooperative close for the newest state (worker paid
// Sent, client keeps the rest) and the client's signature of it.
func (p *Payer) CloseState(id ChannelID) (CloseState, [64]byte, error) {
	r, err := p.Latest(id)
	if err != nil {
		return CloseState{}, [64]byte{}, err
	}
	cs := CloseState{ChannelID: id, BalanceA: r.Deposit - r.Sent, BalanceB: r.Sent, SeqnoA: r.Seqno + 1, SeqnoB: 1}
	return cs, cs.Sign(p.w.PrivateKey()), nil
}

// Payee is the worker side (party B) of its channels: it accepts vouchers.
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

// Accept checks a voucher against its channel — client signature, channel
// id, seqno above the newest accepted, cumulative amount not below it and
// not above the deposit — stores it with fsync and only then returns the
// nanoTON newly paid. The same voucher sent again returns 0 and no error,
// so a retry after a lost acknowledgement is never paid twice.
func (p *Payee) Accept(b []byte) (uint64, error) {
	v, err := DecodeVoucher(b)
	if err != nil {
		return 0, err
	}
	id := v.State.ChannelID
	var newly uint64
	fresh := false
	err = p.s.db.Update(func(tx *bolt.Tx) error {
		r, err := p.s.get(tx, bucketWorker, id)
		if err != nil {
			return err
		}
		if !v.Verify(r.Channel.ClientKey) {
			return fmt.Errorf("voucher on channel %s: %w", id, ErrBadSignature)
		}
		seq, sent := v.State.Data.Seqno, v.State.Data.Sent
		switch {
		case r.Closed:
			return fmt.Errorf("voucher on channel %s: %w", id, ErrChannelClosed)
		case seq == r.Seqno && sent == r.Sent && r.Voucher != nil:
			newly = 0 // a resend of the newest state
			return nil
		case seq <= r.Seqno:
			return fmt.Errorf("voucher seqno %d on channel %s: %w (%d)", seq, id, ErrStaleVoucher, r.Seqno)
		case sent < r.Sent:
			return fmt.Errorf("voucher amount %d on channel %s: %w (%d)", sent, id, ErrAmountDecreased, r.Sent)
		case sent > r.Deposit:
			return fmt.Errorf("voucher amount %d on channel %s: %w (%d)", sent, id, ErrOverDeposit, r.Deposit)
		}
		newly = sent - r.Sent
		r.Seqno, r.Sent, r.Voucher = seq, sent, append([]byte(nil), b...)
		if err := p.s.put(tx, bucketWorker, r); err != nil {
			return err
		}
		crashHook("accept:signed")
		fresh = true
		return nil
	})
	if err != nil {
		return 0, err
	}
	if fresh {
		crashHook("accept:committed")
	}
	return newly, nil
}

// Balance is the provable balance of channel id: the amount in the newest
// accepted voucher, which the worker can claim on chain.
func (p *Payee) Balance(id ChannelID) (uint64, error) {
	r, err := p.s.latest(bucketWorker, id)
	return r.Sent, err
}

// Latest returns the stored record of channel id.
func (p *Payee) Latest(id ChannelID) (Record, error) { return p.s.latest(bucketWorker, id) }

// Newest returns the newest accepted voucher of channel id, decoded.
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
func (p *Payee) MarkClosed(id ChannelID) error { return p.s.markClosed(bucketWorker, id) }

// OwnState is the worker's own semi-channel, signed, as the contract needs it
// beside the client's in a dispute. The worker never pays (sent 0); its
// seqno follows the newest accepted voucher's and its counterparty data is
// that voucher's state, so the contract refuses (exit 105) any client state
// that sends less, and a challenge with it replaces a stale client state.
// Give the state taken before the first voucher to the client when the
// channel opens: with it the client can start an uncooperative close to
// recover its deposit if the worker disappears.
func (p *Payee) OwnState(id ChannelID) (SignedSemiChannel, error) {
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
