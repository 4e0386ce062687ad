package p2p

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// The peers file (Config.PeersFile, <datadir>/peers.json) remembers the peers a
// node met, so that a restart can rejoin through any of them when its bootstrap
// peers are gone:
//
//	{"version": 1, "peers": [
//	  {"id": "12D3KooW…", "addrs": ["/ip4/203.0.113.7/tcp/4001", …], "seen": "2026-11-30T12:00:00Z"},
//	  …]}
//
// Newest first, at most MaxRememberedPeers peers of at most maxPeerAddrs addresses
// each. It is written atomically (temporary file, fsync, rename) with mode 0600, and
// read through DecodePeers, which rejects anything else as a whole: the file is
// local state, but a corrupt or planted one must cost the node its memory of
// peers, never its start.
const (
	peersFileVersion = 1
	// MaxRememberedPeers is how many peers the peers file keeps, the most
	// recently seen first.
	MaxRememberedPeers = 64
	maxPeerAddrs       = 8
	maxAddrLen         = 256       // bytes of one multiaddr's text form
	maxPeersFileSize   = 256 << 10 // well above 64 × 8 × 256 bytes of addresses
)

// RememberedPeer is one entry of the peers file: a peer, the addresses it was
// reachable at and when this node was last connected to it.
type RememberedPeer struct {
	ID    peer.ID
	Addrs []ma.Multiaddr
	Seen  time.Time
}

// AddrInfo is the dialable form of p.
func (p RememberedPeer) AddrInfo() peer.AddrInfo { return peer.AddrInfo{ID: p.ID, Addrs: p.Addrs} }

type peersFileJSON struct {
	Version int             `json:"version"`
	Peers   []peerEntryJSON `json:"peers"`
}

type peerEntryJSON struct {
	ID    string    `json:"id"`
	Addrs []string  `json:"addrs"`
	Seen  time.Time `json:"seen"`
}

// EncodePeers is the peers file holding ps, in the order given (callers put the
// most recently seen first). It refuses what DecodePeers would refuse.
func EncodePeers(ps []RememberedPeer) ([]byte, error) {
	if len(ps) > MaxRememberedPeers {
		return nil, fmt.Errorf("encode peers: %d peers exceed %d", len(ps), MaxRememberedPeers)
	}
	f := peersFileJSON{Version: peersFileVersion, Peers: make([]peerEntryJSON, 0, len(ps))}
	for _, p := range ps {
		if len(p.Addrs) == 0 || len(p.Addrs) > maxPeerAddrs {
			return nil, fmt.Errorf("encode peers: %s has %d addresses (want 1..%d)", p.ID, len(p.Addrs), maxPeerAddrs)
		}
		e := peerEntryJSON{ID: p.ID.String(), Seen: p.Seen}
		for _, a := range p.Addrs {
			s := a.String()
			if len(s) > maxAddrLen {
				return nil, fmt.Errorf("encode peers: %s: address of %d bytes exceeds %d", p.ID, len(s), maxAddrLen)
			}
			e.Addrs = append(e.Addrs, s)
		}
		f.Peers = append(f.Peers, e)
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode peers: %w", err)
	}
	b = append(b, '\n')
	if len(b) > maxPeersFileSize {
		return nil, fmt.Errorf("encode peers: %d bytes exceed %d", len(b), maxPeersFileSize)
	}
	return b, nil
}

// DecodePeers parses a peers file. Anything but a well-formed file of this version
// within the size caps (at most MaxRememberedPeers distinct peers, 1..8 valid
// multiaddrs each, none ending in /p2p/) is an error, so a caller either trusts the
// whole file or none of it.
func DecodePeers(b []byte) ([]RememberedPeer, error) {
	if len(b) > maxPeersFileSize {
		return nil, fmt.Errorf("peers file of %d bytes exceeds %d", len(b), maxPeersFileSize)
	}
	var f peersFileJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("peers file: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("peers file: data after the JSON object")
	}
	if f.Version != peersFileVersion {
		return nil, fmt.Errorf("peers file: version %d is not %d", f.Version, peersFileVersion)
	}
	if len(f.Peers) > MaxRememberedPeers {
		return nil, fmt.Errorf("peers file: %d peers exceed %d", len(f.Peers), MaxRememberedPeers)
	}
	out := make([]RememberedPeer, 0, len(f.Peers))
	seen := make(map[peer.ID]bool, len(f.Peers))
	for i, e := range f.Peers {
		id, err := peer.Decode(e.ID)
		if err != nil {
			return nil, fmt.Errorf("peers file: peers[%d].id: %w", i, err)
		}
		if seen[id] {
			return nil, fmt.Errorf("peers file: peers[%d]: %s listed twice", i, id)
		}
		seen[id] = true
		if len(e.Addrs) == 0 || len(e.Addrs) > maxPeerAddrs {
			return nil, fmt.Errorf("peers file: peers[%d]: %d addresses (want 1..%d)", i, len(e.Addrs), maxPeerAddrs)
		}
		p := RememberedPeer{ID: id, Seen: e.Seen}
		for j, s := range e.Addrs {
			if len(s) > maxAddrLen {
				return nil, fmt.Errorf("peers file: peers[%d].addrs[%d]: %d bytes exceed %d", i, j, len(s), maxAddrLen)
			}
			a, err := ma.NewMultiaddr(s)
			if err != nil {
				return nil, fmt.Errorf("peers file: peers[%d].addrs[%d]: %w", i, j, err)
			}
			// The id is the entry's own; an address naming another peer would
			// make the entry dial someone else.
			if _, last := ma.SplitLast(a); last != nil && last.Code() == ma.P_P2P {
				return nil, fmt.Errorf("peers file: peers[%d].addrs[%d]: ends in /p2p/", i, j)
			}
			p.Addrs = append(p.Addrs, a)
		}
		out = append(out, p)
	}
	return out, nil
}

// loadPeersFile reads path; a missing file is an empty set.
func loadPeersFile(path string) ([]RememberedPeer, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPeersFileSize+1))
	if err != nil {
		return nil, err
	}
	return DecodePeers(b)
}

// savePeersFile writes ps to path through a synced temporary file and a rename, so
// a crash leaves the old file or the new one, never half of one.
func savePeersFile(path string, ps []RememberedPeer) error {
	b, err := EncodePeers(ps)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(b) // CreateTemp makes the file 0600
	if err == nil {
		err = tmp.Sync()
	}
	if errClose := tmp.Close(); err == nil {
		err = errClose
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// mergePeers folds fresh (peers connected now) into old, keeping each peer's newest
// entry, newest first, at most MaxRememberedPeers. Neither input is modified.
func mergePeers(old, fresh []RememberedPeer) []RememberedPeer {
	byID := make(map[peer.ID]RememberedPeer, len(old)+len(fresh))
	for _, p := range slices.Concat(old, fresh) {
		if q, ok := byID[p.ID]; !ok || !p.Seen.Before(q.Seen) {
			byID[p.ID] = p
		}
	}
	out := make([]RememberedPeer, 0, len(byID))
	for _, p := range byID {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b RememberedPeer) int {
		if c := b.Seen.Compare(a.Seen); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	if len(out) > MaxRememberedPeers {
		out = out[:MaxRememberedPeers]
	}
	return out
}
