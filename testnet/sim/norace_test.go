//go:build !race

package sim

// TestSim's size without the race detector (see race_test.go).
const (
	raceEnabled = false
	simNodes    = 100
)
