package main

import (
	"fmt"
	"log/slog"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/llamalib"
)

func init() {
	cmd := &cobra.Command{Use: "runtime", Short: "Install and list the embedded engine's llama.cpp libraries"}
	var (
		datadir, registry string
		shared, force     bool
	)
	install := &cobra.Command{
		Use:   "install [cpu|cuda|vulkan]",
		Short: "Fetch llama.cpp's prebuilt libraries from npm (integrity-checked) into the datadir or the shared cache",
		Long: `Fetch the pinned llama.cpp build (npm @node-llama-cpp/linux-x64[-cuda|-vulkan]@` + llamalib.Version + `)
from the registry's tarball URL, check its sha512 against the pinned one and unpack its
libraries into <datadir>/runtime/llama/<kind>-` + llamalib.Version + ` (--shared: the shared cache,
$XDG_CACHE_HOME/cocoon/llama or ~/.cache/cocoon/llama), where ` + "`cocoon node`" + ` finds them.
Without a kind: cuda when an NVIDIA driver is present, else vulkan when a Vulkan loader
is, else cpu. A GPU kind brings the cpu build too, the node's fallback.`,
		Args:      cobra.MaximumNArgs(1),
		ValidArgs: []string{"cpu", "cuda", "vulkan"},
		RunE: func(cmd *cobra.Command, args []string) error {
			var kind llamalib.Kind
			if len(args) == 1 {
				k, err := llamalib.ParseKind(args[0])
				if err != nil {
					return err
				}
				kind = k
			} else {
				host := llamalib.DetectHost()
				kind = bestKind(host)
				fmt.Fprintf(cmd.OutOrStdout(), "this machine: %s: installing %s\n", host.Why, kind)
			}
			root := llamalib.DataDirRoot(datadir)
			if shared {
				if root = llamalib.CacheRoot(); root == "" {
					return fmt.Errorf("--shared: no cache folder ($XDG_CACHE_HOME and $HOME unset)")
				}
			}
			opt := llamalib.InstallOptions{Registry: registry, Force: force,
				Logger: slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))}
			kinds := []llamalib.Kind{kind}
			if kind.GPU() {
				kinds = append(kinds, llamalib.CPU)
			}
			for _, k := range kinds {
				dir, err := llamalib.Install(cmd.Context(), root, k, opt)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "llama.cpp %s build: %s\n", k, dir)
			}
			return nil
		},
	}
	f := install.Flags()
	f.StringVar(&datadir, "datadir", defaultDatadir(), "node data directory ($COCOON_HOME, else ~/.cocoon)")
	f.BoolVar(&shared, "shared", false, "install into the shared cache ($XDG_CACHE_HOME/cocoon, else ~/.cache/cocoon) instead of the datadir")
	f.StringVar(&registry, "registry", llamalib.DefaultRegistry, "npm registry base URL")
	f.BoolVar(&force, "force", false, "fetch and unpack again even if installed")

	var listDatadir string
	list := &cobra.Command{
		Use:   "list",
		Short: "List the installed llama.cpp builds, the one a node would load, and the GPUs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			out := cmd.OutOrStdout()
			host := llamalib.DetectHost()
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "KIND\tFROM\tDIR")
			for _, l := range llamalib.Installed(listDatadir, llamalib.CacheRoot()) {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", l.Kind, l.From, l.Dir)
			}
			tw.Flush()
			if libs, err := llamalib.Choose(llamalib.Options{DataDir: listDatadir, Host: &host}); err != nil {
				fmt.Fprintln(out, "a node would load: none:", err)
			} else {
				fmt.Fprintf(out, "a node would load: %s from %s (%s)\n", libs[0].Kind, libs[0].Dir, libs[0].From)
			}
			fmt.Fprintln(out, "drivers:", host.Why)
			gpus, why := runtime.DetectGPUs()
			for _, g := range gpus {
				fmt.Fprintf(out, "GPU: %s, %.1f GiB, driver %s\n", g.Name, float64(g.VRAMBytes)/(1<<30), g.Driver)
			}
			if why != "" {
				fmt.Fprintln(out, "GPUs:", why)
			}
			return nil
		},
	}
	list.Flags().StringVar(&listDatadir, "datadir", defaultDatadir(), "node data directory ($COCOON_HOME, else ~/.cocoon)")
	cmd.AddCommand(install, list)
	rootCmd.AddCommand(cmd)
}

// bestKind is what a node on host would run best: CUDA with an NVIDIA
// driver, else Vulkan with a Vulkan loader, else the CPU.
func bestKind(host llamalib.Host) llamalib.Kind {
	switch {
	case host.NVIDIA:
		return llamalib.CUDA
	case host.Vulkan:
		return llamalib.Vulkan
	}
	return llamalib.CPU
}
