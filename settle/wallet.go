package settle

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/xssnick/tonutils-go/address"
	"github.com/xssnick/tonutils-go/tlb"
	"github.com/xssnick/tonutils-go/ton/wallet"
	"github.com/xssnick/tonutils-go/tvm/cell"
)

// MainnetGlobalID and TestnetGlobalID are TON's network ids; V5R1 wallet
// addresses depend on them.
const (
	MainnetGlobalID = -239
	TestnetGlobalID = -3
)

// walletTTL is the validity of wallet external messages. Long, because the dev
// ledger's clock can be moved forward past a short one.
const walletTTL = 7 * 24 * 3600

// Wallet is a V5R1 wallet key: it signs wallet messages and, as the node's
// channel key, vouchers and closes. Safe for concurrent use; sends through
// one Wallet are serialised so seqnos do not collide.
type Wallet struct {
	key ed25519.PrivateKey
	mu  sync.Mutex
}

// NewWallet wraps an ed25519 private key.
func NewWallet(key ed25519.PrivateKey) *Wallet { return &Wallet{key: key} }

// CreateWalletKey makes a new 24-word TON mnemonic, writes it to path with
// mode 0600 (refusing to overwrite an existing file) and returns the V5R1
// wallet address on mainnet in user-friendly form.
func CreateWalletKey(path string) (string, error) {
	words := wallet.NewSeed()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("create wallet key %s: %w", path, err)
	}
	if _, err := f.WriteString(strings.Join(words, " ") + "\n"); err != nil {
		f.Close()
		return "", fmt.Errorf("write wallet key %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return "", fmt.Errorf("sync wallet key %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("close wallet key %s: %w", path, err)
	}
	w, err := LoadWallet(path)
	if err != nil {
		return "", err
	}
	return Friendly(w.Address(MainnetGlobalID)), nil
}

// LoadWallet reads a mnemonic written by CreateWalletKey.
func LoadWallet(path string) (*Wallet, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("load wallet key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("load wallet key %s: mode %v is readable by others, want 0600", path, fi.Mode().Perm())
	}
	if fi.Size() > 4096 {
		return nil, fmt.Errorf("load wallet key %s: file too large", path)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load wallet key: %w", err)
	}
	words := strings.Fields(string(raw))
	if len(words) != 24 {
		return nil, fmt.Errorf("load wallet key %s: want 24 words, got %d", path, len(words))
	}
	key, err := wallet.SeedToPrivateKey(words, "", false)
	if err != nil {
		return nil, fmt.Errorf("load wallet key %s: %w", path, err)
	}
	return NewWallet(key), nil
}

// PublicKey is the wallet's (and channel's) public key.
func (w *Wallet) PublicKey() ed25519.PublicKey { return w.key.Public().(ed25519.PublicKey) }

// PrivateKey is the signing key; settle uses it for vouchers and closes.
func (w *Wallet) PrivateKey() ed25519.PrivateKey { return w.key }

func (w *Wallet) tw(globalID int32) *wallet.Wallet {
	tw, err := wallet.FromPrivateKeyWithOptions(w.key, wallet.ConfigV5R1Final{NetworkGlobalID: globalID})
	if err != nil {
		// Only a zero global id fails, and callers pass a network's id.
		panic(fmt.Sprintf("settle: v5r1 wallet: %v", err))
	}
	return tw
}

// Address is the V5R1 wallet address (workchain 0) on the network with globalID.
// The non-bounceable form is what TON wallets show for receiving.
func (w *Wallet) Address(globalID int32) *address.Address { return w.tw(globalID).WalletAddress() }

// Transfer is one internal message sent from the wallet.
type Transfer struct {
	To        *address.Address
	Amount    uint64 // nanoTON
	Body      *cell.Cell
	StateInit *tlb.StateInit
	Bounce    bool
}

// walletSeqno reads a V5R1 wallet's seqno from its data (flag bit, seqno:uint32).
func walletSeqno(st *AccountState) (uint32, error) {
	if !st.Active() {
		return 0, nil
	}
	s, err := st.Data.BeginParse()
	if err != nil {
		return 0, err
	}
	if _, err := s.LoadBoolBit(); err != nil {
		return 0, err
	}
	v, err := s.LoadUInt(32)
	return uint32(v), err
}

// Send signs and sends transfers from the wallet on l (pay fees separately,
// ignore errors: mode 3) and returns the trace.
func (w *Wallet) Send(ctx context.Context, l Ledger, transfers ...Transfer) (*Trace, error) {
	if len(transfers) == 0 || len(transfers) > 255 {
		return nil, errors.New("wallet send: 1 to 255 transfers")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	gid := l.GlobalID()
	tw := w.tw(gid)
	st, err := l.Account(ctx, tw.WalletAddress())
	if err != nil {
		return nil, fmt.Errorf("wallet send: read wallet account: %w", err)
	}
	seqno, err := walletSeqno(st)
	if err != nil {
		return nil, fmt.Errorf("wallet send: read seqno: %w", err)
	}
	spec := tw.GetSpec().(*wallet.SpecV5R1Final)
	spec.SetMessagesTTL(walletTTL)
	spec.SetSeqnoFetcher(func(context.Context, uint32) (uint32, error) { return seqno, nil })
	msgs := make([]*wallet.Message, 0, len(transfers))
	for _, t := range transfers {
		body := t.Body
		if body == nil {
			body = cell.BeginCell().EndCell()
		}
		msgs = append(msgs, &wallet.Message{Mode: 3, InternalMessage: &tlb.InternalMessage{
			IHRDisabled: true, Bounce: t.Bounce, DstAddr: t.To,
			Amount: tlb.FromNanoTONU(t.Amount), StateInit: t.StateInit, Body: body,
		}})
	}
	ext, err := tw.PrepareExternalMessageForMany(ctx, !st.Active(), msgs)
	if err != nil {
		return nil, fmt.Errorf("wallet send: build message: %w", err)
	}
	tr, err := l.SendExternal(ctx, ext)
	if err != nil {
		return tr, fmt.Errorf("wallet send from %s: %w", Friendly(tw.WalletAddress()), err)
	}
	return tr, nil
}
