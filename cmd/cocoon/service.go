package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/cocoon-network/cocoon/node"
)

// unitName is the systemd unit `cocoon service install` writes.
const unitName = "cocoon.service"

// unitOptions are the values of the unit; dist/cocoon.service is
// renderUnit of the defaults (a test holds the two together).
type unitOptions struct {
	Bin     string // absolute path of the cocoon binary
	Datadir string // absolute
	User    string
}

// defaultUnit is what dist/cocoon.service holds: a system user "cocoon"
// whose datadir is /var/lib/cocoon, the binary in /usr/local/bin.
var defaultUnit = unitOptions{Bin: "/usr/local/bin/cocoon", Datadir: "/var/lib/cocoon", User: "cocoon"}

// renderUnit writes the systemd unit. The node stops itself within 5 s of
// SIGTERM (it gives up waiting on its parts then, cmd/cocoon/node.go), so
// TimeoutStopSec=10s only catches a node that hangs. Hardening stays off
// what the node needs: /dev (GPUs, /dev/tdx_guest, /dev/sev-guest) and
// /sys/kernel/config/tsm (its TEE evidence), so no PrivateDevices or
// ProtectKernelTunables.
func renderUnit(o unitOptions) string {
	return `# cocoon node: a peer-to-peer AI inference worker or client.
# Written by 'cocoon service install'; see README.md, "Running a worker".
[Unit]
Description=cocoon node (peer-to-peer AI inference)
Documentation=https://github.com/cocoon-network/cocoon#running-a-worker
Wants=network-online.target
After=network-online.target
# Never give up restarting: a worker that lost its network for an hour should
# come back by itself (the delay below keeps a crash loop slow).
StartLimitIntervalSec=0

[Service]
Type=exec
User=` + o.User + `
ExecStart=` + o.Bin + ` node --datadir ` + o.Datadir + `
Restart=on-failure
# systemd 254 and later can grow the delay (RestartSteps=, RestartMaxDelaySec=);
# Debian 12's systemd 252 has a fixed one.
RestartSec=10s
# SIGTERM, then the node's own 5 s bound on its stop; SIGKILL only after this.
TimeoutStopSec=10s
# Logs: stdout and stderr go to the journal (journalctl -u cocoon).
StandardOutput=journal
StandardError=journal
# libp2p keeps many connections open.
LimitNOFILE=65536
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=read-only
ReadWritePaths=` + o.Datadir + `
PrivateTmp=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes
UMask=0077

[Install]
WantedBy=multi-user.target
`
}

func init() {
	cmd := &cobra.Command{Use: "service", Short: "Run the node as a systemd service: install or remove its unit"}
	var (
		datadir, userName, unitDir, binPath string
		now                                 bool
	)
	install := &cobra.Command{
		Use:   "install",
		Short: "Write the systemd unit that runs `cocoon node --datadir DIR`, and print the commands that start it",
		Long: `Write <unit-dir>/` + unitName + `: the node as --user, on --datadir, restarted on
failure, logging to the journal. It prints the systemctl commands to enable and
start it, and runs them itself only with --now.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			out := cmd.OutOrStdout()
			f := cmd.Flags()
			o := unitOptions{User: userName, Datadir: datadir, Bin: binPath}
			if o.User == "" {
				o.User = invokingUser()
			}
			if o.User == "" || o.User == "root" {
				return errors.New("--user: name the user the node runs as, not root (e.g. useradd --system --home /var/lib/cocoon cocoon)")
			}
			u, err := user.Lookup(o.User)
			if err != nil {
				return fmt.Errorf("--user: %w", err)
			}
			if !f.Changed("datadir") {
				o.Datadir = filepath.Join(u.HomeDir, ".cocoon")
				if d := os.Getenv("COCOON_HOME"); d != "" {
					o.Datadir = d
				}
			}
			if o.Datadir, err = filepath.Abs(o.Datadir); err != nil {
				return fmt.Errorf("--datadir: %w", err)
			}
			if err := unitPath("datadir", o.Datadir); err != nil {
				return err
			}
			if _, err := os.Stat(filepath.Join(o.Datadir, node.ConfigFile)); err != nil {
				return fmt.Errorf("--datadir: no %s in %s (run `cocoon init --worker --datadir %s` first)", node.ConfigFile, o.Datadir, o.Datadir)
			}
			if err := node.CheckDatadir(o.Datadir); err != nil {
				return fmt.Errorf("--datadir: %w", err)
			}
			if o.Bin == "" {
				if o.Bin, err = os.Executable(); err != nil {
					return fmt.Errorf("--bin: %w", err)
				}
			}
			if o.Bin, err = filepath.Abs(o.Bin); err == nil {
				o.Bin, err = filepath.EvalSymlinks(o.Bin)
			}
			if err != nil {
				return fmt.Errorf("--bin: %w", err)
			}
			if st, err := os.Stat(o.Bin); err != nil || st.IsDir() || st.Mode().Perm()&0o111 == 0 {
				return fmt.Errorf("--bin: %s is not an executable file", o.Bin)
			}
			if err := unitPath("bin", o.Bin); err != nil {
				return err
			}
			for flag, p := range map[string]string{"bin": o.Bin, "datadir": o.Datadir} {
				if strings.HasPrefix(p, "/tmp/") || strings.HasPrefix(p, "/var/tmp/") {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: --%s %s is under a tmp folder, which the unit's PrivateTmp hides from the node\n", flag, p)
				}
			}
			if st, err := os.Stat(o.Datadir); err == nil {
				if sys, ok := st.Sys().(*syscall.Stat_t); ok && strconv.Itoa(int(sys.Uid)) != u.Uid {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s is not owned by %s, who cannot write to it: chown -R %s: %s\n", o.Datadir, o.User, o.User, o.Datadir)
				}
			}
			path := filepath.Join(unitDir, unitName)
			if err := os.MkdirAll(unitDir, 0o755); err != nil {
				return fmt.Errorf("--unit-dir: %w", err)
			}
			if err := os.WriteFile(path, []byte(renderUnit(o)), 0o644); err != nil {
				return fmt.Errorf("--unit-dir: %w", err)
			}
			fmt.Fprintf(out, "wrote %s (user %s, datadir %s)\n", path, o.User, o.Datadir)
			steps := [][]string{{"systemctl", "daemon-reload"}, {"systemctl", "enable", "--now", unitName}}
			return systemctl(out, steps, now, "journalctl -u cocoon -f            # its logs")
		},
	}
	f := install.Flags()
	f.StringVar(&datadir, "datadir", defaultDatadir(), "node data directory (default: ~USER/.cocoon, or $COCOON_HOME)")
	f.StringVar(&userName, "user", "", "user the node runs as (default: the user who ran sudo, else you; never root)")
	f.StringVar(&unitDir, "unit-dir", "/etc/systemd/system", "where to write "+unitName)
	f.StringVar(&binPath, "bin", "", "the cocoon binary the unit runs (default: this one)")
	f.BoolVar(&now, "now", false, "also run systemctl daemon-reload and enable --now")

	var uninstallDir string
	var uninstallNow bool
	uninstall := &cobra.Command{
		Use:   "uninstall",
		Short: "Remove the systemd unit (with --now, stop and disable it first)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			out := cmd.OutOrStdout()
			path := filepath.Join(uninstallDir, unitName)
			if _, err := os.Stat(path); err != nil {
				return fmt.Errorf("--unit-dir: %w", err)
			}
			if uninstallNow {
				if err := systemctl(out, [][]string{{"systemctl", "disable", "--now", unitName}}, true, ""); err != nil {
					return err
				}
			}
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("--unit-dir: %w", err)
			}
			fmt.Fprintf(out, "removed %s\n", path)
			steps := [][]string{{"systemctl", "daemon-reload"}}
			if !uninstallNow {
				steps = [][]string{{"systemctl", "disable", "--now", unitName}, {"systemctl", "daemon-reload"}}
				fmt.Fprintln(out, "if it was running, stop it (before the daemon-reload):")
			}
			return systemctl(out, steps, uninstallNow, "")
		},
	}
	uninstall.Flags().StringVar(&uninstallDir, "unit-dir", "/etc/systemd/system", "where "+unitName+" is")
	uninstall.Flags().BoolVar(&uninstallNow, "now", false, "run systemctl disable --now and daemon-reload")
	cmd.AddCommand(install, uninstall)
	rootCmd.AddCommand(cmd)
}

// systemctl prints steps, or runs them when run is set; note is printed last.
func systemctl(out io.Writer, steps [][]string, run bool, note string) error {
	if !run {
		fmt.Fprintln(out, "then, as root:")
		for _, s := range steps {
			fmt.Fprintf(out, "  %s\n", strings.Join(s, " "))
		}
		if note != "" {
			fmt.Fprintf(out, "  %s\n", note)
		}
		return nil
	}
	for _, s := range steps {
		fmt.Fprintf(out, "running: %s\n", strings.Join(s, " "))
		c := exec.Command(s[0], s[1:]...)
		c.Stdout, c.Stderr = out, out
		if err := c.Run(); err != nil {
			return fmt.Errorf("--now: %s: %w", strings.Join(s, " "), err)
		}
	}
	return nil
}

// unitPath refuses a path the unit file could not hold as written: systemd
// splits on whitespace and expands % and \ escapes.
func unitPath(flag, p string) error {
	if !filepath.IsAbs(p) || strings.ContainsAny(p, " \t\n\"'\\%;") {
		return fmt.Errorf("--%s: %q must be an absolute path without spaces, quotes, %%, ; or \\ (the unit file cannot hold it as written)", flag, p)
	}
	return nil
}

// invokingUser is who ran `sudo cocoon service install`, else who runs it.
func invokingUser() string {
	if u := os.Getenv("SUDO_USER"); u != "" {
		return u
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return ""
}
