package node

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// PeersFile in a datadir is where a running node remembers the peers it met
// (p2p.Config.PeersFile; mode 0600), so that a restart rejoins through them when its
// bootstrap peers are gone.
const PeersFile = "peers.json"

// ErrIdentityExists is returned by Init when the datadir already holds an identity
// and force is not set.
var ErrIdentityExists = errors.New("identity already exists")

// Init creates datadir with a commented config.toml, a new Ed25519 identity.key and a
// random api.token (both 0600). It refuses to replace an existing identity unless
// force is set; an existing config.toml is kept.
func Init(datadir string, force bool) (peer.ID, error) {
	if err := os.MkdirAll(datadir, 0o700); err != nil {
		return "", fmt.Errorf("create datadir: %w", err)
	}
	idPath := filepath.Join(datadir, IdentityFile)
	if _, err := os.Stat(idPath); err == nil && !force {
		return "", fmt.Errorf("%s: %w (use --force to replace it and lose the old peer ID)", idPath, ErrIdentityExists)
	}
	sk, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return "", fmt.Errorf("generate identity: %w", err)
	}
	raw, err := crypto.MarshalPrivateKey(sk)
	if err != nil {
		return "", fmt.Errorf("encode identity: %w", err)
	}
	if err := writeFileAtomic(idPath, raw, 0o600); err != nil {
		return "", err
	}
	tok := make([]byte, 32)
	rand.Read(tok)
	if err := writeFileAtomic(filepath.Join(datadir, TokenFile), []byte(hex.EncodeToString(tok)+"\n"), 0o600); err != nil {
		return "", err
	}
	cfgPath := filepath.Join(datadir, ConfigFile)
	if _, err := os.Stat(cfgPath); errors.Is(err, fs.ErrNotExist) {
		if err := writeFileAtomic(cfgPath, []byte(configTemplate), 0o644); err != nil {
			return "", err
		}
	}
	return peer.IDFromPrivateKey(sk)
}

// LoadIdentity reads the node's private key. It refuses a key file that others can
// read, as ssh does.
func LoadIdentity(path string) (crypto.PrivKey, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("identity key: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("identity key %s: mode %04o lets other users read it (chmod 600 %s)", path, st.Mode().Perm(), path)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("identity key: %w", err)
	}
	sk, err := crypto.UnmarshalPrivateKey(raw)
	if err != nil {
		return nil, fmt.Errorf("identity key %s: not a libp2p private key: %w", path, err)
	}
	return sk, nil
}

// LoadToken reads the API bearer token of a datadir.
func LoadToken(datadir string) (string, error) {
	path := filepath.Join(datadir, TokenFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("api token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < 16 {
		return "", fmt.Errorf("api token %s: too short", path)
	}
	return tok, nil
}

// writeFileAtomic writes b to path through a synced temporary file and a rename, so a
// crash leaves either the old file or the new one.
func writeFileAtomic(path string, b []byte, mode fs.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Save writes cfg as <datadir>/config.toml (without the template's comments), for
// tools that generate node configurations such as the local testnet.
func Save(datadir string, cfg Config) error {
	var b bytes.Buffer
	b.WriteString("# written by a tool; `cocoon init` writes the commented template\n")
	if err := toml.NewEncoder(&b).Encode(cfg); err != nil {
		return fmt.Errorf("encode config: %w", err)
	}
	return writeFileAtomic(filepath.Join(datadir, ConfigFile), b.Bytes(), 0o644)
}

// CheckDatadir refuses a datadir whose secrets are exposed: a directory that
// group or others may write to (they could replace the config or a key), or an
// identity.key, wallet.key or api.token that group or others may read (as
// LoadIdentity and ssh do). The error is one line naming the path and the
// chmod that fixes it. Files that do not exist are not its business.
func CheckDatadir(datadir string) error {
	st, err := os.Stat(datadir)
	if err != nil {
		return fmt.Errorf("datadir: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("datadir %s: not a directory", datadir)
	}
	if m := st.Mode().Perm(); m&0o022 != 0 {
		return fmt.Errorf("datadir %s: mode %04o lets other users write to it (chmod go-w %s)", datadir, m, datadir)
	}
	for _, name := range []string{IdentityFile, WalletFile, TokenFile} {
		path := filepath.Join(datadir, name)
		st, err := os.Stat(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("datadir: %w", err)
		}
		if m := st.Mode().Perm(); !st.IsDir() && m&0o077 != 0 {
			return fmt.Errorf("%s: mode %04o lets other users read it (chmod 600 %s)", path, m, path)
		}
	}
	return nil
}
