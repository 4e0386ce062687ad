package service_test

import (
	"testing"

	"go.uber.org/goleak"
)

// ignoreMocknetRace is mocknet's one goroutine that may outlive a test
// through no fault of the services: mocknet adds a new stream's remote end to
// its connection asynchronously, so a stream opened while the connection is
// being torn down (gossipsub reopens its stream to a peer whose node is
// closing) is never reset, and its transport goroutine waits forever.
var ignoreMocknetRace = goleak.IgnoreTopFunction("github.com/libp2p/go-libp2p/p2p/net/mock.(*stream).transport")

// TestMain fails the package when a goroutine outlives its tests: every
// goroutine a service starts has an owner that stops it (Close), and a stream
// adapter's goroutine ends with its stream.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, ignoreMocknetRace)
}

// noLeaks fails t when a goroutine started during t outlives its cleanups, so
// that a leak is charged to the test that caused it. Call it first, so that
// its check runs after every other cleanup.
func noLeaks(t testing.TB) {
	t.Helper()
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before, ignoreMocknetRace) })
}
