package node

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/cocoon-network/cocoon/enclave/tee"
	"github.com/cocoon-network/cocoon/runtime"
)

// Prices `cocoon init --worker` suggests when it sees no ads to take the
// median of: the template's example, nanoTON per 1M tokens (0.1 TON prompt,
// 0.4 TON completion).
const (
	DefaultPricePrompt     = 100_000_000
	DefaultPriceCompletion = 400_000_000
)

// WorkerOptions are the choices of `cocoon init --worker`: what a worker
// serves, what it charges, the evidence it makes and where it is paid.
type WorkerOptions struct {
	Models          []string // GGUF files, each served under its file name without .gguf
	PricePrompt     int64    // nanoTON per 1M prompt tokens, every model
	PriceCompletion int64    // nanoTON per 1M completion tokens, every model
	Attester        tee.Kind // none, tdx, sev-snp, or sim (which also turns on policy.allow_sim)
	Chain           string   // ChainDevLedger or ChainTON
	DevLedgerURL    string   // chain devledger
	TONNetwork      string   // chain ton: mainnet or testnet
}

// RenderWorkerConfig is `cocoon init`'s commented template with o's values
// set: [[runtime.models]] and [[market.prices]] tables, [enclave] attester
// (and allow_sim for sim), [settle] chain. The result is parsed and validated
// as `cocoon node` would before it is returned, so a config it returns is one
// the node starts with (model files included: they must exist).
func RenderWorkerConfig(o WorkerOptions) ([]byte, error) {
	if len(o.Models) == 0 {
		return nil, errors.New("worker config: no model to serve")
	}
	s := configTemplate
	var err error
	set := func(old, new string) {
		if err != nil {
			return
		}
		if strings.Count(s, old) != 1 {
			err = fmt.Errorf("worker config: the template no longer holds %q once", strings.TrimSpace(old))
			return
		}
		s = strings.Replace(s, old, new, 1)
	}
	var models, prices strings.Builder
	for _, path := range o.Models {
		id := runtime.ModelIDFromPath(path)
		fmt.Fprintf(&models, "\n[[runtime.models]]\npath = %s\nid = %s\n", tomlString(path), tomlString(id))
		fmt.Fprintf(&prices, "\n[[market.prices]]\nmodel = %s\nprompt = %d\ncompletion = %d\n", tomlString(id), o.PricePrompt, o.PriceCompletion)
	}
	// Array tables end their section: each set goes just before the next section.
	set("\n[market]\n", models.String()+"\n[market]\n")
	set("\nprices = []\n", "\n# (the [[market.prices]] tables close this section)\n")
	set("\n[enclave]\n", prices.String()+"\n[enclave]\n")
	set("\nattester = \"none\"\n", fmt.Sprintf("\nattester = %s\n", tomlString(string(o.Attester))))
	if o.Attester == tee.Sim {
		set("\nallow_sim = false\n", "\nallow_sim = true\n")
	}
	set("\nchain = \"none\"\n", fmt.Sprintf("\nchain = %s\n", tomlString(o.Chain)))
	if o.DevLedgerURL != "" {
		set("\ndevledger_url = \"\"\n", fmt.Sprintf("\ndevledger_url = %s\n", tomlString(o.DevLedgerURL)))
	}
	if o.TONNetwork != "" {
		set("\nton_network = \"\"\n", fmt.Sprintf("\nton_network = %s\n", tomlString(o.TONNetwork)))
	}
	if err != nil {
		return nil, err
	}
	s = strings.Replace(s, "# cocoon node configuration.", "# cocoon node configuration, written by 'cocoon init --worker'.", 1)
	cfg := Defaults()
	if err := Parse([]byte(s), &cfg); err != nil {
		return nil, fmt.Errorf("worker config: %w", err)
	}
	return []byte(s), nil
}

// WriteWorkerConfig renders o into <datadir>/config.toml. An existing
// config.toml other than the untouched template is kept beside it as
// config.toml.bak, whose path it returns.
func WriteWorkerConfig(datadir string, o WorkerOptions) (backup string, err error) {
	b, err := RenderWorkerConfig(o)
	if err != nil {
		return "", err
	}
	path := filepath.Join(datadir, ConfigFile)
	old, err := os.ReadFile(path)
	switch {
	case err == nil && !bytes.Equal(old, b) && string(old) != configTemplate:
		backup = path + ".bak"
		if err := writeFileAtomic(backup, old, 0o600); err != nil {
			return "", err
		}
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return backup, writeFileAtomic(path, b, 0o644)
}

// tomlString quotes s as a TOML basic string: JSON's escapes are TOML's.
func tomlString(s string) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.Encode(s) // a string always encodes
	return strings.TrimSuffix(b.String(), "\n")
}
