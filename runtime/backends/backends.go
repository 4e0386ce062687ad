// Package backends builds the configured runtime backend from a
// runtime.Config (the node's [runtime] section). It lives apart from package
// runtime because it imports every implementation, and they import runtime.
package backends

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/cocoon-network/cocoon/runtime"
	"github.com/cocoon-network/cocoon/runtime/llamalib"
	// Linked for its detector: runtime.DetectGPUs answers through NVML.
	_ "github.com/cocoon-network/cocoon/runtime/nvml"
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
		libs, err := chooseLibs(cfg, log)
		if err != nil {
			return nil, err
		}
		lb, err := runner.New(ctx, runner.Config{
			Libs:        libs,
			GPULayers:   cfg.Offload(),
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
			if oc.Capabilities == nil {
				oc.Capabilities = map[string]runtime.Model{}
			}
			oc.Capabilities[m.ID] = m.Declared()
			if m.ContextLength > 0 {
				if oc.ContextLengths == nil {
					oc.ContextLengths = map[string]int{}
				}
				oc.ContextLengths[m.ID] = m.ContextLength
			}
		}
		ob, err := openai.New(ctx, oc)
		var ce *openai.ContextLengthError
		var pe *openai.CapabilityError
		switch {
		case errors.As(err, &ce):
			return nil, contextLengthMissing(cfg, ce)
		case errors.As(err, &pe):
			for i, m := range cfg.Models {
				if m.ID == pe.Model {
					return nil, fmt.Errorf("runtime.models[%d].%s: %v", i, pe.Key, pe)
				}
			}
			return nil, fmt.Errorf("runtime.models: %v", pe)
		case err != nil:
			return nil, fmt.Errorf("runtime.upstream_url: %w", err)
		}
		b = ob
	}
	return runtime.Limit(b, slots, cfg.Queue), nil
}

// chooseLibs finds the llama.cpp builds to try (llamalib.Choose): lib_dir,
// $COCOON_LLAMA_LIB, else the installed kinds the host can run.
func chooseLibs(cfg runtime.Config, log *slog.Logger) ([]llamalib.Lib, error) {
	h := llamalib.DetectHost()
	opt := llamalib.Options{LibDir: cfg.LibDir, DataDir: cfg.DataDir, Host: &h}
	if cfg.Llama != "" && cfg.Llama != "auto" {
		opt.Want = llamalib.Kind(cfg.Llama) // Validate checked the name
	}
	libs, err := llamalib.Choose(opt)
	if err != nil {
		return nil, fmt.Errorf("runtime.lib_dir: %w", err)
	}
	log.Info("llama.cpp build chosen", "subsys", "runtime", "kind", libs[0].Kind, "dir", libs[0].Dir,
		"from", libs[0].From, "fallbacks", len(libs)-1, "host", h.Why)
	return libs, nil
}

// contextLengthMissing names the config field that would give the context
// length the upstream does not.
func contextLengthMissing(cfg runtime.Config, ce *openai.ContextLengthError) error {
	for i, m := range cfg.Models {
		if m.ID == ce.Model {
			return fmt.Errorf("runtime.models[%d].context_length: missing, and %v; set it to the tokens the server accepts per request", i, ce)
		}
	}
	return fmt.Errorf("runtime.models: %v; add a [[runtime.models]] table with id = %q and context_length = the tokens the server accepts per request (once any is listed, only those listed are served)", ce, ce.Model)
}
