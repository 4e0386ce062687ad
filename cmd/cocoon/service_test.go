package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-network/cocoon/node"
)

// parseUnit reads a systemd unit into section → key → values, in order.
func parseUnit(t *testing.T, text string) map[string]map[string][]string {
	t.Helper()
	out := map[string]map[string][]string{}
	var sec string
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			sec = line[1 : len(line)-1]
			out[sec] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || sec == "" {
				t.Fatalf("unit line %q: not KEY=VALUE in a section", line)
			}
			out[sec][k] = append(out[sec][k], v)
		}
	}
	return out
}

// TestServiceUnitShipped: dist/cocoon.service is the unit `cocoon service
// install` writes for the default user, datadir and binary, and it says
// what the node needs.
func TestServiceUnitShipped(t *testing.T) {
	shipped, err := os.ReadFile(filepath.Join("..", "..", "dist", unitName))
	if err != nil {
		t.Fatal(err)
	}
	if string(shipped) != renderUnit(defaultUnit) {
		t.Fatalf("dist/%s differs from renderUnit(defaultUnit); regenerate it:\n%s", unitName, renderUnit(defaultUnit))
	}
	u := parseUnit(t, string(shipped))
	for _, c := range []struct{ sec, key, want string }{
		{"Service", "ExecStart", "/usr/local/bin/cocoon node --datadir /var/lib/cocoon"},
		{"Service", "User", "cocoon"},
		{"Service", "Restart", "on-failure"},
		{"Service", "ReadWritePaths", "/var/lib/cocoon"},
		{"Service", "ProtectSystem", "strict"},
		{"Service", "NoNewPrivileges", "yes"},
		{"Service", "PrivateTmp", "yes"},
		{"Service", "TimeoutStopSec", "10s"},
		{"Service", "StandardOutput", "journal"},
		{"Install", "WantedBy", "multi-user.target"},
	} {
		if got := u[c.sec][c.key]; len(got) != 1 || got[0] != c.want {
			t.Errorf("[%s] %s = %q; want %q", c.sec, c.key, got, c.want)
		}
	}
	for _, bad := range []string{"PrivateDevices", "ProtectKernelTunables", "DynamicUser"} {
		if _, ok := u["Service"][bad]; ok {
			t.Errorf("[Service] sets %s, which hides the GPU or configfs-tsm from the node", bad)
		}
	}
}

// TestServiceInstallUninstall writes the unit into a temporary unit folder
// as a user would, checks what it holds and that systemd-analyze verify
// accepts it, then removes it. systemctl is never run (no --now).
func TestServiceInstallUninstall(t *testing.T) {
	dir := initDir(t)
	units := filepath.Join(t.TempDir(), "units")
	// The service's user must not be root; "daemon" exists on every Debian.
	out, stderr, err := run(t, "service", "install", "--datadir", dir, "--user", "daemon", "--unit-dir", units, "--bin", bin)
	if err != nil {
		t.Fatalf("service install: %v: %s", err, stderr)
	}
	if !strings.Contains(out, "systemctl enable --now cocoon.service") || !strings.Contains(out, "systemctl daemon-reload") {
		t.Fatalf("service install did not print the systemctl commands:\n%s", out)
	}
	path := filepath.Join(units, unitName)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := parseUnit(t, string(b))
	absBin, _ := filepath.EvalSymlinks(bin)
	if got, want := u["Service"]["ExecStart"], absBin+" node --datadir "+dir; len(got) != 1 || got[0] != want {
		t.Errorf("ExecStart = %q; want %q", got, want)
	}
	if got := u["Service"]["User"]; len(got) != 1 || got[0] != "daemon" {
		t.Errorf("User = %q; want daemon", got)
	}
	if got := u["Service"]["ReadWritePaths"]; len(got) != 1 || got[0] != dir {
		t.Errorf("ReadWritePaths = %q; want %q", got, dir)
	}
	if got := u["Service"]["Restart"]; len(got) != 1 || got[0] != "on-failure" {
		t.Errorf("Restart = %q; want on-failure", got)
	}
	if sa, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Log("systemd-analyze is absent: the unit is not verified")
	} else {
		o, err := exec.Command(sa, "verify", path).CombinedOutput()
		if err != nil {
			t.Fatalf("systemd-analyze verify %s: %v\n%s", path, err, o)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(o)), "\n") {
			if strings.Contains(line, unitName) && !strings.Contains(line, "is not executable") {
				t.Errorf("systemd-analyze verify: %s", line)
			}
		}
		t.Logf("systemd-analyze verify: ok %s", strings.TrimSpace(string(o)))
	}

	// Refusals name the flag, on one line.
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"root", []string{"--user", "root", "--datadir", dir}, "--user"},
		{"no such user", []string{"--user", "no-such-user-cocoon", "--datadir", dir}, "--user"},
		{"no config", []string{"--user", "daemon", "--datadir", t.TempDir()}, "--datadir"},
		{"space in datadir", []string{"--user", "daemon", "--datadir", "/var/lib/co coon"}, "--datadir"},
		{"bin not executable", []string{"--user", "daemon", "--datadir", dir, "--bin", filepath.Join(dir, "config.toml")}, "--bin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"service", "install", "--unit-dir", t.TempDir()}, tc.args...)
			_, stderr, err := run(t, args...)
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			if err == nil || len(lines) != 1 || !strings.Contains(lines[0], tc.want) {
				t.Fatalf("cocoon %v: %v, stderr:\n%s\nwant a failure, one line naming %s", args, err, stderr, tc.want)
			}
		})
	}

	out, stderr, err = run(t, "service", "uninstall", "--unit-dir", units)
	if err != nil {
		t.Fatalf("service uninstall: %v: %s", err, stderr)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("%s still there after uninstall: %v", path, err)
	}
	if !strings.Contains(out, "systemctl disable --now cocoon.service") {
		t.Fatalf("service uninstall did not print how to stop it:\n%s", out)
	}
	if _, stderr, err := run(t, "service", "uninstall", "--unit-dir", units); err == nil || !strings.Contains(stderr, "--unit-dir") {
		t.Fatalf("uninstall of an absent unit: %v: %s", err, stderr)
	}
}

// TestCheckDatadir: a datadir others may write to, or a key file others may
// read, is refused with one line naming the path and the chmod; `cocoon
// node` refuses to start on it.
func TestCheckDatadir(t *testing.T) {
	if err := node.CheckDatadir(initDir(t)); err != nil {
		t.Fatalf("CheckDatadir(fresh init) = %v; want nil", err)
	}
	for _, tc := range []struct {
		name string
		mode os.FileMode
		want string // the chmod the error names
	}{
		{"", 0o770, "chmod go-w"},
		{"", 0o757, "chmod go-w"},
		{node.IdentityFile, 0o644, "chmod 600"},
		{node.WalletFile, 0o640, "chmod 600"},
		{node.TokenFile, 0o604, "chmod 600"},
	} {
		dir := initDir(t)
		path := filepath.Join(dir, tc.name)
		if err := os.Chmod(path, tc.mode); err != nil {
			t.Fatal(err)
		}
		err := node.CheckDatadir(dir)
		if err == nil || !strings.Contains(err.Error(), tc.want+" "+path) || strings.Contains(err.Error(), "\n") {
			t.Errorf("CheckDatadir with %s mode %04o = %v; want one line naming %q", path, tc.mode, err, tc.want+" "+path)
			continue
		}
		_, stderr, nerr := run(t, "node", "--datadir", dir, "--api", "127.0.0.1:0", "--listen", "/ip4/127.0.0.1/tcp/0")
		if lines := strings.Split(strings.TrimSpace(stderr), "\n"); nerr == nil || len(lines) != 1 || !strings.Contains(lines[0], tc.want+" "+path) {
			t.Errorf("cocoon node on %s mode %04o: %v, stderr:\n%s", path, tc.mode, nerr, stderr)
		}
	}
}

// TestServiceStopWithin5s: an idle worker (init --worker's config, a priced
// model, a devledger) exits 0 within 5 s of SIGTERM, as systemctl stop sends.
func TestServiceStopWithin5s(t *testing.T) {
	p := startWorker(t, startLedger(t))
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := p.cmd.Wait()
	took := time.Since(start)
	t.Logf("idle worker stopped %s after SIGTERM", took)
	if err != nil {
		t.Fatalf("worker exit after SIGTERM: %v\n%s", err, p.stderr)
	}
	if took > 5*time.Second {
		t.Fatalf("worker took %s to stop after SIGTERM; want at most 5 s\n%s", took, p.stderr)
	}
}
