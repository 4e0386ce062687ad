package settle

import (
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/xssnick/tonutils-go/address"
	"github.com/xssnick/tonutils-go/tvm/cell"
)

// TL-B of the asynchronous payment channel, as the compiled contract reads it
// (func/async-channel.func of ton-blockchain/payment-channels; code hash in
// contract.go). Builders and parsers are written by hand over tonutils-go's
// cell tools so that every bit is the contract's:
//
//	sc_body#_ seqno:uint64 sent:Coins conditionals:(HashmapE 32 ConditionalPayment) = SemiChannelBody;
//	semichannel_state#43685374 channel_id:uint128 data:SemiChannelBody
//	    counterparty_data:(Maybe ^SemiChannelBody) = SemiChannel;
//	signed_schs#_ signature:bits512 state:SemiChannel = SignedSemiChannel;
//	conf#_ quarantin_duration:uint32 misbehavior_fine:Coins conditional_close_duration:uint32 = ClosingConfig;
//	payment_conf#_ excess_fee:Coins dest_A:MsgAddress dest_B:MsgAddress = PaymentConfig;
//	quarantined_state#_ state_A:SemiChannelBody state_B:SemiChannelBody quarantine_starts:uint32
//	    state_commited_by_A:Bool state_challenged:Bool = QuarantinedState;   (last bit may be absent)
//	storage#_ inited:Bool balance_A:Coins balance_B:Coins key_A:uint256 key_B:uint256 channel_id:uint128
//	    config:^ClosingConfig commited_seqno_A:uint32 commited_seqno_B:uint32
//	    quarantin:(Maybe ^QuarantinedState) payments:^PaymentConfig = Storage;
//
// Messages (internal, op first):
//
//	top_up#67c7d281 add_A:Coins add_B:Coins
//	init#0e0620c2 is_A:Bool signature:bits512 | #696e6974 channel_id:uint128 balance_A:Coins balance_B:Coins
//	coop_close#5577587e sig_A:^bits512 sig_B:^bits512 | #436c6f73 channel_id:uint128
//	    balance_A:Coins balance_B:Coins seqno_A:uint64 seqno_B:uint64
//	coop_commit#79a126ef sig_A:^bits512 sig_B:^bits512 | #43436d74 channel_id:uint128 seqno_A:uint64 seqno_B:uint64
//	start_uncoop#1f151acf signed_by_A:Bool signature:bits512 | #556e436c channel_id:uint128
//	    sch_A:^SignedSemiChannel sch_B:^SignedSemiChannel
//	challenge#088eaa32 challenged_by_A:Bool signature:bits512 | #43686751 channel_id:uint128
//	    sch_A:^SignedSemiChannel sch_B:^SignedSemiChannel
//	settle#66f6f069 from_A:Bool signature:bits512 | #436c436e channel_id:uint128
//	    conditionals_to_settle:(HashmapE 32 Cell) sch:^SignedSemiChannel
//	finish#25432a91
//	payout body: channel_closed#dddc88ba channel_id:uint128
//
// "|" marks where the signed part starts: each signature is ed25519 over the
// representation hash of a cell holding exactly the bits and refs after it.

// Operation codes and signed-part tags.
const (
	OpTopUp          = 0x67c7d281
	OpInit           = 0x0e0620c2
	OpCoopClose      = 0x5577587e
	OpCoopCommit     = 0x79a126ef
	OpStartUncoop    = 0x1f151acf
	OpChallenge      = 0x088eaa32
	OpSettle         = 0x66f6f069
	OpFinish         = 0x25432a91
	OpChannelClosed  = 0xdddc88ba
	tagInit          = 0x696e6974
	tagClose         = 0x436c6f73
	tagCommit        = 0x43436d74
	tagUncoop        = 0x556e436c
	tagChallenge     = 0x43686751
	tagSettle        = 0x436c436e
	tagState         = 0x43685374
	signatureBits    = 512
	channelIDBits    = 128
	maxSeqno         = 1<<32 - 1 // the contract keeps committed seqnos in 32 bits
	maxContractCoins = 1<<63 - 1 // amounts stay in uint63 so int64 arithmetic never overflows
)

// Contract exit codes (func/async-channel.func).
const (
	ExitAlreadyInited     = 100
	ExitWrongSignature    = 101
	ExitNotEnoughMoney    = 102
	ExitWrongTag          = 104
	ExitOutdatedState     = 105
	ExitQuarantineStarted = 106
	ExitNoQuarantine      = 107
	ExitSeqnoNotAbove     = 108
	ExitChallengeBySelf   = 109
	ExitSettleTooEarly    = 110
	ExitChallengeTooLate  = 111
	ExitSettleTooLate     = 112
	ExitFinishTooEarly    = 113
	ExitWrongChannelID    = 114
	ExitAlreadyChallenged = 115
	ExitIntegerOutOfRange = 5
	ExitCellUnderflow     = 9
)

// ChannelID is the contract's 128-bit channel id.
type ChannelID [16]byte

// String is the id in hex.
func (id ChannelID) String() string { return fmt.Sprintf("%x", id[:]) }

// ParseChannelID reads a 32-hex-digit channel id.
func ParseChannelID(s string) (ChannelID, error) {
	var id ChannelID
	if len(s) != 32 {
		return id, fmt.Errorf("parse channel id %q: want 32 hex digits", s)
	}
	raw, err := hex.DecodeString(s)
	if err != nil {
		return id, fmt.Errorf("parse channel id %q: %w", s, err)
	}
	copy(id[:], raw)
	return id, nil
}

// ClosingConfig is the contract's dispute timing and fine.
type ClosingConfig struct {
	QuarantineDuration       uint32 // seconds a started uncooperative close can be challenged
	MisbehaviorFine          uint64 // nanoTON moved from a party caught presenting a stale state
	ConditionalCloseDuration uint32 // seconds after quarantine to settle conditionals
}

// SemiChannelBody is one party's cumulative state.
type SemiChannelBody struct {
	Seqno uint64
	Sent  uint64 // cumulative nanoTON sent to the counterparty
	// Conditionals is the (HashmapE 32 ConditionalPayment) root; vouchers keep it empty.
	Conditionals *cell.Cell
}

func storeBody(b *cell.Builder, s SemiChannelBody) error {
	if err := b.StoreUInt(s.Seqno, 64); err != nil {
		return err
	}
	if err := b.StoreCoins(s.Sent); err != nil {
		return err
	}
	return b.StoreMaybeRef(s.Conditionals)
}

func loadBody(s *cell.Slice) (SemiChannelBody, error) {
	var out SemiChannelBody
	var err error
	if out.Seqno, err = s.LoadUInt(64); err != nil {
		return out, fmt.Errorf("seqno: %w", err)
	}
	sent, err := s.LoadBigCoins()
	if err != nil {
		return out, fmt.Errorf("sent: %w", err)
	}
	if !sent.IsUint64() || sent.Uint64() > maxContractCoins {
		return out, errors.New("sent: amount out of range")
	}
	out.Sent = sent.Uint64()
	has, err := s.LoadBoolBit()
	if err != nil {
		return out, fmt.Errorf("conditionals: %w", err)
	}
	if has {
		if out.Conditionals, err = s.LoadRefCell(); err != nil {
			return out, fmt.Errorf("conditionals: %w", err)
		}
	}
	return out, nil
}

// SemiChannel is the signed part of one party's state.
type SemiChannel struct {
	ChannelID    ChannelID
	Data         SemiChannelBody
	Counterparty *SemiChannelBody // newest state of the other party known to the signer, optional
}

// Cell builds the SemiChannel cell whose hash the owner signs.
func (s SemiChannel) Cell() (*cell.Cell, error) {
	b := cell.BeginCell()
	if err := s.store(b); err != nil {
		return nil, err
	}
	return b.EndCell(), nil
}

func (s SemiChannel) store(b *cell.Builder) error {
	if err := b.StoreUInt(tagState, 32); err != nil {
		return err
	}
	if err := b.StoreSlice(s.ChannelID[:], channelIDBits); err != nil {
		return err
	}
	if err := storeBody(b, s.Data); err != nil {
		return err
	}
	if s.Counterparty == nil {
		return b.StoreBoolBit(false)
	}
	cb := cell.BeginCell()
	if err := storeBody(cb, *s.Counterparty); err != nil {
		return err
	}
	return b.StoreMaybeRef(cb.EndCell())
}

func loadSemiChannel(s *cell.Slice) (SemiChannel, error) {
	var out SemiChannel
	tag, err := s.LoadUInt(32)
	if err != nil {
		return out, fmt.Errorf("tag: %w", err)
	}
	if tag != tagState {
		return out, fmt.Errorf("tag %#x is not a semi-channel state", tag)
	}
	id, err := s.LoadSlice(channelIDBits)
	if err != nil {
		return out, fmt.Errorf("channel id: %w", err)
	}
	copy(out.ChannelID[:], id)
	if out.Data, err = loadBody(s); err != nil {
		return out, err
	}
	cp, err := s.LoadMaybeRef()
	if err != nil {
		return out, fmt.Errorf("counterparty: %w", err)
	}
	if cp != nil {
		body, err := loadBody(cp)
		if err != nil {
			return out, fmt.Errorf("counterparty: %w", err)
		}
		out.Counterparty = &body
	}
	return out, nil
}

// SignedSemiChannel is a semi-channel state with its owner's signature.
type SignedSemiChannel struct {
	Signature [64]byte
	State     SemiChannel
}

// Cell builds signature ‖ SemiChannel (inline), the form the contract takes by reference.
func (s SignedSemiChannel) Cell() (*cell.Cell, error) {
	b := cell.BeginCell()
	if err := b.StoreSlice(s.Signature[:], signatureBits); err != nil {
		return nil, err
	}
	if err := s.State.store(b); err != nil {
		return nil, err
	}
	return b.EndCell(), nil
}

// SignSemiChannel signs st with key.
func SignSemiChannel(st SemiChannel, key ed25519.PrivateKey) (SignedSemiChannel, error) {
	c, err := st.Cell()
	if err != nil {
		return SignedSemiChannel{}, fmt.Errorf("build semi-channel state: %w", err)
	}
	out := SignedSemiChannel{State: st}
	copy(out.Signature[:], c.Sign(key))
	return out, nil
}

// Verify checks the signature against pub.
func (s SignedSemiChannel) Verify(pub ed25519.PublicKey) bool {
	c, err := s.State.Cell()
	if err != nil || len(pub) != ed25519.PublicKeySize {
		return false
	}
	return ed25519.Verify(pub, c.Hash(), s.Signature[:])
}

// ParseSignedSemiChannel reads a SignedSemiChannel cell; the cell must hold nothing else.
func ParseSignedSemiChannel(c *cell.Cell) (SignedSemiChannel, error) {
	var out SignedSemiChannel
	s, err := c.BeginParse()
	if err != nil {
		return out, err
	}
	sig, err := s.LoadSlice(signatureBits)
	if err != nil {
		return out, fmt.Errorf("signature: %w", err)
	}
	copy(out.Signature[:], sig)
	if out.State, err = loadSemiChannel(s); err != nil {
		return out, err
	}
	if s.BitsLeft() != 0 || s.RefsNum() != 0 {
		return out, errors.New("trailing data after semi-channel state")
	}
	return out, nil
}

// PaymentConfig says where the contract pays out.
type PaymentConfig struct {
	ExcessFee uint64
	DestA     *address.Address
	DestB     *address.Address
}

// Quarantine is a started uncooperative close.
type Quarantine struct {
	StateA, StateB    SemiChannelBody
	Starts            uint32
	CommittedByA      bool
	Challenged        bool
	ChallengedPresent bool // false after settle_conditionals, which drops the bit
}

// Storage is the contract's persistent data.
type Storage struct {
	Inited          bool
	BalanceA        uint64
	BalanceB        uint64
	KeyA, KeyB      ed25519.PublicKey
	ChannelID       ChannelID
	Closing         ClosingConfig
	CommittedSeqnoA uint32
	CommittedSeqnoB uint32
	Quarantine      *Quarantine
	Payments        PaymentConfig
}

// Cell builds the storage cell.
func (st Storage) Cell() (*cell.Cell, error) {
	if len(st.KeyA) != ed25519.PublicKeySize || len(st.KeyB) != ed25519.PublicKeySize {
		return nil, errors.New("storage: keys must be 32 bytes")
	}
	conf := cell.BeginCell().
		MustStoreUInt(uint64(st.Closing.QuarantineDuration), 32).
		MustStoreCoins(st.Closing.MisbehaviorFine).
		MustStoreUInt(uint64(st.Closing.ConditionalCloseDuration), 32).EndCell()
	pay := cell.BeginCell().MustStoreCoins(st.Payments.ExcessFee)
	if err := pay.StoreAddr(st.Payments.DestA); err != nil {
		return nil, fmt.Errorf("storage: dest A: %w", err)
	}
	if err := pay.StoreAddr(st.Payments.DestB); err != nil {
		return nil, fmt.Errorf("storage: dest B: %w", err)
	}
	b := cell.BeginCell().
		MustStoreBoolBit(st.Inited).
		MustStoreCoins(st.BalanceA).
		MustStoreCoins(st.BalanceB).
		MustStoreSlice(st.KeyA, 256).
		MustStoreSlice(st.KeyB, 256).
		MustStoreSlice(st.ChannelID[:], channelIDBits).
		MustStoreRef(conf).
		MustStoreUInt(uint64(st.CommittedSeqnoA), 32).
		MustStoreUInt(uint64(st.CommittedSeqnoB), 32)
	if st.Quarantine == nil {
		b.MustStoreBoolBit(false)
	} else {
		q := st.Quarantine
		qb := cell.BeginCell()
		if err := storeBody(qb, q.StateA); err != nil {
			return nil, err
		}
		if err := storeBody(qb, q.StateB); err != nil {
			return nil, err
		}
		qb.MustStoreUInt(uint64(q.Starts), 32).MustStoreBoolBit(q.CommittedByA)
		if q.ChallengedPresent {
			qb.MustStoreBoolBit(q.Challenged)
		}
		b.MustStoreMaybeRef(qb.EndCell())
	}
	b.MustStoreRef(pay.EndCell())
	return b.EndCell(), nil
}

// ParseStorage reads the contract's data cell.
func ParseStorage(c *cell.Cell) (Storage, error) {
	var st Storage
	if c == nil {
		return st, errors.New("parse channel storage: no data")
	}
	s, err := c.BeginParse()
	if err != nil {
		return st, err
	}
	fail := func(what string, err error) (Storage, error) {
		return Storage{}, fmt.Errorf("parse channel storage: %s: %w", what, err)
	}
	if st.Inited, err = s.LoadBoolBit(); err != nil {
		return fail("inited", err)
	}
	if st.BalanceA, err = loadCoins(s); err != nil {
		return fail("balance A", err)
	}
	if st.BalanceB, err = loadCoins(s); err != nil {
		return fail("balance B", err)
	}
	if st.KeyA, err = s.LoadSlice(256); err != nil {
		return fail("key A", err)
	}
	if st.KeyB, err = s.LoadSlice(256); err != nil {
		return fail("key B", err)
	}
	id, err := s.LoadSlice(channelIDBits)
	if err != nil {
		return fail("channel id", err)
	}
	copy(st.ChannelID[:], id)
	conf, err := s.LoadRef()
	if err != nil {
		return fail("closing config", err)
	}
	q32, err := conf.LoadUInt(32)
	if err != nil {
		return fail("quarantine duration", err)
	}
	st.Closing.QuarantineDuration = uint32(q32)
	if st.Closing.MisbehaviorFine, err = loadCoins(conf); err != nil {
		return fail("fine", err)
	}
	c32, err := conf.LoadUInt(32)
	if err != nil {
		return fail("conditional close duration", err)
	}
	st.Closing.ConditionalCloseDuration = uint32(c32)
	sa, err := s.LoadUInt(32)
	if err != nil {
		return fail("committed seqno A", err)
	}
	sb, err := s.LoadUInt(32)
	if err != nil {
		return fail("committed seqno B", err)
	}
	st.CommittedSeqnoA, st.CommittedSeqnoB = uint32(sa), uint32(sb)
	qs, err := s.LoadMaybeRef()
	if err != nil {
		return fail("quarantine", err)
	}
	if qs != nil {
		q := &Quarantine{}
		if q.StateA, err = loadBody(qs); err != nil {
			return fail("quarantine state A", err)
		}
		if q.StateB, err = loadBody(qs); err != nil {
			return fail("quarantine state B", err)
		}
		starts, err := qs.LoadUInt(32)
		if err != nil {
			return fail("quarantine start", err)
		}
		q.Starts = uint32(starts)
		if q.CommittedByA, err = qs.LoadBoolBit(); err != nil {
			return fail("quarantine committed by A", err)
		}
		if qs.BitsLeft() > 0 {
			q.ChallengedPresent = true
			if q.Challenged, err = qs.LoadBoolBit(); err != nil {
				return fail("quarantine challenged", err)
			}
		}
		st.Quarantine = q
	}
	ps, err := s.LoadRef()
	if err != nil {
		return fail("payment config", err)
	}
	if st.Payments.ExcessFee, err = loadCoins(ps); err != nil {
		return fail("excess fee", err)
	}
	if st.Payments.DestA, err = ps.LoadAddr(); err != nil {
		return fail("dest A", err)
	}
	if st.Payments.DestB, err = ps.LoadAddr(); err != nil {
		return fail("dest B", err)
	}
	return st, nil
}

func loadCoins(s *cell.Slice) (uint64, error) {
	v, err := s.LoadBigCoins()
	if err != nil {
		return 0, err
	}
	if !v.IsUint64() || v.Uint64() > maxContractCoins {
		return 0, fmt.Errorf("amount %s out of range", v)
	}
	return v.Uint64(), nil
}

// Message bodies. Each returns the internal-message body cell.

// TopUpBody adds addA to A's and addB to B's balance; the message must carry at least addA+addB.
func TopUpBody(addA, addB uint64) *cell.Cell {
	return cell.BeginCell().MustStoreUInt(OpTopUp, 32).MustStoreCoins(addA).MustStoreCoins(addB).EndCell()
}

// InitBody initialises the channel with the given balances, signed by A (isA) or B.
func InitBody(id ChannelID, balanceA, balanceB uint64, isA bool, key ed25519.PrivateKey) *cell.Cell {
	signed := cell.BeginCell().MustStoreUInt(tagInit, 32).MustStoreSlice(id[:], channelIDBits).
		MustStoreCoins(balanceA).MustStoreCoins(balanceB).EndCell()
	return cell.BeginCell().MustStoreUInt(OpInit, 32).MustStoreBoolBit(isA).
		MustStoreSlice(signed.Sign(key), signatureBits).MustStoreBuilder(signed.ToBuilder()).EndCell()
}

// CloseState is what both parties sign to close cooperatively: B is paid
// BalanceB, A gets everything else the contract holds.
type CloseState struct {
	ChannelID      ChannelID
	BalanceA       uint64
	BalanceB       uint64
	SeqnoA, SeqnoB uint64
}

// Cell is the signed part of a cooperative close.
func (c CloseState) Cell() *cell.Cell {
	return cell.BeginCell().MustStoreUInt(tagClose, 32).MustStoreSlice(c.ChannelID[:], channelIDBits).
		MustStoreCoins(c.BalanceA).MustStoreCoins(c.BalanceB).
		MustStoreUInt(c.SeqnoA, 64).MustStoreUInt(c.SeqnoB, 64).EndCell()
}

// Sign returns key's signature of the close state.
func (c CloseState) Sign(key ed25519.PrivateKey) [64]byte {
	var sig [64]byte
	copy(sig[:], c.Cell().Sign(key))
	return sig
}

// Verify checks sig by pub.
func (c CloseState) Verify(pub ed25519.PublicKey, sig [64]byte) bool {
	return len(pub) == ed25519.PublicKeySize && ed25519.Verify(pub, c.Cell().Hash(), sig[:])
}

// CoopCloseBody is the cooperative_close message with both signatures.
func CoopCloseBody(c CloseState, sigA, sigB [64]byte) *cell.Cell {
	return cell.BeginCell().MustStoreUInt(OpCoopClose, 32).
		MustStoreRef(cell.BeginCell().MustStoreSlice(sigA[:], signatureBits).EndCell()).
		MustStoreRef(cell.BeginCell().MustStoreSlice(sigB[:], signatureBits).EndCell()).
		MustStoreBuilder(c.Cell().ToBuilder()).EndCell()
}

// CommitState is what both parties sign to commit seqnos without closing.
type CommitState struct {
	ChannelID      ChannelID
	SeqnoA, SeqnoB uint64
}

// Cell is the signed part of a cooperative commit.
func (c CommitState) Cell() *cell.Cell {
	return cell.BeginCell().MustStoreUInt(tagCommit, 32).MustStoreSlice(c.ChannelID[:], channelIDBits).
		MustStoreUInt(c.SeqnoA, 64).MustStoreUInt(c.SeqnoB, 64).EndCell()
}

// CoopCommitBody is the cooperative_commit message (no is_A bit: the v1.15.5 layout is wrong).
func CoopCommitBody(c CommitState, keyA, keyB ed25519.PrivateKey) *cell.Cell {
	signed := c.Cell()
	return cell.BeginCell().MustStoreUInt(OpCoopCommit, 32).
		MustStoreRef(cell.BeginCell().MustStoreSlice(signed.Sign(keyA), signatureBits).EndCell()).
		MustStoreRef(cell.BeginCell().MustStoreSlice(signed.Sign(keyB), signatureBits).EndCell()).
		MustStoreBuilder(signed.ToBuilder()).EndCell()
}

func quarantineBody(op, tag uint64, id ChannelID, byA bool, a, b SignedSemiChannel, key ed25519.PrivateKey) (*cell.Cell, error) {
	ca, err := a.Cell()
	if err != nil {
		return nil, fmt.Errorf("state A: %w", err)
	}
	cb, err := b.Cell()
	if err != nil {
		return nil, fmt.Errorf("state B: %w", err)
	}
	signed := cell.BeginCell().MustStoreUInt(tag, 32).MustStoreSlice(id[:], channelIDBits).
		MustStoreRef(ca).MustStoreRef(cb).EndCell()
	return cell.BeginCell().MustStoreUInt(op, 32).MustStoreBoolBit(byA).
		MustStoreSlice(signed.Sign(key), signatureBits).MustStoreBuilder(signed.ToBuilder()).EndCell(), nil
}

// StartUncoopBody starts an uncooperative close with both parties' signed
// states; the message itself is signed by the sender's channel key.
func StartUncoopBody(id ChannelID, byA bool, a, b SignedSemiChannel, key ed25519.PrivateKey) (*cell.Cell, error) {
	return quarantineBody(OpStartUncoop, tagUncoop, id, byA, a, b, key)
}

// ChallengeBody challenges a quarantined state with newer signed states.
func ChallengeBody(id ChannelID, byA bool, a, b SignedSemiChannel, key ed25519.PrivateKey) (*cell.Cell, error) {
	return quarantineBody(OpChallenge, tagChallenge, id, byA, a, b, key)
}

// SettleBody settles conditionals (none, for vouchers) of the counterparty's state sch.
func SettleBody(id ChannelID, fromA bool, sch SignedSemiChannel, key ed25519.PrivateKey) (*cell.Cell, error) {
	c, err := sch.Cell()
	if err != nil {
		return nil, err
	}
	signed := cell.BeginCell().MustStoreUInt(tagSettle, 32).MustStoreSlice(id[:], channelIDBits).
		MustStoreBoolBit(false).MustStoreRef(c).EndCell()
	return cell.BeginCell().MustStoreUInt(OpSettle, 32).MustStoreBoolBit(fromA).
		MustStoreSlice(signed.Sign(key), signatureBits).MustStoreBuilder(signed.ToBuilder()).EndCell(), nil
}

// FinishBody finishes an uncooperative close after the quarantine and settle windows.
func FinishBody() *cell.Cell {
	return cell.BeginCell().MustStoreUInt(OpFinish, 32).EndCell()
}

// ParseChannelClosed reads a payout body; ok is false when b is not one.
func ParseChannelClosed(b *cell.Cell) (id ChannelID, ok bool) {
	if b == nil {
		return id, false
	}
	s, err := b.BeginParse()
	if err != nil {
		return id, false
	}
	op, err := s.LoadUInt(32)
	if err != nil || op != OpChannelClosed {
		return id, false
	}
	raw, err := s.LoadSlice(channelIDBits)
	if err != nil {
		return id, false
	}
	copy(id[:], raw)
	return id, true
}
