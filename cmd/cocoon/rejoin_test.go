package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/node"
	"github.com/cocoon-network/cocoon/p2p"
)

// TestRejoinAfterBootstrapDied: node B's config names only A as bootstrap peer; B
// meets C through A; A is killed (-9) and B restarted: B comes back connected to C
// through the peers file it kept, not through its config.
func TestRejoinAfterBootstrapDied(t *testing.T) {
	a := startNode(t, initDir(t))
	addrA := tcpAddr(t, a)

	dirB := initDir(t)
	cfg, err := node.Load(dirB)
	if err != nil {
		t.Fatal(err)
	}
	cfg.P2P.Bootstrap = []string{addrA}
	if err := node.Save(dirB, cfg); err != nil {
		t.Fatal(err)
	}
	b := startNode(t, dirB)
	c := startNode(t, initDir(t), "--bootstrap", addrA, "--bootstrap", tcpAddr(t, b))
	idA, idC := a.status(t).PeerID, c.status(t).PeerID

	waitFor(t, 20*time.Second, "B's peers file to list C", func() bool {
		raw, err := os.ReadFile(filepath.Join(dirB, node.PeersFile))
		if err != nil {
			return false
		}
		ps, err := p2p.DecodePeers(raw)
		if err != nil {
			t.Fatalf("B's peers file: %v", err)
		}
		for _, p := range ps {
			if p.ID.String() == idC {
				return true
			}
		}
		return false
	})

	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	a.cmd.Wait()
	b.cmd.Process.Signal(syscall.SIGTERM)
	if err := b.cmd.Wait(); err != nil {
		t.Fatalf("B's exit after SIGTERM: %v\n%s", err, b.stderr)
	}

	restarted := time.Now()
	b = startNode(t, dirB)
	waitFor(t, 30*time.Second, "the restarted B to reach C", func() bool { return b.peers(t)[idC] })
	t.Logf("restarted B connected to C %s after its start (bootstrap A dead)", time.Since(restarted).Round(time.Millisecond))
	if b.peers(t)[idA] {
		t.Fatal("B connected to the killed A")
	}
}

// tcpAddr is p's TCP multiaddr with /p2p/<id>, for --bootstrap.
func tcpAddr(t *testing.T, p *proc) string {
	t.Helper()
	for _, a := range p.status(t).Addrs {
		if strings.Contains(a, "/tcp/") {
			return a
		}
	}
	t.Fatalf("%s lists no TCP address", p.datadir)
	return ""
}
