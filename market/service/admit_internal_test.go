package service

import (
	"testing"

	"github.com/cocoon-network/cocoon/runtime"
)

// A worker admits its slots plus the configured queue (runtime.queue), not
// the default queue whatever the configuration says.
func TestQueueCapIsTheConfiguredQueue(t *testing.T) {
	for _, q := range []int{-1, 3, 100} {
		want := max(q, 0)
		if got := queueCap(runtime.Limit(nil, 2, q)); got != want {
			t.Errorf("runtime.queue %d: queueCap %d; want %d", q, got, want)
		}
	}
}
