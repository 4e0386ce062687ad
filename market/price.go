package market

import (
	"errors"
	"math/bits"
)

// Price is what a worker charges for one model, in nanoTON per 1M tokens.
type Price struct {
	Prompt     uint64 // per 1M prompt tokens
	Completion uint64 // per 1M completion tokens
}

// ErrCostOverflow is returned when a job's cost does not fit in 64 bits of nanoTON.
var ErrCostOverflow = errors.New("market: cost overflows uint64 nanoTON")

const perMillion = 1_000_000

// Cost is the price of a job: ceil((prompt*p.Prompt + completion*p.Completion) / 1e6)
// nanoTON, computed exactly in 128 bits. Costs are rounded up once per job, never per
// token, so splitting a job across vouchers never adds up to more than this.
func Cost(p Price, prompt, completion uint64) (uint64, error) {
	hi1, lo1 := bits.Mul64(prompt, p.Prompt)
	hi2, lo2 := bits.Mul64(completion, p.Completion)
	lo, carry := bits.Add64(lo1, lo2, 0)
	hi, carry2 := bits.Add64(hi1, hi2, carry)
	if carry2 != 0 {
		return 0, ErrCostOverflow
	}
	// ceil(x / 1e6) = floor((x + 1e6 - 1) / 1e6)
	lo, carry = bits.Add64(lo, perMillion-1, 0)
	hi, carry2 = bits.Add64(hi, 0, carry)
	if carry2 != 0 || hi >= perMillion {
		return 0, ErrCostOverflow
	}
	q, _ := bits.Div64(hi, lo, perMillion)
	return q, nil
}
