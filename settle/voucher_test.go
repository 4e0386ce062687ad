package settle

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/xssnick/tonutils-go/address"
	"github.com/xssnick/tonutils-go/tvm/cell"
)

var goldenKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32))

// goldenVouchers are fixed states with the fixed key; their encodings are
// pinned below so a layout change shows.
var goldenVouchers = []struct {
	id          ChannelID
	seqno, sent uint64
	boc         string
}{
	{ChannelID{1}, 1, 1, "b5ee9c724101010100600000bbbb56668d4eccbbfd76ae16ccc8546450e446abb5ee212c45b6cea47e65bfc703a55becfa6306b39efa9d3be58e911a7246a7a0b96153945692ba8324d2c03301436853740100000000000000000000000000000000000000000000011012430befd0"},
	{ChannelID{0xff, 2}, 42, 1_000_000_000, "b5ee9c724101010100630000c1cd9d7991e44cc7101ec33451354d95e06211dd7336be58b9db3fd494fe5a0d4a6b1fbdecbe9e27cd6beec3c3d3f61e617d57d4facd17ddbcdd6aec7967176e0443685374ff020000000000000000000000000000000000000000002a43b9aca00209949d93"},
	{ChannelID{3}, 1<<32 - 1, 1<<63 - 1, "b5ee9c724101010100670000c9027b21925113c240ddb6e229052ec1a8694551c53522559b454acab402895926fce4fa96f209fee6c844b01a93abb1afa8e7e5b7b6c27710fa8646ee7756f105436853740300000000000000000000000000000000000000ffffffff87fffffffffffffff2fbbf5b4d"},
}

func TestGoldenVouchers(t *testing.T) {
	pub := goldenKey.Public().(ed25519.PublicKey)
	for _, g := range goldenVouchers {
		v, err := SignSemiChannel(SemiChannel{ChannelID: g.id, Data: SemiChannelBody{Seqno: g.seqno, Sent: g.sent}}, goldenKey)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := EncodeVoucher(v)
		if hex.EncodeToString(b) != g.boc {
			t.Errorf("EncodeVoucher(%x, %d, %d) = %x; want %s", g.id, g.seqno, g.sent, b, g.boc)
		}
		raw, _ := hex.DecodeString(g.boc)
		d, err := DecodeVoucher(raw)
		if err != nil || d.State.Data.Seqno != g.seqno || d.State.Data.Sent != g.sent || d.State.ChannelID != g.id || !d.Verify(pub) {
			t.Errorf("DecodeVoucher(%s) = %+v, %v", g.boc, d, err)
		}
	}
}

// The encoding's bits are the contract's layout: signature, tag, id, seqno,
// coins, empty conditionals, no counterparty.
func TestVoucherLayout(t *testing.T) {
	v, err := SignSemiChannel(SemiChannel{ChannelID: ChannelID{0xab}, Data: SemiChannelBody{Seqno: 5, Sent: 300}}, goldenKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := v.Cell()
	s := c.MustBeginParse()
	s.MustLoadSlice(512)
	if tag := s.MustLoadUInt(32); tag != 0x43685374 {
		t.Fatalf("tag %#x", tag)
	}
	if id := s.MustLoadSlice(128); id[0] != 0xab {
		t.Fatalf("id %x", id)
	}
	if seq := s.MustLoadUInt(64); seq != 5 {
		t.Fatalf("seqno %d", seq)
	}
	if sent := s.MustLoadCoins(); sent != 300 {
		t.Fatalf("sent %d", sent)
	}
	if s.MustLoadBoolBit() || s.MustLoadBoolBit() || s.BitsLeft() != 0 {
		t.Fatal("conditionals / counterparty / trailing bits")
	}
	if !v.Verify(goldenKey.Public().(ed25519.PublicKey)) {
		t.Fatal("does not verify")
	}
	v.State.Data.Sent++
	if v.Verify(goldenKey.Public().(ed25519.PublicKey)) {
		t.Fatal("verifies after the amount changed")
	}
}

func TestDecodeVoucherRefuses(t *testing.T) {
	ok, _ := hex.DecodeString(goldenVouchers[0].boc)
	withCounterparty, _ := SignSemiChannel(SemiChannel{ChannelID: ChannelID{1}, Data: SemiChannelBody{Seqno: 1}, Counterparty: &SemiChannelBody{}}, goldenKey)
	cp, _ := EncodeVoucher(withCounterparty)
	trailing := cell.BeginCell().MustStoreBuilder(mustCell(t, ok).ToBuilder()).MustStoreUInt(1, 1).EndCell().ToBOC()
	for name, b := range map[string][]byte{
		"empty": nil, "garbage": []byte("not a boc"), "truncated": ok[:len(ok)-3],
		"oversized": make([]byte, MaxVoucherSize+1), "counterparty": cp, "trailing bit": trailing,
	} {
		if _, err := DecodeVoucher(b); !errors.Is(err, ErrMalformedVoucher) {
			t.Errorf("DecodeVoucher(%s) = %v; want ErrMalformedVoucher", name, err)
		}
	}
	if _, err := DecodeVoucher(ok); err != nil {
		t.Fatal(err)
	}
}

func mustCell(t *testing.T, b []byte) *cell.Cell {
	c, err := cell.FromBOC(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func FuzzDecodeVoucher(f *testing.F) {
	for _, g := range goldenVouchers {
		b, _ := hex.DecodeString(g.boc)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := DecodeVoucher(b)
		if err != nil {
			return
		}
		again, err := EncodeVoucher(v)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		v2, err := DecodeVoucher(again)
		if err != nil || v2.State.Data != v.State.Data || v2.State.ChannelID != v.State.ChannelID || v2.Signature != v.Signature {
			t.Fatalf("round trip: %+v, %v; want %+v", v2, err, v)
		}
		_ = v.Verify(goldenKey.Public().(ed25519.PublicKey))
	})
}

func goldenStorage() []Storage {
	a := address.NewAddress(0, 0, bytes.Repeat([]byte{1}, 32))
	b := address.NewAddress(0, 0, bytes.Repeat([]byte{2}, 32))
	pub := goldenKey.Public().(ed25519.PublicKey)
	base := Storage{KeyA: pub, KeyB: pub, ChannelID: ChannelID{9}, Closing: DefaultClosing,
		Payments: PaymentConfig{ExcessFee: 1, DestA: a, DestB: b}}
	open := base
	open.Inited, open.BalanceA = true, 5_000_000_000
	q := open
	q.Quarantine = &Quarantine{StateA: SemiChannelBody{Seqno: 3, Sent: 10}, Starts: 100, CommittedByA: true, Challenged: true, ChallengedPresent: true}
	settled := open
	settled.Quarantine = &Quarantine{StateB: SemiChannelBody{Seqno: 1}, Starts: 7}
	return []Storage{base, open, q, settled}
}

func storageEqual(a, b Storage) bool {
	ca, err1 := a.Cell()
	cb, err2 := b.Cell()
	return err1 == nil && err2 == nil && bytes.Equal(ca.Hash(), cb.Hash())
}

func TestStorageRoundTrip(t *testing.T) {
	for i, st := range goldenStorage() {
		c, err := st.Cell()
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseStorage(c)
		if err != nil || !storageEqual(got, st) {
			t.Fatalf("storage %d: ParseStorage = %+v, %v; want %+v", i, got, err, st)
		}
	}
}

// FuzzParseStorage feeds arbitrary BOCs to the contract-state parser (what a
// node reads from a liteserver or the dev ledger).
func FuzzParseStorage(f *testing.F) {
	for _, st := range goldenStorage() {
		c, _ := st.Cell()
		f.Add(c.ToBOC())
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 4096 {
			return
		}
		c, err := cell.FromBOC(b)
		if err != nil {
			return
		}
		st, err := ParseStorage(c)
		if err != nil {
			return
		}
		c2, err := st.Cell()
		if err != nil {
			return // e.g. keys of another length cannot be rebuilt
		}
		st2, err := ParseStorage(c2)
		if err != nil || !storageEqual(st, st2) {
			t.Fatalf("round trip: %+v, %v; want %+v", st2, err, st)
		}
	})
}
