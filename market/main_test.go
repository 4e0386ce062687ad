package market

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a goroutine outlives its tests: the job
// protocol's readers and writers end with the job. The fuzz engine lives for
// the whole process, so it is closed first.
func TestMain(m *testing.M) {
	code := m.Run()
	if engine.b != nil {
		engine.b.Close()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}
