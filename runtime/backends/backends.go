// Package backends builds the configured runtime backend from a
// runtime.Config (the node's [runtime] section). It lives apart from package
// runtime because it imports every implementation, and they import runtime.
package backends

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/openai"
	"github.com/cocoon-network/cocoon/runtime/runner"
)

// FromConfig validates cfg, builds its backend and wraps it in runtime.Limit
// with cfg.Slots slots and a queue of cfg.Queue. The llamacpp backend runs
// each model in a supervised child process (runtime/runner) with one llama.cpp
// context per slot. ctx bounds the start-up (the openai backend
// lists its upstream's models). Errors name the config field at fault.
func FromConfig(ctx context.Context, cfg runtime.Config, log *slog.Logger) (*runtime.Limited, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	slots := max(cfg.Slots, 1)
	var b runtime.Backend
	switch cfg.Backend {
	case "", runtime.KindLlamaCPP:
		// Each model's llama.cpp runs in a child process (runtime/runner):
		// it parses strangers' prompts, and a native crash there must not
		// take the node down.
		lb, err := runner.New(ctx, runner.Config{
			LibDir:      cfg.LibDir,
			Models:      cfg.Models,
			Threads:     cfg.Threads,
			ContextSize: cfg.ContextSize,
			Parallel:    slots,
			Logger:      log,
		})
		if err != nil {
			return nil, fmt.Errorf("runtime: %w", err)
		}
		b = lb
	case runtime.KindOpenAI:
		oc := openai.Config{BaseURL: cfg.UpstreamURL, Logger: log}
		if cfg.APIKeyEnv != "" {
			oc.APIKey = os.Getenv(cfg.APIKeyEnv)
		}
		for _, m := range cfg.Models {
			oc.Models = append(oc.Models, m.ID)
		}
		ob, err := openai.New(ctx, oc)
		if err != nil {
			return nil, fmt.Errorf("runtime.upstream_url: %w", err)
		}
		b = ob
	}
	return runtime.Limit(b, slots, cfg.Queue), nil
}
