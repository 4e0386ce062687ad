//go:build race

package sim

// TestSim's size: the race detector slows the simulation about tenfold and
// the bubble runs on one P there (see simulate), so it runs a small network;
// SIM_NODES runs any size by hand.
const (
	raceEnabled = true
	simNodes    = 30
)
