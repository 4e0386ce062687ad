package p2p

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

const (
	goldenPeerA = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"
	goldenPeerB = "12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp"
)

// goldenPeersFile is the file a node writes for two remembered peers; a change here
// is a change of the on-disk format.
const goldenPeersFile = `{
  "version": 1,
  "peers": [
    {
      "id": "` + goldenPeerA + `",
      "addrs": [
        "/ip4/127.0.0.1/tcp/4001",
        "/ip4/127.0.0.1/udp/4001/quic-v1"
      ],
      "seen": "2026-11-30T12:00:00Z"
    },
    {
      "id": "` + goldenPeerB + `",
      "addrs": [
        "/ip4/203.0.113.7/tcp/4001/p2p/` + goldenPeerA + `/p2p-circuit"
      ],
      "seen": "2026-11-30T11:59:30Z"
    }
  ]
}
`

func goldenPeers(t testing.TB) []RememberedPeer {
	at := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	return []RememberedPeer{
		{ID: mustPeer(t, goldenPeerA), Addrs: mustAddrs(t, "/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.1/udp/4001/quic-v1"), Seen: at},
		{ID: mustPeer(t, goldenPeerB), Addrs: mustAddrs(t, "/ip4/203.0.113.7/tcp/4001/p2p/"+goldenPeerA+"/p2p-circuit"), Seen: at.Add(-30 * time.Second)},
	}
}

func mustPeer(t testing.TB, s string) peer.ID {
	id, err := peer.Decode(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func mustAddrs(t testing.TB, ss ...string) []ma.Multiaddr {
	var out []ma.Multiaddr
	for _, s := range ss {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, a)
	}
	return out
}

func equalPeers(a, b []RememberedPeer) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].ID != b[i].ID || !a[i].Seen.Equal(b[i].Seen) || len(a[i].Addrs) != len(b[i].Addrs) {
			return false
		}
		for j := range a[i].Addrs {
			if !a[i].Addrs[j].Equal(b[i].Addrs[j]) {
				return false
			}
		}
	}
	return true
}

func TestPeersFileGolden(t *testing.T) {
	b, err := EncodePeers(goldenPeers(t))
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != goldenPeersFile {
		t.Fatalf("EncodePeers(golden) =\n%s\nwant\n%s", b, goldenPeersFile)
	}
	ps, err := DecodePeers([]byte(goldenPeersFile))
	if err != nil || !equalPeers(ps, goldenPeers(t)) {
		t.Fatalf("DecodePeers(golden) = %v, %v; want %v", ps, err, goldenPeers(t))
	}
}

func TestDecodePeersRejects(t *testing.T) {
	entry := func(id string, addrs ...string) string {
		return fmt.Sprintf(`{"id":%q,"addrs":["%s"],"seen":"2026-11-30T12:00:00Z"}`, id, strings.Join(addrs, `","`))
	}
	file := func(entries ...string) string {
		return `{"version":1,"peers":[` + strings.Join(entries, ",") + `]}`
	}
	ok := entry(goldenPeerA, "/ip4/127.0.0.1/tcp/4001")
	var many []string
	for range MaxRememberedPeers + 1 {
		many = append(many, entry(peer.ID(fmt.Sprint(len(many))).String(), "/ip4/127.0.0.1/tcp/1"))
	}
	nineAddrs := make([]string, maxPeerAddrs+1)
	for i := range nineAddrs {
		nineAddrs[i] = fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", 4000+i)
	}
	for _, c := range []struct{ name, in, want string }{
		{"empty", "", "EOF"},
		{"not json", "peers", "invalid character"},
		{"truncated", file(ok)[:40], "unexpected EOF"},
		{"trailing data", file(ok) + "{}", "data after"},
		{"version", `{"version":2,"peers":[]}`, "version 2"},
		{"unknown field", `{"version":1,"peers":[],"evil":1}`, "unknown field"},
		{"too many peers", file(many...), "exceed 64"},
		{"bad id", file(entry("QmNotAPeer", "/ip4/127.0.0.1/tcp/1")), "peers[0].id"},
		{"duplicate", file(ok, ok), "listed twice"},
		{"no addrs", file(`{"id":"` + goldenPeerA + `","addrs":[],"seen":"2026-11-30T12:00:00Z"}`), "0 addresses"},
		{"too many addrs", file(entry(goldenPeerA, nineAddrs...)), "9 addresses"},
		{"bad addr", file(entry(goldenPeerA, "/ip4/1.2.3.4/tcp/x")), "peers[0].addrs[0]"},
		{"long addr", file(entry(goldenPeerA, "/dns/"+strings.Repeat("a", maxAddrLen)+"/tcp/1")), "exceed 256"},
		{"names another peer", file(entry(goldenPeerA, "/ip4/127.0.0.1/tcp/1/p2p/"+goldenPeerB)), "ends in /p2p/"},
		{"bad time", `{"version":1,"peers":[{"id":"` + goldenPeerA + `","addrs":["/ip4/127.0.0.1/tcp/1"],"seen":"yesterday"}]}`, "parsing time"},
		{"huge", `{"version":1,"peers":[],"x":"` + strings.Repeat("a", maxPeersFileSize) + `"}`, "exceeds"},
	} {
		ps, err := DecodePeers([]byte(c.in))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: DecodePeers = %v, %v; want an error containing %q", c.name, ps, err, c.want)
		}
	}
}

func TestMergePeers(t *testing.T) {
	at := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	addr := mustAddrs(t, "/ip4/127.0.0.1/tcp/1")
	var old []RememberedPeer
	for i := range MaxRememberedPeers {
		old = append(old, RememberedPeer{ID: peer.ID(fmt.Sprint("old", i)), Addrs: addr, Seen: at.Add(-time.Duration(i) * time.Minute)})
	}
	moved := mustAddrs(t, "/ip4/127.0.0.1/tcp/2")
	fresh := []RememberedPeer{
		{ID: "new", Addrs: addr, Seen: at.Add(time.Minute)},
		{ID: old[10].ID, Addrs: moved, Seen: at.Add(time.Minute)},
	}
	got := mergePeers(old, fresh)
	if len(got) != MaxRememberedPeers {
		t.Fatalf("merged %d peers; want %d", len(got), MaxRememberedPeers)
	}
	if got[0].ID != "new" && got[1].ID != "new" {
		t.Errorf("newest peer not first: %v %v", got[0].ID, got[1].ID)
	}
	for _, p := range got {
		if p.ID == old[10].ID && !p.Addrs[0].Equal(moved[0]) {
			t.Errorf("%s kept its old address %s", p.ID, p.Addrs[0])
		}
		if p.ID == old[MaxRememberedPeers-1].ID {
			t.Errorf("the oldest peer was kept past the cap")
		}
	}
	for i := 1; i < len(got); i++ {
		if got[i].Seen.After(got[i-1].Seen) {
			t.Fatalf("not newest first at %d", i)
		}
	}
}

func TestSavePeersFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "peers.json")
	if ps, err := loadPeersFile(path); err != nil || ps != nil {
		t.Fatalf("loadPeersFile(missing) = %v, %v; want nothing, no error", ps, err)
	}
	if err := savePeersFile(path, goldenPeers(t)); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("peers file mode %v, %v; want 0600", st.Mode().Perm(), err)
	}
	ps, err := loadPeersFile(path)
	if err != nil || !equalPeers(ps, goldenPeers(t)) {
		t.Fatalf("loadPeersFile = %v, %v", ps, err)
	}
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Fatalf("datadir holds %d entries after a save; want the file alone", len(ents))
	}
}

// FuzzDecodePeers: no input crashes the decoder, and whatever it accepts survives a
// round trip through EncodePeers unchanged.
func FuzzDecodePeers(f *testing.F) {
	f.Add([]byte(goldenPeersFile))
	f.Add([]byte(`{"version":1,"peers":[]}`))
	f.Add([]byte(`{"version":1,"peers":[{"id":"` + goldenPeerA + `","addrs":["/dns4/example.com/udp/443/quic-v1/webtransport"],"seen":"2026-11-30T12:00:00+05:30"}]}`))
	f.Add([]byte(`{"version":1,"peers":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ps, err := DecodePeers(b)
		if err != nil {
			return
		}
		enc, err := EncodePeers(ps)
		if err != nil {
			t.Fatalf("EncodePeers(DecodePeers(%q)): %v", b, err)
		}
		again, err := DecodePeers(enc)
		if err != nil || !equalPeers(ps, again) {
			t.Fatalf("round trip of %q: got %v, %v; want %v", b, again, err, ps)
		}
	})
}
