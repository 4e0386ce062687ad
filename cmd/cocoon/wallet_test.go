package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The wallet and channel commands use the files the node's config names in
// [settle] wallet and store, as the node does; a config that does not load
// is a one-line error, not a silent fall back to the defaults.
func TestWalletCommandsReadTheConfig(t *testing.T) {
	dir := initDir(t)
	out, stderr, err := run(t, "wallet", "--datadir", dir)
	if err != nil {
		t.Fatalf("cocoon wallet: %v: %s", err, stderr)
	}
	addr := strings.Fields(strings.SplitN(out, "\n", 2)[0])[2]

	elsewhere := t.TempDir()
	key, store := filepath.Join(elsewhere, "moved.key"), filepath.Join(elsewhere, "moved.db")
	if err := os.Rename(filepath.Join(dir, "wallet.key"), key); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "config.toml")
	b, _ := os.ReadFile(cfgPath)
	b = []byte(strings.Replace(strings.Replace(string(b), "store = \"\"", "store = \""+store+"\"", 1), "wallet = \"\"", "wallet = \""+key+"\"", 1))
	os.WriteFile(cfgPath, b, 0o600)

	out, stderr, err = run(t, "wallet", "--datadir", dir)
	if err != nil || !strings.Contains(out, addr) {
		t.Fatalf("cocoon wallet with [settle] wallet = %s: %v: %s%s; want address %s", key, err, out, stderr, addr)
	}
	if _, stderr, err := run(t, "channel", "list", "--datadir", dir); err != nil {
		t.Fatalf("cocoon channel list: %v: %s", err, stderr)
	}
	if _, err := os.Stat(store); err != nil {
		t.Fatalf("cocoon channel list did not open the configured store: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "channels.db")); err == nil {
		t.Fatal("cocoon channel list opened <datadir>/channels.db despite [settle] store")
	}

	os.WriteFile(cfgPath, append(b, []byte("\n[settle]\nbogus = 1\n")...), 0o600)
	_, stderr, err = run(t, "wallet", "--datadir", dir)
	if err == nil || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.Contains(stderr, "config.toml") {
		t.Fatalf("a broken config: %v, stderr %q; want one line naming config.toml", err, stderr)
	}
}
