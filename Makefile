# cocoon — build, run and test. `make run` and `make test` work on a fresh machine
# with Go 1.26, make and npm: everything else is installed by the targets below.

GO        ?= go
BIN       := bin/cocoon
CACHE     := $(CURDIR)/.cache
# The embedded llama.cpp runtime's shared libraries (installed from npm by scripts/llama-libs.sh).
export COCOON_LLAMA_LIB ?= $(CACHE)/llama/lib
# The npm tarball of those libraries (kept by scripts/llama-libs.sh), which the
# tests of `cocoon runtime install` serve from a loopback registry.
export COCOON_LLAMA_TGZ ?= $(CACHE)/llama/node-llama-cpp-linux-x64-3.22.1.tgz
# The small real model used by tests and the demo (see ../shared/models/MODELS.md).
# The official OpenAI JavaScript SDK, for the test that drives a gateway with it.
export COCOON_OPENAI_SDK ?= $(CACHE)/openai-sdk/node_modules/openai
# The Vercel AI SDK (ai, @ai-sdk/openai-compatible, zod), for the same test.
export COCOON_AI_SDK ?= $(CACHE)/ai-sdk/node_modules
export COCOON_TEST_MODEL ?= $(abspath $(CURDIR)/../shared/models/stories260K.gguf)
# Debian's prometheus, unpacked (not installed) by scripts/deb-unpack.sh, for the test
# in which a real Prometheus scrapes a node's /metrics.
export COCOON_PROMETHEUS ?= $(CACHE)/prometheus/usr/bin/prometheus
# Debian's headless Chromium, for the status page's browser test (installed by
# scripts/chromium.sh; looked up when each recipe runs, so after deps installed it).
export COCOON_CHROMIUM ?= $(shell sh scripts/chromium.sh --no-install)

.PHONY: build run test bench fuzz lint deps chaos sim

build:
	$(GO) build -o $(BIN) ./cmd/cocoon

deps:
	@sh scripts/llama-libs.sh $(CACHE)/llama
	@sh scripts/openai-sdk.sh $(CACHE)/openai-sdk
	@sh scripts/ai-sdk.sh $(CACHE)/ai-sdk
	@sh scripts/deb-unpack.sh nginx $(CACHE)/nginx usr/sbin/nginx
	@sh scripts/deb-unpack.sh prometheus $(CACHE)/prometheus usr/bin/prometheus
	@sh scripts/chromium.sh >/dev/null

run: build deps
	@bash scripts/run.sh ./$(BIN)

# The whole suite: vet, every test under the race detector (every package starts
# goroutines; the market's tests also fail on leaked ones), each fuzz target
# briefly, each benchmark once (so none rots; figures come from `make bench`).
test: deps
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m ./...
	FUZZTIME=$(TEST_FUZZTIME) GO=$(GO) bash scripts/fuzz.sh
	$(GO) test -count=1 -run '^$$' -bench . -benchtime=1x -timeout 15m ./...

TEST_FUZZTIME ?= 2000x
FUZZTIME ?= 30s

bench: deps
	$(GO) test -count=1 -run '^$$' -bench . -benchmem -timeout 30m ./...

# The long robustness run (testnet/chaos): 1,000 requests across 4 workers, 2 of
# them killed and restarted, a client and the ledger killed, two workers paused;
# then every request's end, the logs and the books are checked. The seed is
# printed; CHAOS_SEED=n replays a run, CHAOS_DIR=d keeps its logs, stores and
# history. (`make test` runs the short one, TestChaosShort.)
chaos: deps build
	CHAOS_LONG=1 $(GO) test -count=1 -run '^TestChaosLong$$' -v -timeout 30m ./testnet/chaos/

# The simulated internet at 1,000 nodes (testnet/sim's TestSim on go-libp2p's
# simulated links, under a virtual clock): ads reach every node joined to their
# model and no other, provider lookups find every worker, a flooder is cut off.
# Too long for `make test`, which runs it at 30 nodes; SIM_NODES=n runs any size.
SIM_NODES ?= 1000
sim:
	SIM_NODES=$(SIM_NODES) $(GO) test -count=1 -run '^TestSim$$' -v -timeout 120m ./testnet/sim/

fuzz: deps
	FUZZTIME=$(FUZZTIME) GO=$(GO) bash scripts/fuzz.sh

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet ./...
