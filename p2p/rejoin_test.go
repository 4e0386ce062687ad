package p2p

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

func TestRedialDelay(t *testing.T) {
	for _, c := range []struct {
		attempts int
		base     time.Duration
	}{{1, time.Second}, {2, 2 * time.Second}, {3, 4 * time.Second}, {6, 32 * time.Second}, {7, time.Minute}, {8, time.Minute}, {1000, time.Minute}} {
		lo, hi := time.Duration(float64(c.base)*(1-redialJitter)), time.Duration(float64(c.base)*(1+redialJitter))
		seen := map[time.Duration]bool{}
		for range 100 {
			d := redialDelay(c.attempts)
			if d < lo || d >= hi {
				t.Fatalf("redialDelay(%d) = %s; want in [%s, %s)", c.attempts, d, lo, hi)
			}
			seen[d] = true
		}
		if len(seen) < 50 {
			t.Errorf("redialDelay(%d): %d distinct delays in 100; want jitter", c.attempts, len(seen))
		}
	}
}

// syncBuffer is a log sink that a node's goroutines may write while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func loopbackNode(t *testing.T, key crypto.PrivKey, listen string, mod func(*Config)) (*Node, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	cfg := Config{
		Identity: key,
		Listen:   []string{listen},
		Logger:   slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mod != nil {
		mod(&cfg)
	}
	n, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n, logs
}

func waitConnected(t *testing.T, n *Node, p peer.ID, d time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for n.Host.Network().Connectedness(p) != network.Connected {
		if time.Since(start) > d {
			t.Fatalf("%s not connected to %s after %s", n.Host.ID(), p, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

// waitLog waits up to 5 s for a log line containing msg (the line for a dial is
// written after the connection is up).
func waitLog(t *testing.T, logs *syncBuffer, msg string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), msg) {
		if time.Now().After(deadline) {
			t.Fatalf("no log line %q:\n%s", msg, logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freePort is a TCP port on 127.0.0.1 that nothing listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestBootstrapComesUpLate: a node whose bootstrap peer is down when it starts
// keeps dialling it with backoff, and joins it once it is up.
func TestBootstrapComesUpLate(t *testing.T) {
	bootKey := newKey(t)
	bootID, _ := peer.IDFromPrivateKey(bootKey)
	listen := fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", freePort(t))
	n, logs := loopbackNode(t, newKey(t), "/ip4/127.0.0.1/tcp/0", func(c *Config) {
		c.Bootstrap = []string{listen + "/p2p/" + bootID.String()}
	})
	// Two attempts fail (at once and after ~1 s), so the retry rule, not the
	// first dial, is what joins.
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(logs.String(), "bootstrap peer unreachable") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("no second attempt on the missing bootstrap peer in 10 s; logs:\n%s", logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if c := strings.Count(logs.String(), "level=WARN"); c != 1 {
		t.Errorf("%d warnings for one unreachable bootstrap peer; want 1:\n%s", c, logs)
	}
	boot, _ := loopbackNode(t, bootKey, listen, nil)
	took := waitConnected(t, n, boot.Host.ID(), 15*time.Second)
	t.Logf("joined the late bootstrap peer %s after it came up", took)
	waitLog(t, logs, "bootstrap peer reached")
}

// TestRejoinThroughRememberedPeers: a node restarted with the same peers file, whose
// only bootstrap peer is gone, rejoins through the peer it met in its last run.
func TestRejoinThroughRememberedPeers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "peers.json")
	key := newKey(t)
	other, _ := loopbackNode(t, newKey(t), "/ip4/127.0.0.1/tcp/0", nil)
	deadBoot := fmt.Sprintf("/ip4/127.0.0.1/tcp/%d/p2p/%s", freePort(t), mustPeer(t, goldenPeerA))

	first, _ := loopbackNode(t, key, "/ip4/127.0.0.1/tcp/0", func(c *Config) {
		c.PeersFile = path
		c.Bootstrap = []string{deadBoot}
	})
	connect(t, first, other)
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	ps, err := loadPeersFile(path)
	if err != nil || len(ps) != 1 || ps[0].ID != other.Host.ID() {
		t.Fatalf("peers file after Close = %v, %v; want [%s]", ps, err, other.Host.ID())
	}

	again, logs := loopbackNode(t, key, "/ip4/127.0.0.1/tcp/0", func(c *Config) {
		c.PeersFile = path
		c.Bootstrap = []string{deadBoot}
	})
	took := waitConnected(t, again, other.Host.ID(), 10*time.Second)
	t.Logf("rejoined through the remembered peer in %s", took)
	waitLog(t, logs, "dialing remembered peers")
	waitLog(t, logs, "remembered peer reached")
}

// TestCorruptPeersFile: a peers file that does not decode costs one warning and
// the memory of peers, not the start; the next save replaces it.
func TestCorruptPeersFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "peers.json")
	if err := os.WriteFile(path, []byte(`{"version":1,"peers":[{"id":"x"`), 0o600); err != nil {
		t.Fatal(err)
	}
	other, _ := loopbackNode(t, newKey(t), "/ip4/127.0.0.1/tcp/0", nil)
	n, logs := loopbackNode(t, newKey(t), "/ip4/127.0.0.1/tcp/0", func(c *Config) { c.PeersFile = path })
	if c := strings.Count(logs.String(), "peers file ignored"); c != 1 {
		t.Fatalf("%d log lines for a corrupt peers file; want 1:\n%s", c, logs)
	}
	connect(t, n, other)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if ps, err := loadPeersFile(path); err != nil || len(ps) != 1 {
		t.Fatalf("peers file after Close = %v, %v; want the connected peer", ps, err)
	}
}
