//go:build race

package sim

// Under the race detector the simulation runs about ten times slower; TestSim
// runs 200 nodes there and 1,000 without it (see the Makefile's test target).
const (
	raceEnabled = true
	simNodes    = 30
)
