package tonchain_test

import (
	"context"
	"crypto/ed25519"
	"testing"
	"time"

	"github.com/xssnick/tonutils-go/address"
	"github.com/xssnick/tonutils-go/tlb"
	"github.com/xssnick/tonutils-go/ton"
	"github.com/xssnick/tonutils-go/ton/wallet"
	"github.com/xssnick/tonutils-go/tvm/cell"

	"github.com/cocoon-network/cocoon/settle"
	"github.com/cocoon-network/cocoon/settle/tonchain"
)

// fakeAPI records sent messages; no network is reachable here.
type fakeAPI struct {
	sent []*tlb.ExternalMessage
}

func (f *fakeAPI) CurrentMasterchainInfo(context.Context) (*ton.BlockIDExt, error) {
	return &ton.BlockIDExt{Workchain: -1, SeqNo: 1}, nil
}

func (f *fakeAPI) GetAccount(context.Context, *ton.BlockIDExt, *address.Address) (*tlb.Account, error) {
	return &tlb.Account{}, nil // not deployed
}

func (f *fakeAPI) SendExternalMessageWaitTransaction(_ context.Context, m *tlb.ExternalMessage) (*tlb.Transaction, *ton.BlockIDExt, []byte, error) {
	f.sent = append(f.sent, m)
	return &tlb.Transaction{LT: 5}, &ton.BlockIDExt{}, nil, nil
}

// Open on TON: one V5R1 external message, signed by the wallet key, for
// mainnet, carrying the deploy + top-up and the init, as the contract wants.
func TestOpenMessageConstruction(t *testing.T) {
	api := &fakeAPI{}
	l := tonchain.NewWithAPI(api, "mainnet", settle.MainnetGlobalID)
	_, kc, _ := ed25519.GenerateKey(nil)
	_, kw, _ := ed25519.GenerateKey(nil)
	wc, ww := settle.NewWallet(kc), settle.NewWallet(kw)
	id, _ := settle.NewChannelID()
	ch := settle.Channel{ID: id, ClientKey: wc.PublicKey(), WorkerKey: ww.PublicKey(),
		ClientAddr: wc.Address(settle.MainnetGlobalID), WorkerAddr: ww.Address(settle.MainnetGlobalID), Closing: settle.DefaultClosing}
	const deposit = 2_500_000_000
	if _, err := settle.NewChain(l, wc).Open(context.Background(), ch, deposit); err != nil {
		t.Fatal(err)
	}
	if len(api.sent) != 1 {
		t.Fatalf("%d messages sent, want 1", len(api.sent))
	}
	m := api.sent[0]
	if !m.DstAddr.Equals(wc.Address(settle.MainnetGlobalID)) || m.StateInit == nil {
		t.Fatalf("destination %s, state init %v; want the undeployed wallet with its state init", m.DstAddr, m.StateInit != nil)
	}
	si, _ := wallet.GetStateInit(wc.PublicKey(), wallet.ConfigV5R1Final{NetworkGlobalID: settle.MainnetGlobalID}, 0)
	if string(si.Code.Hash()) != string(m.StateInit.Code.Hash()) {
		t.Fatal("wallet code is not V5R1")
	}
	s := m.Body.MustBeginParse()
	if op := s.MustLoadUInt(32); op != 0x7369676e {
		t.Fatalf("wallet op %#x", op)
	}
	wid := wallet.V5R1ID{NetworkGlobalID: settle.MainnetGlobalID}
	if got := s.MustLoadUInt(32); got != uint64(wid.Serialized()) {
		t.Fatalf("wallet id %#x, want %#x", got, wid.Serialized())
	}
	if until := s.MustLoadUInt(32); until < uint64(time.Now().Unix()) {
		t.Fatalf("valid until %d is past", until)
	}
	if seq := s.MustLoadUInt(32); seq != 0 {
		t.Fatalf("seqno %d", seq)
	}
	// Signature: the last 512 bits, over the hash of everything before.
	bits := m.Body.BitsSize()
	signed, _ := m.Body.MustBeginParse().FetchSubslice(bits-512, int(m.Body.RefsNum()))
	sc, _ := signed.ToCell()
	whole := m.Body.MustBeginParse()
	whole.SkipBits(bits - 512)
	sig := whole.MustLoadSlice(512)
	if !ed25519.Verify(wc.PublicKey(), sc.Hash(), sig) {
		t.Fatal("wallet signature does not verify")
	}
	// Actions: a linked list, newest outermost.
	if !s.MustLoadBoolBit() {
		t.Fatal("no action list")
	}
	var msgs []*tlb.InternalMessage
	for list := s.MustLoadRef(); list.RefsNum() > 0; {
		prev := list.MustLoadRef()
		if op := list.MustLoadUInt(32); op != 0x0ec3c86d {
			t.Fatalf("action %#x", op)
		}
		list.MustLoadUInt(8)
		var im tlb.InternalMessage
		mc := list.MustLoadRef()
		mcell, _ := mc.ToCell()
		if err := tlb.LoadFromCell(&im, mcell.MustBeginParse()); err != nil {
			t.Fatal(err)
		}
		msgs = append([]*tlb.InternalMessage{&im}, msgs...)
		list = prev
	}
	if len(msgs) != 2 {
		t.Fatalf("%d actions, want 2", len(msgs))
	}
	chAddr, _ := ch.Address()
	deploy, init := msgs[0], msgs[1]
	if !deploy.DstAddr.Equals(chAddr) || deploy.StateInit == nil || string(deploy.StateInit.Code.Hash()) != string(settle.ChannelCodeHash()) {
		t.Fatal("first message does not deploy the channel contract")
	}
	if deploy.Amount.Nano().Uint64() < deposit {
		t.Fatalf("deploy carries %s, below the deposit", deploy.Amount)
	}
	tb := deploy.Body.MustBeginParse()
	if op := tb.MustLoadUInt(32); op != settle.OpTopUp || tb.MustLoadCoins() != deposit || tb.MustLoadCoins() != 0 {
		t.Fatal("first body is not top_up(deposit, 0)")
	}
	ib := init.Body.MustBeginParse()
	if op := ib.MustLoadUInt(32); op != settle.OpInit || !ib.MustLoadBoolBit() {
		t.Fatal("second body is not init by A")
	}
	isig := ib.MustLoadSlice(512)
	rest, _ := ib.ToCell()
	if !ed25519.Verify(wc.PublicKey(), rest.Hash(), isig) {
		t.Fatal("init signature does not verify")
	}
	want := cell.BeginCell().MustStoreUInt(0x696e6974, 32).MustStoreSlice(id[:], 128).MustStoreCoins(deposit).MustStoreCoins(0).EndCell()
	if string(rest.Hash()) != string(want.Hash()) {
		t.Fatal("init signed part differs")
	}
}

func TestGlobalIDOf(t *testing.T) {
	if g, _ := tonchain.GlobalIDOf("mainnet"); g != -239 {
		t.Fatal(g)
	}
	if g, _ := tonchain.GlobalIDOf("testnet"); g != -3 {
		t.Fatal(g)
	}
	if _, err := tonchain.GlobalIDOf("devnet"); err == nil {
		t.Fatal("devnet accepted")
	}
}
