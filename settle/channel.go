package settle

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/xssnick/tonutils-go/address"
	"github.com/xssnick/tonutils-go/tlb"
	"github.com/xssnick/tonutils-go/tvm/cell"
)

// Channel is a client→worker payment channel: the client is party A (it
// deposits and signs vouchers), the worker is party B (it is paid). Its
// address is fixed by these fields through the contract's initial storage.
type Channel struct {
	ID        ChannelID
	ClientKey ed25519.PublicKey // party A's channel key
	WorkerKey ed25519.PublicKey // party B's channel key
	// ClientAddr and WorkerAddr receive the payouts (dest_A, dest_B).
	ClientAddr *address.Address
	WorkerAddr *address.Address
	Closing    ClosingConfig
	ExcessFee  uint64 // the contract's excess_fee, nanoTON
}

// DefaultClosing is the dispute timing used when none is given: one hour of
// quarantine, a 0.1 TON fine for a stale state, 30 minutes to settle.
var DefaultClosing = ClosingConfig{QuarantineDuration: 3600, MisbehaviorFine: 100_000_000, ConditionalCloseDuration: 1800}

// NewChannelID returns a random channel id.
func NewChannelID() (ChannelID, error) {
	var id ChannelID
	if _, err := rand.Read(id[:]); err != nil {
		return id, fmt.Errorf("new channel id: %w", err)
	}
	return id, nil
}

// Validate checks the fields a contract needs.
func (c Channel) Validate() error {
	switch {
	case len(c.ClientKey) != ed25519.PublicKeySize:
		return errors.New("channel: client key must be 32 bytes")
	case len(c.WorkerKey) != ed25519.PublicKeySize:
		return errors.New("channel: worker key must be 32 bytes")
	case c.ClientAddr == nil || c.WorkerAddr == nil:
		return errors.New("channel: payout addresses are required")
	}
	return nil
}

// InitialStorage is the contract data at deploy: not initialised, zero balances.
func (c Channel) InitialStorage() Storage {
	return Storage{
		KeyA: c.ClientKey, KeyB: c.WorkerKey, ChannelID: c.ID, Closing: c.Closing,
		Payments: PaymentConfig{ExcessFee: c.ExcessFee, DestA: c.ClientAddr, DestB: c.WorkerAddr},
	}
}

// StateInit is the deploy state of the channel contract.
func (c Channel) StateInit() (*tlb.StateInit, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	data, err := c.InitialStorage().Cell()
	if err != nil {
		return nil, fmt.Errorf("channel %s: initial storage: %w", c.ID, err)
	}
	return &tlb.StateInit{Code: channelCode, Data: data}, nil
}

// Address is the contract address in workchain 0 (bounceable form).
func (c Channel) Address() (*address.Address, error) {
	si, err := c.StateInit()
	if err != nil {
		return nil, err
	}
	sc, err := tlb.ToCell(si)
	if err != nil {
		return nil, fmt.Errorf("channel %s: state init: %w", c.ID, err)
	}
	return address.NewAddress(0, 0, sc.Hash()), nil
}

// VerifyContract checks that code and data on chain are this channel's contract
// at its address: the code hash is the known contract's and the address
// derives from the same keys, id, config and payout addresses.
func (c Channel) VerifyContract(code *cell.Cell, st Storage) error {
	if code == nil || string(code.Hash()) != string(channelCode.Hash()) {
		return errors.New("channel contract: unknown code")
	}
	if st.ChannelID != c.ID || !st.KeyA.Equal(c.ClientKey) || !st.KeyB.Equal(c.WorkerKey) {
		return errors.New("channel contract: id or keys differ")
	}
	return nil
}
