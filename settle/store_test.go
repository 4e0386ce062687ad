package settle

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestWalletKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "wallet.key")
	addr, err := CreateWalletKey(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	if _, err := CreateWalletKey(path); err == nil {
		t.Fatal("CreateWalletKey overwrote an existing key")
	}
	w, err := LoadWallet(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := Friendly(w.Address(MainnetGlobalID)); got != addr {
		t.Fatalf("loaded wallet address %s, created %s", got, addr)
	}
	if w.Address(MainnetGlobalID).Equals(w.Address(TestnetGlobalID)) {
		t.Fatal("V5R1 address does not depend on the network id")
	}
	os.Chmod(path, 0o644)
	if _, err := LoadWallet(path); err == nil {
		t.Fatal("loaded a key readable by others")
	}
	bad := filepath.Join(t.TempDir(), "bad.key")
	os.WriteFile(bad, []byte("one two three\n"), 0o600)
	if _, err := LoadWallet(bad); err == nil {
		t.Fatal("loaded a 3-word mnemonic")
	}
}

func TestPayAccept(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	st, err := OpenStore(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	payer := st.Payer(NewWallet(crashClientKey))
	payee := st.Payee(NewWallet(crashWorkerKey))
	ch := crashChannel
	if err := payer.AddChannel(ch, 1000); err != nil {
		t.Fatal(err)
	}
	if err := payee.AddChannel(ch, 1000); err != nil {
		t.Fatal(err)
	}
	if err := payee.AddChannel(ch, 1000); err != nil {
		t.Fatalf("adding a known channel again: %v", err)
	}
	if err := st.Payee(NewWallet(crashClientKey)).AddChannel(ch, 1000); err == nil {
		t.Fatal("worker side accepted a channel whose worker key is not its own")
	}
	v1, err := payer.Pay(ch.ID, 100)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := payee.Accept(v1); n != 100 || err != nil {
		t.Fatalf("Accept(v1) = %d, %v; want 100", n, err)
	}
	if n, err := payee.Accept(v1); n != 0 || err != nil {
		t.Fatalf("Accept(v1) again = %d, %v; want 0, nil (a resend is never paid twice)", n, err)
	}
	if again, _ := payer.Pay(ch.ID, 100); string(again) != string(v1) {
		t.Fatal("paying the same total signed a new voucher")
	}
	v2, _, err := payer.Increase(ch.ID, 250)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := payee.Accept(v2); n != 250 || err != nil {
		t.Fatalf("Accept(v2) = %d, %v; want 250", n, err)
	}
	if n, err := payee.Accept(v1); !errors.Is(err, ErrStaleVoucher) || n != 0 {
		t.Fatalf("Accept(old v1) = %d, %v; want ErrStaleVoucher", n, err)
	}
	// Same seqno as the newest, other amount: equivocation, refused.
	eq, _ := Voucher(ch.ID, 2, 400, NewWallet(crashClientKey))
	eqb, _ := EncodeVoucher(eq)
	if _, err := payee.Accept(eqb); !errors.Is(err, ErrStaleVoucher) {
		t.Fatalf("Accept(same seqno, other amount) = %v; want ErrStaleVoucher", err)
	}
	if _, err := payer.Pay(ch.ID, 349); !errors.Is(err, ErrAmountDecreased) {
		t.Fatalf("Pay(less) = %v", err)
	}
	if _, err := payer.Pay(ch.ID, 1001); !errors.Is(err, ErrOverDeposit) {
		t.Fatalf("Pay(over deposit) = %v", err)
	}
	if bal, _ := payee.Balance(ch.ID); bal != 350 {
		t.Fatalf("provable balance %d, want 350", bal)
	}
	// Restart: the newest states survive.
	st.Close()
	st2, err := OpenStore(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	if r, _ := st2.Payee(NewWallet(crashWorkerKey)).Latest(ch.ID); r.Seqno != 2 || r.Sent != 350 || string(r.Voucher) != string(v2) {
		t.Fatalf("worker after restart: %+v", r)
	}
	if r, _ := st2.Payer(NewWallet(crashClientKey)).Latest(ch.ID); r.Seqno != 2 || r.Sent != 350 {
		t.Fatalf("client after restart: %+v", r)
	}
	if err := st2.Payee(NewWallet(crashWorkerKey)).MarkClosed(ch.ID); err != nil {
		t.Fatal(err)
	}
	v3, _ := Voucher(ch.ID, 3, 360, NewWallet(crashClientKey))
	v3b, _ := EncodeVoucher(v3)
	if _, err := st2.Payee(NewWallet(crashWorkerKey)).Accept(v3b); !errors.Is(err, ErrChannelClosed) {
		t.Fatalf("Accept on a closed channel = %v", err)
	}
}

// Concurrent payments on one channel get distinct seqnos and add up.
func TestPayConcurrent(t *testing.T) {
	st, err := OpenStore(filepath.Join(t.TempDir(), "s.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	payer := st.Payer(NewWallet(crashClientKey))
	if err := payer.AddChannel(crashChannel, 1<<40); err != nil {
		t.Fatal(err)
	}
	const workers, each = 8, 25
	seqs := make(chan uint64, workers*each)
	errc := make(chan error, workers)
	for range workers {
		go func() {
			for range each {
				b, _, err := payer.Increase(crashChannel.ID, 3)
				if err != nil {
					errc <- err
					return
				}
				v, err := DecodeVoucher(b)
				if err != nil {
					errc <- err
					return
				}
				seqs <- v.State.Data.Seqno
			}
			errc <- nil
		}()
	}
	for range workers {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	close(seqs)
	seen := map[uint64]bool{}
	for s := range seqs {
		if seen[s] {
			t.Fatalf("seqno %d signed twice", s)
		}
		seen[s] = true
	}
	r, _ := payer.Latest(crashChannel.ID)
	if r.Seqno != workers*each || r.Sent != 3*workers*each {
		t.Fatalf("after %d payments of 3: seqno %d, sent %d", workers*each, r.Seqno, r.Sent)
	}
}
