package settle

import (
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Store keeps channels and their newest signed states in a bbolt file. A
// channel in use has a lane (PayerLane, PayeeLane) that owns its money in
// memory; the store's commit loop writes every lane changed since its last
// commit in one bbolt transaction with one fsync (group commit), so that
// concurrent jobs share a disk write and none waits for its own. Flush
// waits for what was changed before it was called. After a crash (kill -9 at
// any point) the store holds, for each channel, a state no older than the
// newest one Flush returned on, never a torn record.
type Store struct {
	db  *bolt.DB
	log *slog.Logger

	mu       sync.Mutex // guards the fields below
	payers   map[ChannelID]*PayerLane
	payees   map[ChannelID]*PayeeLane
	dirty    map[lane]struct{}
	flushing bool       // a commit loop runs
	want     uint64     // changes marked so far
	done     uint64     // changes committed so far
	failed   error      // a commit failed: the store takes no more changes
	cond     *sync.Cond // signalled when done or failed changes
	wg       sync.WaitGroup
}

var (
	bucketClient = []byte("client") // channels this node pays on (party A)
	bucketWorker = []byte("worker") // channels this node is paid on (party B)
)

// crashHook is called at named points of the commit loop; tests set it to
// kill the process there. Points: "pay:signed" (a client-side state is in
// the transaction, before commit), "pay:committed" (after the fsync), and the
// same for "accept:" on the worker's side.
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
	s := &Store{db: db, log: log.With("subsys", "settle"), payers: map[ChannelID]*PayerLane{},
		payees: map[ChannelID]*PayeeLane{}, dirty: map[lane]struct{}{}}
	s.cond = sync.NewCond(&s.mu)
	return s, nil
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

// Close commits what the lanes changed and closes the file.
func (s *Store) Close() error {
	ferr := s.Flush()
	s.wg.Wait()
	return errors.Join(ferr, s.db.Close())
}

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
	s.mu.Lock()
	l := s.loaded(bucket, ch.ID)
	if l == nil {
		// No lane holds the channel: the file is the only copy. The store's
		// lock keeps a lane from loading it meanwhile.
		defer s.mu.Unlock()
		return s.db.Update(func(tx *bolt.Tx) error {
			r, err := s.get(tx, bucket, ch.ID)
			switch {
			case errors.Is(err, ErrUnknownChannel):
				return s.put(tx, bucket, Record{Channel: ch, Deposit: deposit})
			case err != nil:
				return err
			}
			if err := r.redeposit(ch, deposit); err != nil {
				return err
			}
			return s.put(tx, bucket, r)
		})
	}
	s.mu.Unlock()
	if err := l.update(func(r *Record) error { return r.redeposit(ch, deposit) }); err != nil {
		return err
	}
	return s.Flush()
}

// redeposit checks that ch is r's channel and sets its deposit.
func (r *Record) redeposit(ch Channel, deposit uint64) error {
	if !r.Channel.ClientKey.Equal(ch.ClientKey) || !r.Channel.WorkerKey.Equal(ch.WorkerKey) {
		return fmt.Errorf("channel %s: already stored with other keys", ch.ID)
	}
	if deposit < r.Sent {
		return fmt.Errorf("channel %s: deposit %d below the %d already signed", ch.ID, deposit, r.Sent)
	}
	r.Deposit = deposit
	return nil
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
