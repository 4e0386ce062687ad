package devledger

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/xssnick/tonutils-go/address"
	"github.com/xssnick/tonutils-go/tlb"
	"github.com/xssnick/tonutils-go/tvm"
	"github.com/xssnick/tonutils-go/tvm/cell"
)

// snapshot is the ledger's state file (JSON).
type snapshot struct {
	Note     string        `json:"note"`
	LT       uint64        `json:"lt"`
	OffsetS  int64         `json:"offset_seconds"`
	Seq      uint64        `json:"seq"`
	Accounts []snapAccount `json:"accounts"`
}

type snapAccount struct {
	Addr     string `json:"addr"`
	Account  []byte `json:"account"` // BOC of the Account cell
	LastHash []byte `json:"last_hash"`
	LastLT   uint64 `json:"last_lt"`
	Stat     []byte `json:"stat,omitempty"` // BOC of the storage-stat dict
}

// Save writes the ledger to path atomically (temporary file, fsync, rename).
func (d *Ledger) Save(path string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.saveLocked(path)
}

func (d *Ledger) saveLocked(path string) error {
	s := snapshot{Note: Label, LT: d.lt, OffsetS: int64(d.offset / time.Second), Seq: d.seq}
	for _, a := range d.accounts {
		sh := a.acc.ShardAccount()
		sa := snapAccount{Addr: a.addr.StringRaw(), Account: sh.Account.ToBOC(), LastHash: sh.LastTransHash, LastLT: sh.LastTransLT}
		if a.stat != nil {
			sa.Stat = a.stat.ToBOC()
		}
		s.Accounts = append(s.Accounts, sa)
	}
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("devledger: save: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".devledger-*")
	if err != nil {
		return fmt.Errorf("devledger: save: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("devledger: save: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("devledger: save: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("devledger: save: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("devledger: save: %w", err)
	}
	return nil
}

// Load replaces the ledger's state with the file at path.
func (d *Ledger) Load(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("devledger: load: %w", err)
	}
	var s snapshot
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("devledger: load %s: %w", path, err)
	}
	accounts := map[string]*account{}
	for _, sa := range s.Accounts {
		addr, err := address.ParseRawAddr(sa.Addr)
		if err != nil {
			return fmt.Errorf("devledger: load %s: %w", path, err)
		}
		ac, err := cell.FromBOC(sa.Account)
		if err != nil {
			return fmt.Errorf("devledger: load %s: account %s: %w", path, sa.Addr, err)
		}
		p, err := tvm.PrepareAccount(&tlb.ShardAccount{Account: ac, LastTransHash: sa.LastHash, LastTransLT: sa.LastLT}, addr)
		if err != nil {
			return fmt.Errorf("devledger: load %s: account %s: %w", path, sa.Addr, err)
		}
		a := &account{addr: addr, acc: p}
		if sa.Stat != nil {
			if a.stat, err = cell.FromBOC(sa.Stat); err != nil {
				return fmt.Errorf("devledger: load %s: account %s: %w", path, sa.Addr, err)
			}
		}
		accounts[key(addr)] = a
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.accounts, d.lt, d.offset, d.seq = accounts, s.LT, time.Duration(s.OffsetS)*time.Second, s.Seq
	return nil
}

// PersistTo makes the ledger save itself to path after every change; errors are logged.
func (d *Ledger) PersistTo(path string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.onChange = func() {
		if err := d.saveLocked(path); err != nil {
			d.log.Error("save state", "path", path, "err", err)
		}
	}
}
