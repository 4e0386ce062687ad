//go:build !race

package sim

// TestSim's size without the race detector (see race_test.go): about two
// minutes of two cores; SIM_NODES runs other sizes (200: about five).
const (
	raceEnabled = false
	simNodes    = 100
)
