package settle

import (
	"crypto/ed25519"
	"path/filepath"
	"testing"
)

// BenchmarkVoucherSign: client side, one core: build and sign the next state.
func BenchmarkVoucherSign(b *testing.B) {
	w := NewWallet(goldenKey)
	b.ReportAllocs()
	var n uint64
	for b.Loop() {
		n++
		v, err := Voucher(ChannelID{1}, n, n*1000, w)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := EncodeVoucher(v); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "vouchers/s")
}

// BenchmarkVoucherVerify: worker side, one core: decode the BOC and check the signature.
func BenchmarkVoucherVerify(b *testing.B) {
	v, _ := Voucher(ChannelID{1}, 7, 7000, NewWallet(goldenKey))
	enc, _ := EncodeVoucher(v)
	pub := goldenKey.Public().(ed25519.PublicKey)
	b.ReportAllocs()
	for b.Loop() {
		d, err := DecodeVoucher(enc)
		if err != nil || !d.Verify(pub) {
			b.Fatal("verify failed")
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "vouchers/s")
}

func benchStore(b *testing.B) *Store {
	st, err := OpenStore(filepath.Join(b.TempDir(), "bench.db"), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	return st
}

// BenchmarkPay: sign and durably store (fsync) one voucher: the client's cost per voucher.
func BenchmarkPay(b *testing.B) {
	p := benchStore(b).Payer(NewWallet(crashClientKey))
	if err := p.AddChannel(crashChannel, crashDeposit); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	var total uint64
	for b.Loop() {
		total += 1000
		if _, err := p.Pay(crashChannel.ID, total); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/voucher")
}

// BenchmarkAccept: verify and durably store (fsync) one voucher: the worker's cost per voucher.
func BenchmarkAccept(b *testing.B) {
	w := NewWallet(crashClientKey)
	vouchers := make([][]byte, 0, 1024)
	st := benchStore(b)
	payee := st.Payee(NewWallet(crashWorkerKey))
	if err := payee.AddChannel(crashChannel, crashDeposit); err != nil {
		b.Fatal(err)
	}
	var seq uint64
	next := func() []byte {
		if len(vouchers) == 0 {
			for i := 0; i < 1024; i++ {
				seq++
				v, _ := Voucher(crashChannel.ID, seq, seq*1000, w)
				enc, _ := EncodeVoucher(v)
				vouchers = append(vouchers, enc)
			}
		}
		v := vouchers[0]
		vouchers = vouchers[1:]
		return v
	}
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		v := next()
		b.StartTimer()
		if _, err := payee.Accept(v); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/voucher")
}
