package settle

import (
	"bytes"
	_ "embed"
	"encoding/hex"
	"fmt"

	"github.com/xssnick/tonutils-go/tvm/cell"
)

// asyncChannelBOC is the compiled code of TON's asynchronous payment-channel
// contract, func/async-channel.func of github.com/ton-blockchain/payment-channels
// ("compiled code" section of its README). The bytes are the hex constant
// AsyncPaymentChannelCodeBoC of github.com/xssnick/tonutils-go v1.15.5
// ton/payments/types.go, decoded to binary; see async-channel.md.
//
//go:embed async-channel.boc
var asyncChannelBOC []byte

// ChannelCodeHashHex is the representation hash of the contract code cell.
const ChannelCodeHashHex = "41f5b77f02d4a96eb465197215ed00923720a6c731fa32934f9c0e80ffb85589"

var channelCode = func() *cell.Cell {
	c, err := cell.FromBOC(asyncChannelBOC)
	if err != nil {
		panic(fmt.Sprintf("settle: embedded payment-channel code: %v", err))
	}
	return c
}()

// ChannelCode returns the payment-channel contract code cell (shared; do not mutate).
func ChannelCode() *cell.Cell { return channelCode }

// ChannelCodeHash returns the representation hash of the contract code.
func ChannelCodeHash() []byte { return channelCode.Hash() }

func init() {
	want, _ := hex.DecodeString(ChannelCodeHashHex)
	if !bytes.Equal(channelCode.Hash(), want) {
		panic(fmt.Sprintf("settle: embedded payment-channel code hash %x, want %s", channelCode.Hash(), ChannelCodeHashHex))
	}
}
