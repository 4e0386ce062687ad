//go:build !race

package sim

const (
	raceEnabled = false
	simNodes    = 100
)
