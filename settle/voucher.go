package settle

import (
	"errors"
	"fmt"

	"github.com/xssnick/tonutils-go/tvm/cell"
)

// A voucher is the client's signed semi-channel state on a client→worker
// channel: seqno and the cumulative nanoTON sent to the worker, signed with
// the client's channel key (party A). On the wire it is the BOC of one
// SignedSemiChannel cell (signature ‖ semichannel_state, no counterparty
// data, no conditionals), at most MaxVoucherSize bytes; the contract takes
// the same cell by reference in start_uncooperative_close and challenge.

// MaxVoucherSize caps an encoded voucher; larger input is refused before parsing.
const MaxVoucherSize = 512

// Voucher errors. Accept wraps one of them; market maps them to reject codes.
var (
	ErrMalformedVoucher = errors.New("malformed voucher")
	ErrUnknownChannel   = errors.New("unknown channel")
	ErrBadSignature     = errors.New("bad voucher signature")
	ErrStaleVoucher     = errors.New("voucher seqno not above the newest accepted")
	ErrAmountDecreased  = errors.New("voucher amount below the newest accepted")
	ErrOverDeposit      = errors.New("voucher amount above the channel deposit")
	ErrChannelClosed    = errors.New("channel closed")
)

// EncodeVoucher serialises a signed state.
func EncodeVoucher(v SignedSemiChannel) ([]byte, error) {
	c, err := v.Cell()
	if err != nil {
		return nil, fmt.Errorf("encode voucher: %w", err)
	}
	return c.ToBOC(), nil
}

// DecodeVoucher parses a voucher without checking its signature. It refuses
// oversized input, trailing data, conditionals, counterparty data and
// seqnos the contract cannot store.
func DecodeVoucher(b []byte) (SignedSemiChannel, error) {
	if len(b) == 0 || len(b) > MaxVoucherSize {
		return SignedSemiChannel{}, fmt.Errorf("%w: %d bytes", ErrMalformedVoucher, len(b))
	}
	c, err := cell.FromBOC(b)
	if err != nil {
		return SignedSemiChannel{}, fmt.Errorf("%w: %v", ErrMalformedVoucher, err)
	}
	v, err := ParseSignedSemiChannel(c)
	if err != nil {
		return SignedSemiChannel{}, fmt.Errorf("%w: %v", ErrMalformedVoucher, err)
	}
	switch {
	case v.State.Data.Conditionals != nil:
		return SignedSemiChannel{}, fmt.Errorf("%w: conditional payments are not used", ErrMalformedVoucher)
	case v.State.Counterparty != nil:
		return SignedSemiChannel{}, fmt.Errorf("%w: counterparty data is not used", ErrMalformedVoucher)
	case v.State.Data.Seqno > maxSeqno:
		return SignedSemiChannel{}, fmt.Errorf("%w: seqno %d above 2^32-1", ErrMalformedVoucher, v.State.Data.Seqno)
	}
	return v, nil
}

// Voucher returns a signed state of seqno and cumulative amount sent on channel id.
func Voucher(id ChannelID, seqno, sent uint64, w *Wallet) (SignedSemiChannel, error) {
	return SignSemiChannel(SemiChannel{ChannelID: id, Data: SemiChannelBody{Seqno: seqno, Sent: sent}}, w.PrivateKey())
}
